"""The paper's figures, drawn with matplotlib from the tables of asap.report.inputs.

Every function takes tables (pandas) and returns a ``matplotlib.figure.Figure`` built without pyplot
(no global state, no display needed); the caller saves it. Runtimes are on log axes where the paper
uses them (Fig. 1, Fig. 6), and every axis names its unit. The paper's stated numbers
(asap.report.paper) are drawn in black with "paper" and the paper's GPU in the label.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from asap.report import paper

ARCH_NAMES = {"asapnet": "ASAP-Net", "pix2pixhd": "pix2pixHD", "spade": "SPADE"}
ARCH_COLOURS = {"asapnet": "C0", "pix2pixhd": "C1", "spade": "C2"}
VARIANT_NAMES = {"full": "full model", "no_pe": "no positional encoding", "uniform": "spatially uniform MLP"}
PAPER_STYLE = dict(color="black", marker="*", markersize=13, linestyle="none", zorder=5)


def model_label(arch: str, fast: bool = False, width_mult: float = 1.0) -> str:
    """"ASAP-Net", "ASAP-Net (fast path)", "SPADE x0.5 channels"."""
    name = ARCH_NAMES.get(arch, arch)
    if fast:
        name += " (fast path)"
    if width_mult == width_mult and width_mult != 1.0:
        name += f" x{width_mult:g} channels"
    return name


def _figure(ncols: int, width: float = 5.2, height: float = 4.2, nrows: int = 1):
    """A constrained-layout figure, at least 6.8 inches wide so a one-panel figure's title fits."""
    fig = Figure(figsize=(max(width * ncols, 6.8), height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _size_ticks(ax, sizes: dict[float, str]) -> None:
    """Log megapixel axis with a tick at each benchmarked size, labelled "<H>x<W>\\n<MP> MP"."""
    ax.set_xscale("log")
    mps = sorted(sizes)
    ax.xaxis.set_major_locator(FixedLocator(mps))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{sizes[m]}\n{m:.2g} MP" for m in mps], fontsize=8)
    if len(mps) == 1:
        ax.set_xlim(mps[0] / 1.6, mps[0] * 1.6)
    else:
        ax.set_xlim(mps[0] / 1.3, mps[-1] * 1.3)


def _sizes(df: pd.DataFrame) -> dict[float, str]:
    out: dict[float, str] = {}
    for mp, size in zip(df["megapixels"], df["size"]):
        out[mp] = size if mp not in out or size in out[mp].split(" / ") else f"{out[mp]} / {size}"
    return out


def _note(ax, text: str) -> None:
    """A panel with nothing to draw says why, in place of the plot (``text`` carries its own line breaks)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def _suptitle(fig, text: str, fontsize: int = 10) -> None:
    """The figure's title, each line wrapped to the figure's width (~11 characters an inch at 10 pt)."""
    width = max(30, int(fig.get_figwidth() * 110 / fontsize))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.splitlines()), fontsize=fontsize)


def _log_ms_axis(ax, axis: str = "x") -> None:
    """A log runtime axis labelled in plain milliseconds (1, 2, 5, 10, 20, ...), not 2x10^1."""
    getattr(ax, f"set_{axis}scale")("log")
    scale = getattr(ax, f"{axis}axis")
    scale.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    scale.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def _errorbar(ax, g: pd.DataFrame, marker: str = "o", **style) -> None:
    lo = (g["median_ms"] - g["p10_ms"]).clip(lower=0).fillna(0)
    hi = (g["p90_ms"] - g["median_ms"]).clip(lower=0).fillna(0)
    ax.errorbar(g["megapixels"], g["median_ms"], yerr=[lo, hi], capsize=3, marker=marker, **style)


def _panel_title(text: str, width: int = 52) -> str:
    """A panel's title wrapped so that side-by-side panels do not write over each other."""
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


# ----------------------------------------------------------------------------------------------
# Runtime (Fig. 1, Fig. 4, the fast path)
# ----------------------------------------------------------------------------------------------

def runtime_vs_resolution(bench: pd.DataFrame) -> Figure:
    """Fig. 1: median batch-1 runtime (p10-p90 bars) vs resolution, one panel per benchmarked device,
    full-width models only (the slim variants are Fig. 8); the paper's ASAP-Net times as stars."""
    full = bench[bench["width_mult"] == 1.0]
    devices = list(dict.fromkeys(full["device"]))
    fig, axes = _figure(len(devices))
    paper_mp = {m: s for s, m in ((s, _mp(s)) for s in paper.PAPER_ASAPNET_MS)}
    for ax, device in zip(axes[0], devices):
        d = full[full["device"] == device]
        for _, g in d.groupby("model", sort=False):
            g = g.sort_values("megapixels")
            first = g.iloc[0]
            _errorbar(ax, g, color=ARCH_COLOURS.get(first["arch"], "C7"), linestyle="--" if first["fast"] else "-",
                      marker="D" if first["fast"] else "o", label=model_label(first["arch"], bool(first["fast"])))
        ax.plot(list(paper_mp), [paper.PAPER_ASAPNET_MS[s] for s in paper_mp.values()], **PAPER_STYLE,
                label=f"ASAP-Net, paper ({paper.PAPER_DEVICE})")
        _size_ticks(ax, {**paper_mp, **_sizes(d)})
        _log_ms_axis(ax, "y")
        ax.set(xlabel="resolution (megapixels, log scale)", ylabel="runtime per image, median (ms, log scale)",
               title=_panel_title(f"ours: {device}{_commit(d)}"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    _suptitle(fig, "Fig. 1: inference time vs resolution, random weights (runtime does not depend on them)\n"
                   "(batch 1; median, bars from 10th to 90th percentile)", fontsize=11)
    return fig


def _mp(size: str) -> float:
    h, w = (int(v) for v in size.split("x"))
    return h * w / 1e6


def fast_path(inference: pd.DataFrame) -> Figure:
    """The reference generator vs the fast path (benchmarks/inference.py, the GPU campaign's phase 2),
    per file (one run on one device) and precision; each fast-path point says its speed-up over the
    fp32 reference timed in the same run ("x8.3")."""
    devices = list(dict.fromkeys(inference["file"]))
    fig, axes = _figure(len(devices))
    for ax, file in zip(axes[0], devices):
        d = inference[inference["file"] == file]
        reference = d[(d["path"] == "reference") & (d["precision"] == "fp32")].set_index("size")["median_ms"]
        for i, ((path, precision), g) in enumerate(d.groupby(["path", "precision"], sort=False)):
            g = g.sort_values("megapixels")
            _errorbar(ax, g, color=f"C{i}", linestyle="-" if path == "reference" else "--",
                      marker="o" if path == "reference" else "D", label=f"{path} ({precision})")
            if path != "reference":
                for _, r in g.iterrows():
                    if r["size"] in reference.index and r["median_ms"] > 0:
                        ax.annotate(f"x{reference[r['size']] / r['median_ms']:.1f}", (r["megapixels"], r["median_ms"]),
                                    fontsize=7, color=f"C{i}", xytext=(4, -9), textcoords="offset points")
        _size_ticks(ax, _sizes(d))
        _log_ms_axis(ax, "y")
        device = d["device"].iloc[0].rsplit(",", 1)[0]
        ax.set(xlabel="resolution (megapixels, log scale)", ylabel="runtime per image, median (ms, log scale)",
               title=_panel_title(f"{device} ({file})"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.suptitle("ASAP-Net: reference generator vs fast path, random weights\n(batch 1; median, bars from 10th to 90th "
                 "percentile; xN: speed-up over the fp32 reference of the same run)")
    return fig


def stream_split(bench: pd.DataFrame) -> Figure:
    """Fig. 4: ASAP-Net's low-res stream vs full-resolution pixelwise MLP time per resolution."""
    rows = bench[(bench["arch"] == "asapnet") & ~bench["fast"].astype(bool) & bench["lr_ms"].notna()]
    devices = list(dict.fromkeys(rows["device"]))
    fig, axes = _figure(len(devices), width=5.0)
    for ax, device in zip(axes[0], devices):
        d = rows[rows["device"] == device]
        d = d[d["model"] == d["model"].iloc[0]].sort_values("megapixels")
        x = np.arange(len(d))
        ax.bar(x, d["lr_ms"], color="C0", label="low-res stream (downsample + conv net)")
        ax.bar(x, d["hr_ms"], bottom=d["lr_ms"], color="C9", label="full-res pixelwise MLPs")
        ax.plot(x, d["median_ms"], linestyle="none", marker="_", markersize=28, color="black",
                label="whole generator, timed end to end")
        ax.set_xticks(x, [f"{s}\n{m:.2g} MP" for s, m in zip(d["size"], d["megapixels"])], fontsize=8)
        ax.set(xlabel="resolution", ylabel="runtime per image, median (ms)",
               title=_panel_title(f"ours: {device}{_commit(d)}"))
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_ylim(0, 1.3 * max(d["median_ms"].max(), (d["lr_ms"] + d["hr_ms"]).max()))
        ax.legend(fontsize=8, loc="upper left", framealpha=0.85)
    fig.suptitle("Fig. 4: ASAP-Net runtime split, random weights\nlow-res stream vs full-res pixelwise part "
                 "(each timed alone)")
    return fig


# ----------------------------------------------------------------------------------------------
# Quality vs runtime (Fig. 6, Fig. 8)
# ----------------------------------------------------------------------------------------------

QUALITY_AXES = (("fid", "FID", "FID (lower is better)"),  # (column, axis label, panel title)
                ("kid_mean", "KID", "KID ± std over subsets (lower is better)"),
                ("pixel_acc", "pixel accuracy", "pixel accuracy (higher is better)"),
                ("miou", "mIoU", "mIoU (higher is better)"))
FLOOR_STYLE = dict(color="C3", linestyle="--", linewidth=1.2, zorder=2)
CEILING_STYLE = dict(color="0.3", linestyle=":", zorder=2)


def _full(width_mult: float) -> bool:
    return not width_mult == width_mult or width_mult >= 1  # NaN: ASAP-Net, which has no width multiplier


def _floor_lines(ax, evals: pd.DataFrame, metric: str) -> None:
    """The real-versus-real floor of FID (or KID, with its std as a band): one line per distinct floor."""
    column = {"fid": "floor_fid", "kid_mean": "floor_kid_mean"}[metric]
    for _, r in evals.dropna(subset=[column]).drop_duplicates([column, "floor_num_images"]).iterrows():
        n = f"{r['floor_num_images']:.0f}"
        ax.axhline(r[column], **FLOOR_STYLE, label=f"real vs real floor ({n} vs {n} photos): "
                                                   f"{r[column]:.{1 if metric == 'fid' else 4}f}")
        if metric == "kid_mean" and r["floor_kid_std"] == r["floor_kid_std"]:
            ax.axhspan(r[column] - r["floor_kid_std"], r[column] + r["floor_kid_std"], color="C3", alpha=0.1)


def _is_repeat(r) -> bool:
    return r.get("role") == "repeat" and bool(r.get("repeat_of"))


def _seed_links(ax, d: pd.DataFrame, metric: str, x: str = "runtime_ms") -> None:
    """A `repeat:` run is its generator's second seed, not a generator of its own: a dotted line joins
    it to the generator's point, so the pair reads as one result and its spread."""
    by_name = d.set_index("name")
    for _, r in d.iterrows():
        if _is_repeat(r) and r["repeat_of"] in by_name.index:
            t = by_name.loc[r["repeat_of"]]
            ax.plot([t[x], r[x]], [t[metric], r[metric]], color=ARCH_COLOURS.get(r["arch"], "C7"), linestyle=":",
                    linewidth=1.5, zorder=2)


def _points(ax, d: pd.DataFrame, metric: str, labels) -> None:
    _seed_links(ax, d, metric)
    for _, r in d.iterrows():
        colour = ARCH_COLOURS.get(r["arch"], "C7")
        style = dict(color=colour, alpha=1.0 if _full(r["width_mult"]) else 0.55, zorder=3)
        hollow = _is_repeat(r)  # a second seed: an open marker of its generator's colour
        if metric == "kid_mean":
            ax.errorbar(r["runtime_ms"], r[metric], yerr=r["kid_std"] if r["kid_std"] == r["kid_std"] else None,
                        marker="o", markersize=6, capsize=4, linestyle="none",
                        **({"mfc": "white"} if hollow else {}), **style)
        elif hollow:
            ax.scatter(r["runtime_ms"], r[metric], s=45, facecolors="white", edgecolors=colour, linewidths=1.5,
                       zorder=3)
        else:
            ax.scatter(r["runtime_ms"], r[metric], s=45, **style)
        ax.annotate(labels(r), (r["runtime_ms"], r[metric]), fontsize=7, xytext=(5, -14 if hollow else 3),
                    textcoords="offset points")  # a second seed lies near its first: its label below


def _gpu_points(ax, gpu: pd.DataFrame, metric: str) -> None:
    """The GPU campaign's equal-time points (asap.report.campaign QUALITY_COLUMNS): squares, labelled
    with the budget and device they were made with."""
    for _, r in gpu.iterrows():
        ax.scatter(r["runtime_ms"], r[metric], s=50, marker="s", color=ARCH_COLOURS.get(r["arch"], "C7"),
                   edgecolors="black", linewidths=0.6, zorder=4)
        ax.annotate(f"{r['name']} (GPU campaign)\n{r['steps']:.0f} steps, {r['budget_s']:g} s budget",
                    (r["runtime_ms"], r[metric]), fontsize=7, xytext=(5, -10), textcoords="offset points")


def quality_vs_runtime(evals: pd.DataFrame, budget: str, labels, gpu: pd.DataFrame | None = None,
                       gpu_budget: str = "") -> Figure:
    """Fig. 6: FID, KID, pixel accuracy and mIoU vs batch-1 runtime (log scale), one point per evaluated
    generator (``evals``: asap.report.inputs GENERATOR_COLUMNS), labelled by ``labels(row)``, a
    `repeat:` run as an open marker joined to its generator's point (its second seed); the GPU
    campaign's equal-time points (``gpu``: asap.report.campaign QUALITY_COLUMNS) as squares; the
    real-vs-real floor as a dashed line (FID, KID), the segmenter on real photos as a dotted one."""
    fig, axes = _figure(2, width=5.6, height=4.4, nrows=2)
    timed = evals[evals["runtime_ms"].notna()]
    gpu = gpu[gpu["runtime_ms"].notna()] if gpu is not None else pd.DataFrame(columns=["runtime_ms"])
    for ax, (metric, ylabel, title) in zip(axes.flat, QUALITY_AXES):
        d = timed[timed[metric].notna()]
        g = gpu[gpu[metric].notna()] if metric in gpu else gpu.iloc[:0]
        if d.empty and g.empty:
            _note(ax, f"no {metric} with a runtime in the eval files")
            ax.set_title(title)
            continue
        _points(ax, d, metric, labels)
        _gpu_points(ax, g, metric)
        if metric in ("fid", "kid_mean"):
            _floor_lines(ax, pd.concat([t for t in (evals, gpu) if not t.empty]), metric)
        ceiling = evals.get(f"real_{metric}")
        if (ceiling is None or ceiling.isna().all()) and f"real_{metric}" in gpu:
            ceiling = gpu[f"real_{metric}"]  # only the campaign's generators: its own scoring of the real photos
        if ceiling is not None and ceiling.notna().any():
            ax.axhline(float(ceiling.dropna().iloc[0]), **CEILING_STYLE, label="real photos (segmenter ceiling)")
        _log_ms_axis(ax)
        runtimes = pd.concat([d["runtime_ms"], g["runtime_ms"]])
        lo, hi = runtimes.min(), runtimes.max()
        ax.set_xlim(lo / 1.6, hi * 2.2)  # room for the labels right of the points
        ax.margins(y=0.25)
        ax.set(xlabel="runtime per image, batch 1 (ms, log scale)", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    title = "Fig. 6: quality vs runtime, one point per generator" + (
        " (open marker: a second training seed)" if "role" in evals and (evals["role"] == "repeat").any() else "")
    _suptitle(fig, f"{title}\n{budget}" + (f"\nsquares: {gpu_budget}" if gpu_budget and not gpu.empty else ""))
    return fig


def slim_baselines(bench: pd.DataFrame, evals: pd.DataFrame, budget: str = "") -> Figure:
    """Fig. 8: ASAP-Net vs narrower pix2pixHD/SPADE: (a) runtime of every width at each size, one
    panel per benchmarked device (random weights), (b) FID vs runtime of the evaluated generators
    (trained, scored by the evaluate stages), with the real-vs-real floor."""
    devices = list(dict.fromkeys(bench["device"]))
    fig, axes = _figure(len(devices) + 1, width=6.0)
    for ax, device in zip(axes[0], devices):
        d = bench[(bench["device"] == device) & ~bench["fast"].astype(bool)]
        models = d.drop_duplicates("model").sort_values(["arch", "width_mult"], ascending=[True, False])
        models = pd.concat([models[models["arch"] == "asapnet"], models[models["arch"] != "asapnet"]])
        sizes = d.drop_duplicates("size").sort_values("megapixels")["size"].tolist()
        width = 0.8 / max(len(models), 1)
        for i, (_, m) in enumerate(models.iterrows()):
            g = d[d["model"] == m["model"]].set_index("size").reindex(sizes)
            ax.bar(np.arange(len(sizes)) + (i - (len(models) - 1) / 2) * width, g["median_ms"], width,
                   color=ARCH_COLOURS.get(m["arch"], "C7"), alpha=1.0 if _full(m["width_mult"]) else 0.5,
                   label=f"{model_label(m['arch'], False, m['width_mult'])} ({_params(m['params'])})")
        ax.set_xticks(np.arange(len(sizes)), sizes)
        _log_ms_axis(ax, "y")
        ax.set(xlabel="resolution", ylabel="runtime per image, median (ms, log scale)",
               title=_panel_title(f"(a) runtime by channel width, random weights\nours: {device}{_commit(d)}"))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

    ax = axes[0][-1]
    scored = evals[evals["fid"].notna() & evals["runtime_ms"].notna()]
    if scored.empty or set(scored["arch"]) <= {"asapnet"}:
        _note(ax, "no FID for pix2pixHD or SPADE yet:\nrun `dvc repro evaluate-baseline@<name>`\n"
                  "(see reports/README.md)")
    else:
        _seed_links(ax, scored, "fid")
        for _, r in scored.iterrows():
            colour = ARCH_COLOURS.get(r["arch"], "C7")
            if _is_repeat(r):  # a second seed of a generator drawn here: open marker, joined to it
                ax.scatter(r["runtime_ms"], r["fid"], s=50, facecolors="white", edgecolors=colour, linewidths=1.5,
                           zorder=3)
                name = f"seed {r['seed']:.0f}" if r["seed"] == r["seed"] else "another seed"
            else:
                ax.scatter(r["runtime_ms"], r["fid"], s=50, color=colour,
                           alpha=1.0 if _full(r["width_mult"]) else 0.55, zorder=3)
                name = model_label(r["arch"], False, r["width_mult"])
            ax.annotate(f"{name}\n{r['steps']:.0f} steps", (r["runtime_ms"], r["fid"]), fontsize=7,
                        xytext=(4, -16 if _is_repeat(r) else 3), textcoords="offset points")
        _floor_lines(ax, evals, "fid")
        _log_ms_axis(ax)
        ax.set_xlim(scored["runtime_ms"].min() / 1.6, scored["runtime_ms"].max() * 2.2)
        ax.margins(y=0.25)
        ax.set(xlabel="runtime per image, batch 1, at the training size (ms, log scale)",
               ylabel="FID (lower is better)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    ax.set_title("(b) FID vs runtime, generators trained by the pipeline")
    _suptitle(fig, "Fig. 8: ASAP-Net vs slimmer pix2pixHD / SPADE" + (f"\n(b): {budget}" if budget else ""))
    return fig


def _commit(d: pd.DataFrame) -> str:
    commits = sorted(set(c[:10] for c in d.get("commit", pd.Series(dtype=str)) if c and c != "unknown"))
    return f" (commit {', '.join(commits)})" if commits else " (commit not recorded)"


def _params(n: float) -> str:
    if n != n:
        return "? params"
    return f"{n / 1e6:.1f}M params" if n >= 1e6 else f"{n / 1e3:.1f}k params"


# ----------------------------------------------------------------------------------------------
# Ablations (Fig. 9) and per-class IoU (Fig. 11)
# ----------------------------------------------------------------------------------------------

def image_grid(columns: list[tuple[str, list]], row_labels: list[str], title: str) -> Figure:
    """Columns of (title, images (H, W, 3) uint8 or None per row); None cells say "not available"."""
    nrows, ncols = len(row_labels), len(columns)
    h, w = next(im.shape[:2] for _, ims in columns for im in ims if im is not None)
    cell = 2.0
    fig = Figure(figsize=(cell * ncols * min(w / h, 2.5), cell * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for c, (name, images) in enumerate(columns):
        for r, image in enumerate(images):
            ax = axes[r][c]
            if image is None:
                ax.imshow(np.full((h, w, 3), 235, np.uint8))
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            else:
                ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
    _suptitle(fig, title)
    return fig


def s_tradeoff(sweep: pd.DataFrame, default_s: int, device: str, budget: str = "", reference: str | None = None,
               fid_noise: float | None = None) -> Figure:
    """Fig. 9 in numbers: (a) runtime of the full model per S relative to the default S, ours beside
    the paper's (Fig. 9 caption), absolute ms on the bars; (b) FID of every trial, with the band of
    the ``reference`` trial's FID ± the run-to-run noise (``fid_noise``) when it was measured."""
    fig, axes = _figure(2, width=5.6)
    ax = axes[0][0]
    full = sweep[sweep["variant"] == "full"].sort_values("S", ascending=False)
    base = full.loc[full["S"] == default_s, "runtime_ms"]
    if full.empty or base.empty or not base.notna().all():
        _note(ax, f"no full-model trial at the default S={default_s} to compare against")
    else:
        base_ms = float(base.iloc[0])
        roles = {s: ("default S" if s == default_s else "larger S" if s > default_s else "smaller S")
                 for s in full["S"]}
        nearest = {"larger S": min((s for s in roles if s > default_s), default=None),
                   "smaller S": max((s for s in roles if s < default_s), default=None), "default S": default_s}
        x = np.arange(len(full))
        ours = full["runtime_ms"].to_numpy() / base_ms
        bars = ax.bar(x - 0.2, ours, 0.4, color="C0", label=f"ours: {device}")
        for b, ms in zip(bars, full["runtime_ms"]):
            ax.annotate(_ms(ms), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
        paper_default = paper.PAPER_S_ABLATION_MS["default S"]
        labelled = False
        for i, s in enumerate(full["S"]):
            role = roles[s]
            if nearest.get(role) == s:
                ms = paper.PAPER_S_ABLATION_MS[role]
                b = ax.bar(i + 0.2, ms / paper_default, 0.4, color="0.25",
                           label=None if labelled else f"paper, {paper.PAPER_S_ABLATION_SIZE} ({paper.PAPER_DEVICE})")
                ax.annotate(_ms(ms), (i + 0.2, ms / paper_default), ha="center", va="bottom", fontsize=7)
                labelled = True
        ax.set_xticks(x, [f"S={s}\n({roles[s]})" for s in full["S"]], fontsize=8)
        ax.set(ylabel=f"runtime / runtime at default S={default_s}", xlabel="downsampling factor S",
               title="(a) runtime vs S (full model)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")

    ax = axes[0][1]
    scored = sweep[sweep["fid"].notna()] if "fid" in sweep else sweep.iloc[:0]
    if scored.empty:
        _note(ax, "no FID in metrics/sweep.csv")
    else:
        order = scored.sort_values(["variant", "S"])
        x = np.arange(len(order))
        colours = [f"C{list(VARIANT_NAMES).index(v) if v in VARIANT_NAMES else 7}" for v in order["variant"]]
        ax.bar(x, order["fid"], color=colours)
        ax.set_xticks(x, [f"{v}\nS={s}" for v, s in zip(order["variant"], order["S"])], fontsize=8)
        ref = order[order["trial"].astype(str) == reference] if reference and "trial" in order else order.iloc[:0]
        if fid_noise is not None and fid_noise == fid_noise and not ref.empty:
            centre = float(ref["fid"].iloc[0])
            ax.axhspan(centre - fid_noise, centre + fid_noise, color="0.5", alpha=0.25, zorder=0,
                       label=f"{reference} ± run-to-run noise ({fid_noise:.1f}, measured at the generators' budget)")
            ax.legend(fontsize=7, loc="lower right")
        ax.set(ylabel="FID (lower is better)", title="(b) FID per trial")
        ax.grid(True, axis="y", alpha=0.3)
    _suptitle(fig, "Fig. 9: the speed / quality trade-off of S and the ablations" + (f"\n{budget}" if budget else ""))
    return fig


def per_class_iou(wide: pd.DataFrame, names: list[str], title: str = "") -> Figure:
    """Fig. 11: IoU of each class vs its share of the test pixels (log scale), one series per
    generator (``wide``: tables.per_class_wide, columns iou_<name>), the real photos' IoU and the
    paper's 3% mark."""
    fig, axes = _figure(1, width=7.4, height=4.8)
    ax = axes[0][0]
    d = wide[wide["pixel_share"] > 0]
    share = d["pixel_share"] * 100
    for i, name in enumerate(names):
        ax.scatter(share, d[f"iou_{name}"], s=40 if i == 0 else 28, color=f"C{i}", marker="o" if i == 0 else "^",
                   label=f"generated: {name}", zorder=3)
    for _, r in d.iterrows():
        if r[f"iou_{names[0]}"] == r[f"iou_{names[0]}"]:
            ax.annotate(str(r["name"]), (r["pixel_share"] * 100, r[f"iou_{names[0]}"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    if d["real_iou"].notna().any():
        ax.scatter(share, d["real_iou"], s=40, facecolors="none", edgecolors="0.3",
                   label="real photos (segmenter ceiling)", zorder=2)
    ax.axvline(paper.PAPER_SMALL_CLASS_SHARE * 100, color="C3", linestyle="--",
               label=f"{paper.PAPER_SMALL_CLASS_SHARE:.0%} of the image (paper, Fig. 11)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: f"{x:g}%" if f"{x:g}"[0] in "235" else ""))
    shares = [*share, paper.PAPER_SMALL_CLASS_SHARE * 100]
    ax.set_xlim(min(shares) / 1.3, max(shares) * 1.5)  # room for the class names
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="class share of the test pixels (%, log scale)", ylabel="IoU")
    _suptitle(fig, "Fig. 11: per-class IoU vs class size" + (f"\n{title}" if title else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _ms(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms:.0f} ms"
