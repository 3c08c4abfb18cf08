"""`report` stage: the paper's figures and the tables behind them, from the pipeline's own results.

    python -m pipelines.report                                  # the DVC stage (params.yaml `report:`)
    python -m pipelines.report --require eval,sweep             # fail unless these results exist
    python -m pipelines.report --benchmark metrics/benchmark-cpu.json   # this file must exist

Reads every result file under metrics/ (asap/report/inputs.py lists them), the generator checkpoints
under models/ (ASAP-Net = params.yaml `train.name`, the baselines = the keys of `baselines`, and any
other models/<name>/generator.pt) and a few test pairs of the prepared dataset, and writes into reports/:

    fig1_runtime_vs_resolution.png  fig1b_fast_path.png   fig4_stream_split.png
    fig6_quality_vs_runtime.png     fig8_slim_baselines.png
    fig9_ablation_samples.png       fig9_s_tradeoff.png   fig11_per_class_iou.png
    qualitative.png                 README.md (every figure's table, its budget and provenance; what is
                                    missing and which stage makes it)
    plots/*.csv                     the series of dvc.yaml `plots:` (`dvc plots diff` compares runs)

and noise/seed-noise.json (a DVC metric): |metric(seed a) - metric(seed b)| of FID, KID, pixel accuracy
and mIoU for each `repeat:` entry of params.yaml `baselines` (the run-to-run noise every table marks
differences against), {} without one. The GPU campaign's files (metrics/gpu-<device>-*.json, from
`python -m benchmarks.gpu_campaign score`) are found by globbing metrics/ when the stage runs; the
stage depends on the whole metrics/ folder, so `dvc repro report` redraws after `score`.

A figure whose inputs are absent is left out and README.md says which stage produces them. The stage
fails only when no result exists at all, or when an input named by --benchmark / --require /
`report.require` is absent; the error names the stage to run. The paper's own numbers come from
asap/report/paper.py (the one place they are written down) and are labelled as the paper's.
Reading, tables and figures live in asap/report/ (pure pandas/matplotlib/torch, usable from a
notebook on any project folder); this module wires files to figures and writes the README.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from asap.config import ConfigError, from_dict, require
from asap.files import write_text_atomic
from asap.report import campaign, noise, paper, tables
from asap.report.inputs import (SOURCES, Inputs, Missing, ReportInputError, checkpoint_meta, params_generators,
                                read_inputs, stages)
from asap.report.tables import fmt

FIGURES = {  # key -> (file under reports/, what it shows)
    "fig1": ("fig1_runtime_vs_resolution.png", "Fig. 1: runtime vs resolution, ASAP-Net and the baselines"),
    "fig1b": ("fig1b_fast_path.png", "ASAP-Net reference generator vs the fast path"),
    "fig4": ("fig4_stream_split.png", "Fig. 4: low-res stream vs full-res pixelwise time"),
    "fig6": ("fig6_quality_vs_runtime.png", "Fig. 6: FID / KID / pixel accuracy / mIoU vs runtime"),
    "fig8": ("fig8_slim_baselines.png", "Fig. 8: ASAP-Net vs slimmer pix2pixHD / SPADE"),
    "fig9": ("fig9_ablation_samples.png", "Fig. 9: ablation samples"),
    "fig9b": ("fig9_s_tradeoff.png", "Fig. 9: runtime and FID of S and the ablations"),
    "fig11": ("fig11_per_class_iou.png", "Fig. 11: per-class IoU vs class pixel share"),
    "qualitative": ("qualitative.png", "Qualitative: label | ASAP-Net | baselines | real photo"),
}
PLOTS = "plots"  # reports/plots/*.csv: the series of dvc.yaml `plots:`
NOISE_FILE = Path("noise") / "seed-noise.json"  # dvc.yaml: a metric of the report stage


@dataclass(frozen=True)
class ReportConfig:
    """The `report` section of params.yaml."""
    samples: int = 3                    # test pairs per sample grid (qualitative, Fig. 9)
    sample_stems: list | None = None    # those test pairs by name; null = the first `samples` in sorted order
    require: list = field(default_factory=list)     # inputs that must exist: benchmark, inference, train, eval, sweep
    plot_models: list = field(default_factory=lambda: ["asapnet", "pix2pixhd", "pix2pixhd-slim", "spade",
                                                       "spade-slim"])  # columns of plots/runtime_vs_resolution.csv
    paper_profile: str | None = "profiles/paper-gpu.yaml"  # the paper-like profile the budget is compared with
    dpi: int = 120
    device: str = "cpu"                 # where the sample grids' generators run

    def __post_init__(self):
        require(isinstance(self.samples, int) and 1 <= self.samples <= 16,
                f"report.samples must be an integer in 1..16, got {self.samples!r}")
        unknown = sorted(set(self.require) - set(SOURCES))
        require(not unknown, f"report.require {unknown} unknown; allowed: {sorted(SOURCES)}")
        require(isinstance(self.dpi, int) and 50 <= self.dpi <= 600, f"report.dpi must be in 50..600, got {self.dpi!r}")
        require(self.device in ("cpu", "cuda"), f"report.device must be cpu or cuda, got {self.device!r}")
        require(self.paper_profile is None or isinstance(self.paper_profile, str),
                "report.paper_profile must be a path (e.g. profiles/paper-gpu.yaml) or null, got "
                f"{self.paper_profile!r}")


class Report:
    """Collects README sections and the figures written, and what could not be drawn."""

    def __init__(self, root: Path, out: Path, cfg: ReportConfig, inputs: Inputs, params: dict):
        self.root, self.out, self.cfg, self.inputs, self.params = root, out, cfg, inputs, params
        self.sections: list[str] = []
        self.written: list[str] = []
        self.missing: list[Missing] = list(inputs.missing)
        self.asapnet = (params.get("train") or {}).get("name", "asapnet")  # train.name: Fig. 6's reference
        self.budget = tables.budget_line(inputs.generators, inputs.reference)
        self.noises = noise.seed_noise(inputs.generators)  # per repeated generator: its seeds' spread
        self.noise = noise.pooled(self.noises)             # metric -> the noise differences are marked against
        self.noise_file: Path | None = None                # where write_noise put noise/seed-noise.json

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
        gpu = ("Devices marked [GPU campaign] come from the campaign's phase 2 (metrics/gpu-<device>-inference.json: "
               "reference and fast path in fp32 and bf16, one panel per precision). " if rep.inputs.present("gpu")
               else "")
        rep.section(FIGURES["fig1"][1],
                    "Batch 1, median over the timed iterations (10th / 90th percentiles beside it), generators with "
                    "random weights (no training budget: runtime does not depend on the weights). Low-res / "
                    "pixelwise: ASAP-Net's two streams timed separately (Fig. 4). " + gpu + "Measured by:",
                    tables.benchmark_provenance(bench), "Ours:", tables.benchmark_table(bench),
                    "The paper's stated numbers:", tables.paper_runtime_table(), tables.speedup_table(bench),
                    figure=FIGURES["fig1"][0])
    if inference.empty:
        rep.lack("the fast-path comparison (Fig. 1b)", *SOURCES["inference"])
    else:
        rep.save("fig1b", figures.fast_path(inference))
        rep.section(FIGURES["fig1b"][1], f"From {', '.join(sorted(set(inference['file'])))} "
                    "(inference-*.json: benchmarks/inference.py, which records the machine and the time, not the "
                    "commit; gpu-*-inference.json: the GPU campaign's phase 2, with its commit): batch-1 latency of "
                    "the reference generator and the fast path, random weights; on a CPU the fast path falls back "
                    "to the reference MLP (the campaign's smoke mode runs the Triton kernel in its interpreter: "
                    "slow, measuring nothing).", tables.inference_table(inference),
                    tables.fast_path_speedups(inference), figure=FIGURES["fig1b"][0])
    if bench.empty:
        return
    split = bench[(bench["arch"] == "asapnet") & bench["lr_ms"].notna()]
    if split.empty:
        rep.lack("Fig. 4", "lr_ms/hr_ms of an ASAP-Net row in metrics/benchmark-<device>.json",
                 "benchmark an `arch: asapnet` model without `fast: true`")
    else:
        rep.save("fig4", figures.stream_split(bench))
        rep.section(FIGURES["fig4"][1], "The paper: the conv net's time stays roughly constant with "
                    "resolution, the pixelwise part grows with the pixel count (Sec. 4.1). Random weights; "
                    "machines and commits as in Fig. 1.", tables.stream_table(split), figure=FIGURES["fig4"][0])


def quality_sections(rep: Report) -> None:
    from asap.report import figures

    gens, evals = rep.inputs.generators, rep.inputs.evals
    gpu = rep.inputs.gpu.quality[rep.inputs.gpu.quality["error"] == ""]
    if evals.empty:
        rep.lack("Fig. 6", *SOURCES["eval"])
        if gpu.empty:
            return
    for r in evals[evals["runtime_ms"].isna()].itertuples():
        rep.lack(f"Fig. 6 point of {r.name}", f"runtime_ms in {r.eval_file}",
                 f"set evaluate.runtime_iters > 0 and run `dvc repro {stages(r.name, r.role)[1]}`")
    if evals["runtime_ms"].notna().any() or gpu["runtime_ms"].notna().any():
        rep.save("fig6", figures.quality_vs_runtime(evals, rep.budget, tables.point_label, gpu,
                                                    campaign.budget_line(gpu) if not gpu.empty else ""))
    gpu_text = (f"Squares: the GPU campaign's equal-time generators ({campaign.budget_line(gpu)}; runtime: each "
                "one's best path at the training size; GPU campaign section below). They had another budget than "
                "the circles: compare squares with squares." if not gpu.empty else "")
    rep.section(FIGURES["fig6"][1],
                "One point per generator trained by the pipeline (`train`, `train-baseline@<name>`) and scored by "
                "`evaluate` / `evaluate-baseline@<name>`, with the same losses and the same budget; runtime is the "
                "batch-1 time at the training size (log axis, as the paper's Fig. 6). A `repeat:` entry of "
                "`baselines` is its generator's config trained with another seed: drawn as an open marker joined to "
                "that generator's point by a dotted line (their gap is the run-to-run noise), not as a generator of "
                "its own. The sweep's trials are not drawn here: they get another budget and are scored on fewer "
                "test images (FID depends on the image count), so Fig. 9 compares them among themselves. " + gpu_text,
                tables.budget_note(gens, rep.inputs.reference), tables.floor_note(gens),
                tables.noise_note(gens, rep.noises), tables.quality_table(gens, rep.asapnet, rep.noise),
                "The run-to-run noise, run by run:" if rep.noises else "",
                tables.noise_table(gens, rep.noises) if rep.noises else "", tables.ceiling_note(gens),
                figure=FIGURES["fig6"][0])


def slim_section(rep: Report) -> None:
    from asap.report import figures

    bench, evals = rep.inputs.benchmark, rep.inputs.evals
    if bench.empty:
        return
    rep.save("fig8", figures.slim_baselines(bench, evals, rep.budget))
    if not evals["arch"].isin(["pix2pixhd", "spade"]).any():
        names = rep.inputs.generators.query("role == 'baseline'")["name"].tolist()
        rep.lack("Fig. 8 (b): FID of the baselines", "metrics/eval-<baseline>.json",
                 "run " + ", ".join(f"`dvc repro evaluate-baseline@{n}`" for n in names) if names else
                 "add pix2pixHD / SPADE entries to params.yaml `baselines` and run `dvc repro`")
    rep.section(FIGURES["fig8"][1], "(a) Runtime of the benchmark's generators (random weights: runtime does not "
                "depend on them; machines and commits as in Fig. 1). (b) FID against batch-1 runtime of the "
                "generators the pipeline trained and scored (budget, noise and floor: Fig. 6).",
                tables.slim_table(bench), figure=FIGURES["fig8"][0])


def ablation_sections(rep: Report) -> None:
    from asap.report import figures

    sweep = rep.inputs.sweep
    if sweep.empty:
        rep.lack("Fig. 9", *SOURCES["sweep"])
        return
    dataset = rep.inputs.sweep_meta.get("dataset") or rep.params.get("dataset", "")
    size = dataset.rpartition("-")[2]
    try:
        height, width = (int(v) for v in size.split("x"))
    except ValueError:
        height = width = 256
    s_default = tables.default_s(sweep, height, width)
    trials = [str(t) for t in sweep["trial"]] if "trial" in sweep else []
    trained_on = sorted(set(str(checkpoint_meta(rep.root / "models" / "sweep" / t / "generator.pt").get("train_device")
                                or "") for t in trials) - {""})
    budget = tables.sweep_budget(sweep, rep.inputs.sweep_meta, trained_on)
    devices = sorted(set(sweep["runtime_device"].dropna().astype(str))) if "runtime_device" in sweep else []
    device = (", ".join(devices) or "device not recorded") + (f" ({dataset})" if dataset else "")
    # the reference trial of the table's differences: the full model at the default S (Fig. 9 (f))
    reference = sweep[(sweep["variant"] == "full") & (sweep["S"] == s_default)]
    reference = str(reference["trial"].iloc[0]) if not reference.empty and "trial" in sweep else None
    rep.save("fig9b", figures.s_tradeoff(sweep, s_default, device, budget, reference, rep.noise.get("fid")))

    # the grid: (a) input, (b) no PE, (c) uniform, (d) larger S, (e) smaller S, (f) full, as Fig. 9
    order = [r for v in ("no_pe", "uniform") for r in sweep[sweep["variant"] == v].to_dict("records")]
    full = sweep[sweep["variant"] == "full"]
    order += full[full["S"] > s_default].sort_values("S", ascending=False).to_dict("records")
    order += full[full["S"] < s_default].sort_values("S", ascending=False).to_dict("records")
    order += full[full["S"] == s_default].to_dict("records")
    order += [r for r in sweep.to_dict("records") if r not in order]
    pairs = _pairs(rep, dataset, "Fig. 9 sample grid")
    if pairs is not None:
        columns = [("input", pairs.inputs_rgb)]
        for r in order:
            title = (f"{figures.VARIANT_NAMES.get(r['variant'], r['variant'])}, S={r['S']}\n"
                     f"{fmt(r.get('steps'), 0)} steps; {fmt(r.get('runtime_ms'), 1)} ms, FID {fmt(r.get('fid'), 1)}")
            path = rep.root / "models" / "sweep" / str(r["trial"]) / "generator.pt"
            columns.append((title, _generated(rep, path, pairs, f"Fig. 9 column {r['trial']}", SOURCES["sweep"][1])))
        columns.append(("real photo", pairs.real_rgb))
        rep.save("fig9", figures.image_grid(columns, pairs.stems,
                                            f"Fig. 9: ablations on {dataset} test pairs\n{budget}"))
    rep.section("Fig. 9: ablations (S, positional encoding, spatially uniform MLP)",
                f"Trials of metrics/sweep.csv on {dataset}; default S = {s_default}. Budget: {budget}.",
                tables.sweep_noise_note(sweep, rep.inputs.sweep_meta, rep.noises, rep.inputs.generators),
                tables.host_note(sweep, "trial", bool(rep.inputs.sweep_meta.get("time_budget_s")),
                                 column=tables.HEADERS["host_matmul_tflops"]),
                tables.runtime_host_note(sweep, "trial", column=tables.HEADERS["runtime_host_matmul_tflops"]),
                tables.sweep_table(sweep, reference, rep.noise, noise.not_measured(rep.inputs.generators)),
                f"The paper's Fig. 9 caption ({paper.PAPER_S_ABLATION_SIZE} facades, {paper.PAPER_DEVICE}):",
                tables.paper_s_table(), f"![{FIGURES['fig9b'][1]}]({FIGURES['fig9b'][0]})",
                figure=FIGURES["fig9"][0] if FIGURES["fig9"][0] in rep.written else None)


def _pairs(rep: Report, dataset: str, what: str):
    from asap.data.prepared import prepare_hint
    from asap.report import samples

    data_root = rep.root / "data" / "prepared" / dataset
    if not (data_root / "dataset.json").is_file():
        rep.lack(what, rel(rep.root, data_root), prepare_hint(dataset))
        return None
    return samples.load_test_pairs(data_root, rep.cfg.samples, rep.cfg.sample_stems)


def _generated(rep: Report, checkpoint: Path, pairs, what: str, how: str) -> list:
    """The generator's images on the pairs, or a column of None (and a README note) when it is
    absent or does not fit the dataset."""
    from asap.models.checkpoint import CheckpointError
    from asap.report import samples

    if not checkpoint.is_file():
        rep.lack(what, rel(rep.root, checkpoint), how)
        return [None] * len(pairs.stems)
    try:
        return samples.generate(checkpoint, pairs, rep.cfg.device)[0]
    except (CheckpointError, ValueError) as err:
        rep.lack(what, rel(rep.root, checkpoint), f"it could not run on {pairs.dataset}: {err}")
        return [None] * len(pairs.stems)


def per_class_section(rep: Report) -> None:
    from asap.report import figures

    evals = rep.inputs.evals
    names = [n for n in evals.loc[evals["role"] != "repeat", "name"] if n in rep.inputs.per_class]  # one seed each
    wide = tables.per_class_wide(rep.inputs.per_class, names)
    names = [n for n in names if wide[f"iou_{n}"].notna().any()]
    if not names:
        rep.lack("Fig. 11", "per-class IoU in metrics/eval_per_class-<name>.csv",
                 "run the `evaluate` stage with a trained segmenter (`dvc repro segmenter evaluate`)")
        return
    rep.save("fig11", figures.per_class_iou(wide, names, rep.budget))
    rep.section(FIGURES["fig11"][1], f"The paper sees IoU drop for classes under "
                f"{paper.PAPER_SMALL_CLASS_SHARE:.0%} of the image (Fig. 11, Cityscapes). Budget as in Fig. 6; one "
                "seed per generator (a `repeat:` run is left out).",
                tables.per_class_table(wide, names), figure=FIGURES["fig11"][0])


def qualitative_section(rep: Report) -> None:
    from asap.report import figures

    gens = rep.inputs.generators
    shown = gens[gens["has_checkpoint"].astype(bool) | (gens["role"] != "other")]
    if not shown["has_checkpoint"].any():
        rep.lack("the qualitative grid", f"models/{rep.asapnet}/generator.pt", SOURCES["train"][1])
        return
    dataset = rep.params.get("dataset", "")
    pairs = _pairs(rep, dataset, "the qualitative grid")
    if pairs is None:
        return
    columns = [("label map" if "label" in pairs.batch else "input", pairs.inputs_rgb)]
    for _, r in shown.iterrows():
        path = rep.root / "models" / r["name"] / "generator.pt"
        images = (_generated(rep, path, pairs, f"qualitative column {r['name']}", "")
                  if r["has_checkpoint"] else [None] * len(pairs.stems))  # its absence is listed already
        label = figures.model_label(r["arch"], False, r["width_mult"])
        seed = f", seed {fmt(r['seed'], 0)}" if r["role"] == "repeat" else ""  # a repeat: its generator's other seed
        title = f"{label}{seed} ({r['name']})"
        if r["has_checkpoint"]:
            title += f"\n{fmt(r['steps'], 0)} steps, {fmt(r['train_seconds'], 0)} s"
        if r["has_eval"]:
            title += f"\nFID {fmt(r['fid'], 1)} (floor {fmt(r['floor_fid'], 1)})"
        columns.append((title, images))
    columns.append(("real photo", pairs.real_rgb))
    rep.save("qualitative", figures.image_grid(columns, pairs.stems, f"Test pairs of {dataset}\n{rep.budget}"))
    rep.section(FIGURES["qualitative"][1], "Generators: " + ", ".join(
        f"{r['name']} (`models/{r['name']}/generator.pt`{'' if r['has_checkpoint'] else ', missing'})"
        for _, r in shown.iterrows()) + f"; test pairs {', '.join(pairs.stems)}. Budget as in Fig. 6.",
        figure=FIGURES["qualitative"][0])


def gpu_section(rep: Report) -> None:
    """The GPU campaign (issue 13): the issue's targets met or missed, the training-step comparison and
    the equal-time quality of each generator; or one line saying there is none."""
    gpu = rep.inputs.gpu
    title = "GPU campaign (issue 13): targets, training step, equal-time quality"
    if not gpu.files:
        rep.section(title, "No GPU campaign results in metrics/ (metrics/gpu-<device>-*.json): docs/gpu.md says how "
                           "to run it (`python -m benchmarks.gpu_campaign run` on a GPU, `... score DIR` here, then "
                           "`dvc repro report`).")
        return
    smoked = gpu.quality["smoke"].astype(bool).any() or any("smoke" in d for d in gpu.targets["device"])
    smoke = " **Smoke-mode files (the campaign run on a CPU at toy sizes): their numbers measure nothing.**" \
        if smoked else ""
    files = ", ".join(f"`{rel(rep.root, f)}`" for f in gpu.files)
    parts = [f"From {files}. Phase 2's runtimes are drawn in Fig. 1, 1b, 4 and 8 (devices marked [GPU campaign]); "
             "its speed-ups are measured against the reference in the same run." + smoke,
             "**The issue's targets** (a target no file holds is *not measured*):", campaign.targets_table(gpu.targets)]
    if not gpu.pixelwise.empty:
        parts += ["**Pixelwise MLP, forward + backward** (phase 3): the part of a training step the fused kernel "
                  "changes, alone; our layout and the authors' through autograd, and the fused kernel (CUDA only), "
                  "same run:", campaign.pixelwise_table(gpu.pixelwise)]
    if not gpu.training.empty:
        parts += ["**Training step** (phase 3): ours against the authors' way of writing the step, same run, same "
                  "batch and size. The FLOP ratio is the two steps' counted arithmetic (torch.utils.flop_counter, "
                  "matmuls and convolutions), the speed-up at an equal FLOP rate: a step goes past it only by "
                  "running nearer the matmul rate than the other. Each step's share of a matmul's rate timed in "
                  "the same run says where it ran (n/a: a file made before steps were counted):", campaign.training_table(gpu.training)]
    if not gpu.kernels.empty:
        parts += ["**Where the time goes** (phases 2 and 3, torch.profiler): the same work run eagerly under the "
                  "profiler, each kernel's own device time summed by kind, per forward or step, beside the time "
                  "the phase measured for it; what a graph replay's time has beyond its kernels is the device "
                  "waiting between them. Eager launches and kernel choices can differ from the graph's. On a CPU "
                  "(smoke) the counts and times are aten ops' CPU self time:", campaign.kernels_table(gpu.kernels)]
    if not gpu.quality.empty:
        q = gpu.quality
        noise_text = (f"Differences to ASAP-Net are marked *{noise.WITHIN}* against the run-to-run noise measured by "
                      f"the pipeline ({', '.join(rep.noises)}), **at the pipeline's budget, not this one**: the noise "
                      "at the campaign's budget is not measured." if rep.noises else
                      "Differences to ASAP-Net are not judged against training noise: "
                      f"{noise.not_measured(rep.inputs.generators)}.")
        parts += [f"**Equal-time quality** (phase 4, scored on the CPU by `score`): {campaign.budget_line(q)}; one "
                  f"seed each. Read FID beside its real-vs-real floor. {noise_text} Drawn as squares in Fig. 6.",
                  campaign.quality_table(q, rep.noise)]
    rep.section(title, *parts)


def provenance_section(rep: Report) -> None:
    gens = rep.inputs.generators
    if gens.empty:
        return
    rep.section("Where each generator's numbers come from",
                "The runs, files and commits behind every row of Fig. 6 (a commit or device a file does not "
                "record is shown as not recorded).", tables.provenance_table(gens))


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

def write_plot_series(rep: Report) -> None:
    """CSV series for dvc.yaml `plots:` (tables.plot_series), written even when empty."""
    (rep.out / PLOTS).mkdir(parents=True, exist_ok=True)
    for name, table in tables.plot_series(rep.inputs, rep.cfg.plot_models).items():
        table.to_csv(rep.out / PLOTS / f"{name}.csv", index=False)


def make_report(root: str | Path, out: str | Path | None = None, params: dict | None = None,
                benchmark_files: list[str] | None = None, require_inputs: list[str] | None = None,
                noise_file: str | Path | None = None) -> Report:
    """Read ``root``'s results, write figures, plot series and README.md into ``out`` (root/reports),
    and the run-to-run noise into ``noise_file`` (root/noise/seed-noise.json with the default ``out``,
    else <out>/seed-noise.json)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    root = Path(root).resolve()
    out = Path(out) if out else root / "reports"
    noise_file = Path(noise_file) if noise_file else None
    params = params or {}
    cfg = from_dict(ReportConfig, params.get("report"), "params.yaml report")
    named = [Path(f) if Path(f).is_absolute() else root / f for f in benchmark_files or []]
    absent = [f for f in named if not f.is_file()]
    if absent:
        raise ReportInputError(f"benchmark file(s) {[rel(root, f) for f in absent]} not found: "
                               f"{SOURCES['benchmark'][1]}")
    inputs = read_inputs(root, named, params_generators(params), cfg.paper_profile)
    if not any(inputs.present(k) for k in SOURCES):
        raise ReportInputError(
            f"no pipeline results under {root / 'metrics'}: nothing to report. Run the stages first "
            "(`dvc repro` runs them all), e.g. " + "; ".join(f"{SOURCES[k][0]}: {SOURCES[k][1]}" for k in SOURCES))
    inputs.require([*cfg.require, *(require_inputs or [])])

    out.mkdir(parents=True, exist_ok=True)
    for name, _ in FIGURES.values():  # a figure not drawn this time must not linger from an earlier run
        (out / name).unlink(missing_ok=True)
    rep = Report(root, out, cfg, inputs, params)
    runtime_sections(rep)
    quality_sections(rep)
    slim_section(rep)
    ablation_sections(rep)
    per_class_section(rep)
    qualitative_section(rep)
    gpu_section(rep)
    provenance_section(rep)
    write_plot_series(rep)
    write_noise(rep, noise_file or (root / NOISE_FILE if out == root / "reports" else out / NOISE_FILE.name))
    write_readme(rep)
    return rep


def write_noise(rep: Report, path: Path) -> Path:
    """noise/seed-noise.json: numbers only (asap.report.noise.metrics_file), {} without a repeat."""
    import json

    write_text_atomic(path, json.dumps(noise.metrics_file(rep.noises), indent=2, sort_keys=True) + "\n")
    rep.noise_file = path
    return path


def write_readme(rep: Report) -> Path:
    head = ["# Reports: the paper's figures from this pipeline's results",
            f"Generated by the `report` stage (`python -m pipelines.report`, pipelines/report.py) from the files "
            f"below; regenerate with `dvc repro report`. Numbers marked \"paper\" are stated in the text of "
            f"{paper.CITATION} (asap/report/paper.py), measured by its authors on an "
            f"{paper.PAPER_DEVICE}; every other number comes from these files:",
            "\n".join(f"- `{f}`" for f in rep.inputs.files)]
    warning = tables.quick_warning(rep.inputs.generators, rep.inputs.reference)
    if warning:
        head.append(warning)
    missing = ["## Not drawn: what is missing and how to produce it",
               "\n".join(f"- {m.line()}" for m in rep.missing) or "Nothing: every figure was drawn."]
    if rep.inputs.problems:
        missing.append("Files skipped:\n\n" + "\n".join(f"- {p}" for p in rep.inputs.problems))
    text = "\n\n".join(head + rep.sections + missing) + "\n"
    path = rep.out / "README.md"
    write_text_atomic(path, text)
    return path


def main(argv: list[str] | None = None) -> None:
    from pipelines.common import params, project_root

    parser = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    parser.add_argument("--root", default=None, help="project folder holding metrics/ and models/ (default: here)")
    parser.add_argument("--out", default=None, help="output folder (default: <root>/reports)")
    parser.add_argument("--benchmark", action="append", default=[],
                        help="a benchmark JSON that must exist (repeatable); all metrics/benchmark-*.json are drawn")
    parser.add_argument("--require", default="", help=f"comma-separated inputs that must exist: {','.join(SOURCES)}")
    parser.add_argument("--noise-out", default=None,
                        help="the run-to-run noise metrics file (default: <root>/noise/seed-noise.json, or "
                             "<out>/seed-noise.json with --out)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else project_root()
    p = params(args.params or (root / "params.yaml"))
    required = [k for k in args.require.split(",") if k]
    unknown = sorted(set(required) - set(SOURCES))
    if unknown:
        raise ConfigError(f"--require {unknown} unknown; allowed: {sorted(SOURCES)}")
    rep = make_report(root, args.out, p, args.benchmark, required, args.noise_out)  # ReportInputError: run_stage
    print(f"wrote {len(rep.written)} figures and README.md to {rep.out}: {', '.join(rep.written)}; "
          f"run-to-run noise to {rep.noise_file}")
    for m in rep.missing:
        print(f"not drawn: {m.line()}", file=sys.stderr)


if __name__ == "__main__":
    from pipelines.common import run_stage

    run_stage(lambda: main(sys.argv[1:]))
