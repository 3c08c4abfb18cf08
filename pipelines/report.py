"""`report` stage: the paper's figures and the tables behind them, from the pipeline's own results.

    python -m pipelines.report                                  # the DVC stage (params.yaml `report:`)
    python -m pipelines.report --require eval,sweep             # fail unless these results exist
    python -m pipelines.report --benchmark metrics/benchmark-cpu.json   # this file must exist

Reads every result file under metrics/ (asap/report/inputs.py lists them), the generator checkpoints
under models/ and a few test pairs of the prepared dataset, and writes into reports/:

    fig1_runtime_vs_resolution.png  fig1b_fast_path.png   fig4_stream_split.png
    fig6_quality_vs_runtime.png     fig8_slim_baselines.png
    fig9_ablation_samples.png       fig9_s_tradeoff.png   fig11_per_class_iou.png
    qualitative.png                 README.md (every figure's table; what is missing and which stage makes it)
    plots/*.csv                     the series of dvc.yaml `plots:` (`dvc plots diff` compares runs)

A figure whose inputs are absent is left out and README.md says which stage produces them. The stage
fails only when no result exists at all, or when an input named by --benchmark / --require /
`report.require` is absent; the error names the stage to run. The paper's own numbers come from
asap/report/paper.py (the one place they are written down) and are labelled as the paper's.
The plotting code lives in asap/report/ (pure pandas/matplotlib/torch, usable from a notebook on any
metrics folder); this module wires files to figures and writes the README.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from asap.config import ConfigError, from_dict, require
from asap.report import paper
from asap.report.inputs import SOURCES, Inputs, Missing, ReportInputError, read_inputs

FIGURES = {  # key -> (file under reports/, what it shows)
    "fig1": ("fig1_runtime_vs_resolution.png", "Fig. 1: runtime vs resolution, ASAP-Net and the baselines"),
    "fig1b": ("fig1b_fast_path.png", "ASAP-Net reference generator vs the fast path"),
    "fig4": ("fig4_stream_split.png", "Fig. 4: low-res stream vs full-res pixelwise time"),
    "fig6": ("fig6_quality_vs_runtime.png", "Fig. 6: FID / pixel accuracy / mIoU vs runtime"),
    "fig8": ("fig8_slim_baselines.png", "Fig. 8: ASAP-Net vs slimmer pix2pixHD / SPADE"),
    "fig9": ("fig9_ablation_samples.png", "Fig. 9: ablation samples"),
    "fig9b": ("fig9_s_tradeoff.png", "Fig. 9: runtime and FID of S and the ablations"),
    "fig11": ("fig11_per_class_iou.png", "Fig. 11: per-class IoU vs class pixel share"),
    "qualitative": ("qualitative.png", "Qualitative: label | ASAP-Net | baselines | real photo"),
}
PLOTS = "plots"  # reports/plots/*.csv: the series of dvc.yaml `plots:`
HEADERS = {"runtime_ms": "runtime ms", "lr_ms": "low-res ms", "hr_ms": "pixelwise ms", "fid": "FID",
           "kid_mean": "KID", "pixel_acc": "pixel acc", "miou": "mIoU"}


@dataclass(frozen=True)
class ReportConfig:
    """The `report` section of params.yaml."""
    samples: int = 3                    # test pairs per sample grid (qualitative, Fig. 9)
    sample_stems: list | None = None    # those test pairs by name; null = the first `samples` in sorted order
    baselines: list = field(default_factory=list)  # more generator checkpoints for the qualitative grid
                                        # (pix2pixHD/SPADE); models/<name>/generator.pt are found anyway
    require: list = field(default_factory=list)     # inputs that must exist: benchmark, inference, train, eval, sweep
    plot_models: list = field(default_factory=lambda: ["asapnet", "pix2pixhd", "pix2pixhd-slim", "spade",
                                                       "spade-slim"])  # columns of plots/runtime_vs_resolution.csv
    dpi: int = 120
    device: str = "cpu"                 # where the sample grids' generators run

    def __post_init__(self):
        require(isinstance(self.samples, int) and 1 <= self.samples <= 16,
                f"report.samples must be an integer in 1..16, got {self.samples!r}")
        unknown = sorted(set(self.require) - set(SOURCES))
        require(not unknown, f"report.require {unknown} unknown; allowed: {sorted(SOURCES)}")
        require(isinstance(self.dpi, int) and 50 <= self.dpi <= 600, f"report.dpi must be in 50..600, got {self.dpi!r}")
        require(self.device in ("cpu", "cuda"), f"report.device must be cpu or cuda, got {self.device!r}")


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------

def fmt(value, digits: int = 2) -> str:
    """A number with fixed decimals; missing (None/NaN) -> "n/a"."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Collects README sections and the figures written, and what could not be drawn."""

    def __init__(self, root: Path, out: Path, cfg: ReportConfig, inputs: Inputs):
        self.root, self.out, self.cfg, self.inputs = root, out, cfg, inputs
        self.sections: list[str] = []
        self.written: list[str] = []
        self.missing: list[Missing] = list(inputs.missing)

    def save(self, key: str, fig) -> None:
        name = FIGURES[key][0]
        fig.savefig(self.out / name, dpi=self.cfg.dpi)
        self.written.append(name)

    def section(self, title: str, *parts: str, figure: str | None = None) -> None:
        body = [f"## {title}"]
        if figure and figure in self.written:
            body.append(f"![{title}]({figure})")
        body += [p for p in parts if p]
        self.sections.append("\n\n".join(body))

    def lack(self, what: str, file: str, how: str) -> None:
        self.missing.append(Missing(what, file, how))


def rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------

def runtime_sections(rep: Report) -> None:
    from asap.report import figures

    bench, inference = rep.inputs.benchmark, rep.inputs.inference
    if bench.empty:
        rep.lack("Fig. 1, Fig. 4, Fig. 8", *SOURCES["benchmark"])
    elif not (bench["device_kind"] == "cuda").any():  # the paper's runtimes are GPU times
        rep.lack("GPU runtimes in Fig. 1, 4 and 8 (the paper's times are GPU times)", "metrics/benchmark-<gpu>.json",
                 "on a GPU machine run `python -m pipelines.benchmark --device cuda --no-mlflow` and commit "
                 "the JSON it writes")
    if not bench.empty:
        rep.save("fig1", figures.runtime_vs_resolution(bench))
        table = md_table(
            ["device", "model", "size", "median ms", "p10 ms", "p90 ms", "low-res ms", "pixelwise ms", "params (M)"],
            [[r.device, r.model, r.size, fmt(r.median_ms), fmt(r.p10_ms), fmt(r.p90_ms), fmt(r.lr_ms),
              fmt(r.hr_ms), fmt(r.params / 1e6)] for r in bench.itertuples()])
        paper_table = md_table(["device", "model", "size", "ms", "where the paper says so"],
                               [[paper.PAPER_DEVICE, "ASAP-Net", s, fmt(ms, 1), "Sec. 1 and Fig. 2 caption"]
                                for s, ms in paper.PAPER_ASAPNET_MS.items()])
        rep.section(FIGURES["fig1"][1],
                    "Batch 1, median over the timed iterations (10th / 90th percentiles beside it), from "
                    f"{', '.join(sorted(set(bench['file'])))}. Low-res / pixelwise: ASAP-Net's two streams "
                    "timed separately (Fig. 4).", "Ours:", table, "The paper's stated numbers:", paper_table,
                    speedups(bench), figure=FIGURES["fig1"][0])
    if inference.empty:
        rep.lack("the fast-path comparison (Fig. 1b)", *SOURCES["inference"])
    else:
        rep.save("fig1b", figures.fast_path(inference))
        rows = [[r.device, r.size, r.path, r.precision, fmt(r.median_ms), fmt(r.p10_ms), fmt(r.p90_ms), fmt(r.mlp_ms),
                 fmt(r.max_abs_diff, 4)] for r in inference.itertuples()]
        rep.section(FIGURES["fig1b"][1], f"From {', '.join(sorted(set(inference['file'])))} "
                    "(benchmarks/inference.py): batch-1 latency of the fp32 reference generator and the fast "
                    "path; on a CPU the fast path falls back to the reference MLP.",
                    md_table(["device", "size", "path", "precision", "median ms", "p10 ms", "p90 ms", "MLP ms",
                              "max abs diff"], rows), figure=FIGURES["fig1b"][0])
    if bench.empty:
        return
    split = bench[(bench["arch"] == "asapnet") & bench["lr_ms"].notna()]
    if split.empty:
        rep.lack("Fig. 4", "lr_ms/hr_ms of an ASAP-Net row in metrics/benchmark-<device>.json",
                 "benchmark an `arch: asapnet` model without `fast: true`")
    else:
        rep.save("fig4", figures.stream_split(bench))
        rows = [[r.device, r.size, fmt(r.lr_ms), fmt(r.hr_ms), fmt(r.median_ms),
                 fmt(100 * r.lr_ms / (r.lr_ms + r.hr_ms), 1)] for r in split.itertuples()]
        rep.section(FIGURES["fig4"][1], "The paper: the conv net's time stays roughly constant with "
                    "resolution, the pixelwise part grows with the pixel count (Sec. 4.1).",
                    md_table(["device", "size", "low-res ms", "pixelwise ms", "end to end ms", "low-res %"], rows),
                    figure=FIGURES["fig4"][0])


def speedups(bench: pd.DataFrame) -> str:
    """ASAP-Net's speed-up over each full-width baseline per device and size, beside the paper's."""
    full = bench[(bench["width_mult"] == 1.0)]
    rows = []
    for (device, size), g in full.groupby(["device", "size"], sort=False):
        ref = g[(g["arch"] == "asapnet") & ~g["fast"].astype(bool)]
        if ref.empty:
            continue
        fast = g[(g["arch"] == "asapnet") & g["fast"].astype(bool)]
        for arch in ("pix2pixhd", "spade"):
            base = g[g["arch"] == arch]
            if base.empty:
                continue
            ms = float(base["median_ms"].iloc[0])
            rows.append([device, size, arch, fmt(ms), fmt(ms / float(ref["median_ms"].iloc[0])),
                         fmt(ms / float(fast["median_ms"].iloc[0])) if not fast.empty else "n/a",
                         fmt(paper.PAPER_MAX_SPEEDUP[arch], 1)])
    if not rows:
        return ""
    return ("Speed-up of ASAP-Net over each baseline (baseline ms / ASAP-Net ms); the paper states maxima "
            f"over its resolutions on an {paper.PAPER_DEVICE} (Sec. 4.1; also "
            f"{paper.PAPER_MAX_SPEEDUP['cc-fpse']:g}x over CC-FPSE, not implemented here):\n\n"
            + md_table(["device", "size", "baseline", "baseline ms", "speed-up (reference)",
                        "speed-up (fast path)", "paper: up to"], rows))


def quality_points(inputs: Inputs) -> pd.DataFrame:
    """One row per scored generator: the evaluate stage's, then the sweep's trials."""
    rows = [{"label": r.model, "group": "evaluate stage", "runtime_ms": r.runtime_ms,
             "runtime_device": r.runtime_device, "generate_ms_per_image": r.generate_ms_per_image, "fid": r.fid,
             "kid_mean": r.kid_mean, "pixel_acc": r.pixel_acc, "miou": r.miou, "real_pixel_acc": r.real_pixel_acc,
             "real_miou": r.real_miou} for r in inputs.evals.itertuples()]
    sweep = inputs.sweep
    for r in sweep.to_dict("records"):
        rows.append({"label": r.get("trial"), "group": f"sweep: {r.get('variant')}",
                     "runtime_ms": r.get("runtime_ms"), "runtime_device": r.get("runtime_device", ""),
                     "generate_ms_per_image": math.nan, "real_pixel_acc": math.nan, "real_miou": math.nan,
                     **{k: r.get(k, math.nan) for k in ("fid", "kid_mean", "pixel_acc", "miou")}})
    cols = ["label", "group", "runtime_ms", "runtime_device", "generate_ms_per_image", "fid", "kid_mean",
            "pixel_acc", "miou", "real_pixel_acc", "real_miou"]
    table = pd.DataFrame(rows, columns=cols)
    for c in cols[4:] + ["runtime_ms"]:
        table[c] = pd.to_numeric(table[c], errors="coerce")
    table["runtime_device"] = table["runtime_device"].fillna("").astype(str)
    return table


def quality_sections(rep: Report) -> pd.DataFrame:
    from asap.report import figures

    points = quality_points(rep.inputs)
    if points.empty:
        rep.lack("Fig. 6", *SOURCES["eval"])
        return points
    timed = points[points["runtime_ms"].notna()]
    for r in points[points["runtime_ms"].isna()].itertuples():
        rep.lack(f"Fig. 6 point of {r.label} ({r.group})", "metrics/eval.json with a batch-1 runtime_ms",
                 "the evaluate stage records only batched generation time (generate_ms_per_image, in the "
                 "Fig. 6 table), which is not the paper's batch-1 latency")
    if not timed.empty:
        rep.save("fig6", figures.quality_vs_runtime(points))
    rows = [[r.label, r.group, fmt(r.runtime_ms), r.runtime_device or "n/a", fmt(r.generate_ms_per_image),
             fmt(r.fid), fmt(r.kid_mean, 4), fmt(r.pixel_acc, 3), fmt(r.miou, 3)] for r in points.itertuples()]
    ceiling = points.dropna(subset=["real_pixel_acc"])
    extra = ""
    if not ceiling.empty:
        c = ceiling.iloc[0]
        extra = (f"Real test photos through the same segmenter (the ceiling): pixel accuracy "
                 f"{fmt(c.real_pixel_acc, 3)}, mIoU {fmt(c.real_miou, 3)}.")
    rep.section(FIGURES["fig6"][1], "One point per scored generator (log runtime, as the paper's Fig. 6).",
                md_table(["model", "source", "runtime ms", "runtime device", "batched generation ms/image",
                          "FID", "KID", "pixel acc", "mIoU"], rows), extra, figure=FIGURES["fig6"][0])
    return points


def slim_section(rep: Report) -> None:
    from asap.report import figures

    bench = rep.inputs.benchmark
    if bench.empty:
        return
    rep.save("fig8", figures.slim_baselines(bench, rep.inputs.evals))
    d = bench[~bench["fast"].astype(bool)]
    rows = [[r.device, r.model, r.arch, fmt(r.width_mult), fmt(r.params / 1e6, 3), r.size, fmt(r.median_ms)]
            for r in d.itertuples()]
    scored = rep.inputs.evals[rep.inputs.evals["arch"].isin(["pix2pixhd", "spade"])]
    if scored.empty:
        rep.lack("Fig. 8 (b) FID of the slim baselines", "metrics/eval-<baseline>.json",
                 "no stage trains and evaluates pix2pixHD / SPADE yet (runtime is drawn without FID)")
    rep.section(FIGURES["fig8"][1], "Runtime of the benchmark's generators (random weights: runtime does not "
                "depend on them); the FID of every evaluated generator is in the Fig. 6 table.",
                md_table(["device", "model", "arch", "width", "params (M)", "size", "median ms"], rows),
                figure=FIGURES["fig8"][0])


def default_s(inputs: Inputs, height: int, width: int) -> int:
    """The sweep's default S: the S of its ablation trials (they run at the default), else Sec. 3.2."""
    from asap.models.asapnet import default_downsampling

    ablations = inputs.sweep[inputs.sweep["variant"] != "full"]
    if not ablations.empty:
        return int(ablations["S"].iloc[0])
    return default_downsampling(height, width)


def ablation_sections(rep: Report, params: dict) -> None:
    from asap.report import figures

    sweep = rep.inputs.sweep
    if sweep.empty:
        rep.lack("Fig. 9", *SOURCES["sweep"])
        return
    dataset = rep.inputs.sweep_meta.get("dataset") or params.get("dataset", "")
    data_root = rep.root / "data" / "prepared" / dataset
    size = dataset.rpartition("-")[2]
    try:
        height, width = (int(v) for v in size.split("x"))
    except ValueError:
        height = width = 256
    s_default = default_s(rep.inputs, height, width)
    device = ", ".join(sorted(set(sweep.get("runtime_device", pd.Series(["cpu"])).astype(str)))) + \
        (f" ({dataset})" if dataset else "")
    rep.save("fig9b", figures.s_tradeoff(sweep, s_default, device))

    # the grid: (a) input, (b) no PE, (c) uniform, (d) larger S, (e) smaller S, (f) full, as Fig. 9
    order = [r for v in ("no_pe", "uniform") for r in sweep[sweep["variant"] == v].to_dict("records")]
    full = sweep[sweep["variant"] == "full"]
    order += full[full["S"] > s_default].sort_values("S", ascending=False).to_dict("records")
    order += full[full["S"] < s_default].sort_values("S", ascending=False).to_dict("records")
    order += full[full["S"] == s_default].to_dict("records")
    order += [r for r in sweep.to_dict("records") if r not in order]
    pairs = _pairs(rep, data_root, dataset, "Fig. 9 sample grid")
    if pairs is not None:
        columns = [("input", pairs.inputs_rgb)]
        for r in order:
            title = (f"{figures.VARIANT_NAMES.get(r['variant'], r['variant'])}, S={r['S']}\n"
                     f"{fmt(r.get('runtime_ms'), 1)} ms, FID {fmt(r.get('fid'), 1)}")
            images, _ = _generated(rep, rep.root / "models" / "sweep" / str(r["trial"]) / "generator.pt", pairs,
                                   f"Fig. 9 column {r['trial']}", SOURCES["sweep"][1])
            columns.append((title, images))
        columns.append(("real photo", pairs.real_rgb))
        rep.save("fig9", figures.image_grid(columns, pairs.stems, f"Fig. 9: ablations on {dataset} test "
                                            f"pairs (runtime on {device})"))
    cols = [c for c in ("trial", "variant", "S", "steps", "runtime_ms", "lr_ms", "hr_ms", "fid", "kid_mean",
                        "pixel_acc", "miou") if c in sweep]
    digits = {"runtime_ms": 2, "lr_ms": 2, "hr_ms": 2, "fid": 2, "kid_mean": 4, "pixel_acc": 3, "miou": 3}
    rows = [[fmt(r[c], digits[c]) if c in digits else r[c] for c in cols] for r in sweep.to_dict("records")]
    paper_rows = [[role, str(paper.PAPER_S_ABLATION_DEFAULT_S) if role == "default S" else "not stated",
                   fmt(ms, 1)] for role, ms in paper.PAPER_S_ABLATION_MS.items()]
    rep.section("Fig. 9: ablations (S, positional encoding, spatially uniform MLP)",
                f"Trials of metrics/sweep.csv on {dataset}; default S = {s_default}.",
                md_table([HEADERS.get(c, c) for c in cols], rows),
                f"The paper's Fig. 9 caption ({paper.PAPER_S_ABLATION_SIZE} facades, {paper.PAPER_DEVICE}):",
                md_table(["trial", "S", "ms"], paper_rows),
                f"![{FIGURES['fig9b'][1]}]({FIGURES['fig9b'][0]})",
                figure=FIGURES["fig9"][0] if "fig9_ablation_samples.png" in rep.written else None)


def _pairs(rep: Report, data_root: Path, dataset: str, what: str):
    from asap.data.prepared import prepare_hint
    from asap.report import samples

    if not (data_root / "dataset.json").is_file():
        rep.lack(what, rel(rep.root, data_root), prepare_hint(dataset))
        return None
    return samples.load_test_pairs(data_root, rep.cfg.samples, rep.cfg.sample_stems)


def _generated(rep: Report, checkpoint: Path, pairs, what: str, how: str) -> tuple[list, dict]:
    """The generator's images on the pairs and its checkpoint meta, or a column of None (and a
    README note) when it is absent or does not fit the dataset."""
    from asap.models.checkpoint import CheckpointError
    from asap.report import samples

    if not checkpoint.is_file():
        rep.lack(what, rel(rep.root, checkpoint), how)
        return [None] * len(pairs.stems), {}
    try:
        return samples.generate(checkpoint, pairs, rep.cfg.device)
    except (CheckpointError, ValueError) as err:
        rep.lack(what, rel(rep.root, checkpoint), f"it could not run on {pairs.dataset}: {err}")
        return [None] * len(pairs.stems), {}


def per_class_section(rep: Report) -> None:
    from asap.report import figures

    table = rep.inputs.per_class
    if table.empty or table["iou"].isna().all():
        rep.lack("Fig. 11", "per-class IoU in metrics/eval.json or metrics/eval_per_class.csv",
                 "run the `evaluate` stage with a trained segmenter (`dvc repro segmenter evaluate`)")
        return
    rep.save("fig11", figures.per_class_iou(table))
    rows = [[r.name, fmt(100 * r.pixel_share, 2), fmt(r.iou, 3), fmt(r.real_iou, 3)]
            for r in table.sort_values("pixel_share", ascending=False).itertuples()]
    rep.section(FIGURES["fig11"][1], f"The paper sees IoU drop for classes under "
                f"{paper.PAPER_SMALL_CLASS_SHARE:.0%} of the image (Fig. 11, Cityscapes).",
                md_table(["class", "pixel share %", "IoU", "real-photo IoU"], rows), figure=FIGURES["fig11"][0])


def qualitative_section(rep: Report, params: dict) -> None:
    from asap.report import figures

    dataset = params.get("dataset", "")
    name = (params.get("train") or {}).get("name", "asapnet")
    checkpoints = [("ASAP-Net", rep.root / "models" / name / "generator.pt")]
    extra = [rep.root / p for p in rep.cfg.baselines]
    models = rep.root / "models"
    if models.is_dir():
        extra += [d / "generator.pt" for d in sorted(models.iterdir())
                  if d.name not in (name, "sweep") and (d / "generator.pt").is_file()]
    checkpoints += [(p.parent.name, p) for p in dict.fromkeys(extra)]
    present = [c for c in checkpoints if c[1].is_file()]
    if not present:
        rep.lack("the qualitative grid", rel(rep.root, checkpoints[0][1]), SOURCES["train"][1])
        return
    pairs = _pairs(rep, rep.root / "data" / "prepared" / dataset, dataset, "the qualitative grid")
    if pairs is None:
        return
    fids = {r.generator: r.fid for r in rep.inputs.evals.itertuples()}  # keyed by checkpoint path
    columns = [("label map" if "label" in pairs.batch else "input", pairs.inputs_rgb)]
    for name, path in checkpoints:
        images, meta = _generated(rep, path, pairs, f"qualitative column {name}", SOURCES["train"][1])
        title = figures.model_label(meta.get("arch", ""), False, (meta.get("config") or {}).get("width_mult", 1.0))
        title = f"{title} ({rel(rep.root, path.parent)})"
        fid = fids.get(rel(rep.root, path))
        columns.append((title + (f"\nFID {fmt(fid, 1)}" if fid is not None and fid == fid else ""), images))
    columns.append(("real photo", pairs.real_rgb))
    rep.save("qualitative", figures.image_grid(columns, pairs.stems, f"Test pairs of {dataset}"))
    if len(checkpoints) == 1:
        rep.lack("baseline columns of the qualitative grid", "models/<baseline>/generator.pt",
                 "no stage trains pix2pixHD / SPADE yet (list their checkpoints in report.baselines)")
    rep.section(FIGURES["qualitative"][1], "Generators: " + ", ".join(
        f"{t} (`{rel(rep.root, p)}`)" for t, p in checkpoints) + f"; test pairs {', '.join(pairs.stems)}.",
        figure=FIGURES["qualitative"][0])


def training_section(rep: Report) -> None:
    train = rep.inputs.train
    if train is None:
        return
    rows = [[k, fmt(v, 4) if isinstance(v, float) else v] for k, v in sorted(train.items())
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    rep.section("Training run (metrics/train.json)", md_table(["key", "value"], rows))


# ----------------------------------------------------------------------------------------------
# dvc plots series
# ----------------------------------------------------------------------------------------------

def write_plot_series(rep: Report, points: pd.DataFrame) -> None:
    """CSV series for dvc.yaml `plots:`; always written with every column dvc.yaml names, empty when
    absent (DVC rejects a plot whose column is missing, but draws an empty one)."""
    out = rep.out / PLOTS
    out.mkdir(parents=True, exist_ok=True)
    bench = rep.inputs.benchmark
    primary = bench[bench["file"] == bench["file"].iloc[0]] if not bench.empty else bench
    sizes = primary.drop_duplicates("size").sort_values("megapixels")[["size", "megapixels"]]
    wide = sizes.copy()
    for model in rep.cfg.plot_models:
        ms = primary[primary["model"] == model].set_index("size")["median_ms"]
        wide[model] = wide["size"].map(ms)
    wide.to_csv(out / "runtime_vs_resolution.csv", index=False)
    split = primary[(primary["arch"] == "asapnet") & primary["lr_ms"].notna()].drop_duplicates("size")
    split[["size", "megapixels", "lr_ms", "hr_ms", "median_ms"]].sort_values("megapixels").to_csv(
        out / "asapnet_streams.csv", index=False)
    points[["label", "group", "runtime_ms", "fid", "kid_mean", "pixel_acc", "miou"]].to_csv(
        out / "quality_vs_runtime.csv", index=False)
    rep.inputs.per_class[["class", "name", "pixel_share", "iou", "real_iou"]].to_csv(
        out / "per_class_iou.csv", index=False)


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

def make_report(root: str | Path, out: str | Path | None = None, params: dict | None = None,
                benchmark_files: list[str] | None = None, require_inputs: list[str] | None = None) -> Report:
    """Read ``root``'s results, write figures, plot series and README.md into ``out`` (root/reports)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    root = Path(root).resolve()
    out = Path(out) if out else root / "reports"
    params = params or {}
    cfg = from_dict(ReportConfig, params.get("report"), "params.yaml report")
    named = [Path(f) if Path(f).is_absolute() else root / f for f in benchmark_files or []]
    absent = [f for f in named if not f.is_file()]
    if absent:
        raise ReportInputError(f"benchmark file(s) {[rel(root, f) for f in absent]} not found: "
                               f"{SOURCES['benchmark'][1]}")
    inputs = read_inputs(root, named)
    if not any(inputs.present(k) for k in SOURCES):
        raise ReportInputError(
            f"no pipeline results under {root / 'metrics'}: nothing to report. Run the stages first "
            "(`dvc repro` runs them all), e.g. " + "; ".join(f"{SOURCES[k][0]}: {SOURCES[k][1]}" for k in SOURCES))
    inputs.require([*cfg.require, *(require_inputs or [])])

    out.mkdir(parents=True, exist_ok=True)
    for name, _ in FIGURES.values():  # a figure not drawn this time must not linger from an earlier run
        (out / name).unlink(missing_ok=True)
    rep = Report(root, out, cfg, inputs)
    runtime_sections(rep)
    points = quality_sections(rep)
    slim_section(rep)
    ablation_sections(rep, params)
    per_class_section(rep)
    qualitative_section(rep, params)
    training_section(rep)
    write_plot_series(rep, points)
    write_readme(rep)
    return rep


def write_readme(rep: Report) -> Path:
    head = ["# Reports: the paper's figures from this pipeline's results",
            f"Generated by the `report` stage (`python -m pipelines.report`, pipelines/report.py) from the files "
            f"below; regenerate with `dvc repro report`. Numbers marked \"paper\" are stated in the text of "
            f"{paper.CITATION} (asap/report/paper.py), measured by its authors on an "
            f"{paper.PAPER_DEVICE}; every other number comes from these files:",
            "\n".join(f"- `{f}`" for f in rep.inputs.files)]
    missing = ["## Not drawn: what is missing and how to produce it",
               "\n".join(f"- {m.line()}" for m in rep.missing) or "Nothing: every figure was drawn."]
    if rep.inputs.problems:
        missing.append("Files skipped:\n\n" + "\n".join(f"- {p}" for p in rep.inputs.problems))
    text = "\n\n".join(head + rep.sections + missing) + "\n"
    path = rep.out / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    from pipelines.common import fail, params, project_root

    parser = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    parser.add_argument("--root", default=None, help="project folder holding metrics/ and models/ (default: here)")
    parser.add_argument("--out", default=None, help="output folder (default: <root>/reports)")
    parser.add_argument("--benchmark", action="append", default=[],
                        help="a benchmark JSON that must exist (repeatable); all metrics/benchmark-*.json are drawn")
    parser.add_argument("--require", default="", help=f"comma-separated inputs that must exist: {','.join(SOURCES)}")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else project_root()
    p = params(args.params or (root / "params.yaml"))
    required = [k for k in args.require.split(",") if k]
    unknown = sorted(set(required) - set(SOURCES))
    if unknown:
        raise ConfigError(f"--require {unknown} unknown; allowed: {sorted(SOURCES)}")
    try:
        rep = make_report(root, args.out, p, args.benchmark, required)
    except ReportInputError as err:
        fail(str(err))
    print(f"wrote {len(rep.written)} figures and README.md to {rep.out}: {', '.join(rep.written)}")
    for m in rep.missing:
        print(f"not drawn: {m.line()}", file=sys.stderr)


if __name__ == "__main__":
    from pipelines.common import run_stage

    run_stage(lambda: main(sys.argv[1:]))
