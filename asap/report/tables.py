"""The report's tables: rows of reports/README.md and of the `dvc plots` series, shaped from the
tables of asap.report.inputs.

Every number printed comes from an input file, or, labelled "paper", from asap.report.paper. Where a
file does not record something (a commit, a training device) the table says "not recorded" rather
than guessing. Plain pandas: a notebook can print the same tables.
"""

from __future__ import annotations

import math

import pandas as pd

from asap.report import paper
from asap.report.inputs import stages
from asap.report.noise import METRICS, NOT_MEASURED, WITHIN, SeedNoise, not_measured, within

NOT_RECORDED = "not recorded"
NOISE_SIGMAS = 2.0  # a KID difference within 2 sigma of the subset noise counts as not significant


# ----------------------------------------------------------------------------------------------
# Cells
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


def pm(mean, std, digits: int = 4) -> str:
    """"mean ± std"; "n/a" when the mean is missing."""
    return "n/a" if not _present(mean) else f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def span(values: pd.Series, digits: int = 0) -> str:
    """"lo–hi" of a column, or the one value when all are equal."""
    lo, hi = fmt(values.min(), digits), fmt(values.max(), digits)
    return lo if lo == hi else f"{lo}–{hi}"


def _present(value) -> bool:
    return value is not None and value == value and value != ""


def commit(sha: str) -> str:
    return sha[:10] if _present(sha) and sha != "unknown" else NOT_RECORDED


def allocator_label(policy) -> str:
    """asap.metrics.runtime's allocator policy, short: "steady allocator", "default allocator"; "" when not
    recorded (GPU runtimes, older files)."""
    if not _present(policy):
        return ""
    return str(policy).split(" (")[0].removeprefix("glibc ") + " allocator"


def runtime_device(row) -> str:
    """Where and how a generator's batch-1 runtime was measured: "cpu, 2 threads, steady allocator",
    "nvidia-h200"."""
    if not _present(row["runtime_device"]):
        return NOT_RECORDED
    threads = row["runtime_threads"]
    allocator = allocator_label(row.get("runtime_allocator"))
    return (row["runtime_device"] + (f", {threads_label(threads)}" if row["runtime_device"] == "cpu" and
                                     _present(threads) else "") + (f", {allocator}" if allocator else ""))


def threads_label(n) -> str:
    """"1 thread", "2 threads"."""
    return f"{float(n):.0f} thread" + ("" if float(n) == 1 else "s")


HOST_SPREAD = 1.25  # runs' host matmul rates further apart than this ratio are called out (on a quiet machine
                   # the rate repeats within a few percent; a shared VM's moves more, sample to sample)


def trained_on(row) -> str:
    """Where a generator trained, with its host's matmul rate then where recorded: "cpu, matmul 0.214
    TFLOP/s"."""
    where = row["train_device"] or NOT_RECORDED
    rate = row.get("host_matmul_tflops")
    return where + (f", matmul {fmt(rate, 3)} TFLOP/s" if _present(rate) else "")


def _rates_note(runs: pd.DataFrame, label: str, key: str, subject: str, what: str, column: str | None,
                missing: str) -> tuple[str, float]:
    """The host matmul rates of column ``key`` of ``runs`` (each named by its ``label`` column) as text:
    ``subject`` (e.g. "the host's matmul rate each run trained at") with ``what`` they are, listed (or,
    with ``column``, pointing to the table's column of that name), the runs without one named with
    ``missing`` (why); and how far apart they are (max / min; NaN when fewer than two or a zero).
    ("", NaN) when no run recorded one."""
    rates = runs[key] if key in runs else pd.Series(dtype=float)
    if not rates.notna().any():
        return "", math.nan
    names = runs[label].astype(str)
    if column:
        text = f"*{column}*: {subject} ({what})."
    else:
        shown = ", ".join(f"{n} {fmt(r, 3)}" for n, r in zip(names, rates) if _present(r))
        text = f"{subject[0].upper()}{subject[1:]} ({what}): {shown}."
    absent = [n for n, r in zip(names, rates) if not _present(r)]
    if absent:
        text += f" Not recorded for {', '.join(absent)} ({missing})."
    lo, hi = float(rates.min()), float(rates.max())
    return text, (hi / lo if lo > 0 and rates.notna().sum() > 1 else math.nan)


def host_note(runs: pd.DataFrame, label: str, time_budget: bool, column: str | None = None) -> str:
    """How fast each run's host was as it trained (``host_matmul_tflops``, asap.engine's record_host; runs
    named by their ``label`` column; with ``column``, the table's column of that name shows the rates
    and the note only says what they are), and a plain warning when runs under a time budget
    (``time_budget``) trained at rates more than HOST_SPREAD apart; "" when no run recorded one."""
    text, spread = _rates_note(runs, label, "host_matmul_tflops", "the host's matmul rate each run trained at",
                               "TFLOP/s in the step's precision; the mean of one sample before a session's first "
                               "step and one after its last, each in the run's host_history", column,
                               "trained before runs recorded it")
    if time_budget and spread > HOST_SPREAD:
        text += (f" **The hosts ran at different speeds ({spread:.2f}x apart)**: under a time budget the run on "
                 "the slower host took fewer steps, so part of a difference between them is the machine's.")
    return text


def runtime_host_note(runs: pd.DataFrame, label: str, column: str | None = None) -> str:
    """How fast the host was as each runtime was timed (``runtime_host_matmul_tflops``: the evaluate stage's
    and the sweep's asap.metrics.runtime.with_host_rate), as ``host_note`` says it for training, and a
    plain warning when the runtimes were timed at rates more than HOST_SPREAD apart; "" when none recorded."""
    text, spread = _rates_note(runs, label, "runtime_host_matmul_tflops", "the host's matmul rate as each runtime "
                               "was timed", "fp32 TFLOP/s at the runtime's threads; the mean of one sample just "
                               "before the timing and one just after", column, "timed before runtimes recorded it")
    if spread > HOST_SPREAD:
        text += (f" **The host ran at different speeds as the runtimes were timed ({spread:.2f}x apart)**: part of "
                 "a difference in runtime between them is the machine's.")
    return text


def timed_on(row) -> str:
    """Where a generator's runtime was timed, with the host's matmul rate then where recorded:
    "cpu, 2 threads, steady allocator, matmul 0.190 TFLOP/s"."""
    rate = row.get("runtime_host_matmul_tflops")
    return runtime_device(row) + (f", matmul {fmt(rate, 3)} TFLOP/s" if _present(rate) else "")


def budget(row) -> str:
    """A generator's training budget: "180 s" (a time budget) or "steps" (none: the steps decided)."""
    return f"{row['time_budget_s']:g} s" if _present(row["time_budget_s"]) else "steps only"


def point_label(row) -> str:
    """A Fig. 6 point: the generator's name (a repeat: which seed of which generator) and the
    training it got."""
    trained = f"{fmt(row['steps'], 0)} steps" + (f", {row['train_seconds']:.0f} s" if _present(row["train_seconds"])
                                                 else "")
    return f"{generator_name(row)}\n{trained}"


def generator_name(row) -> str:
    """"asapnet", or for a `repeat:` entry "asapnet-seed1 (seed 1 of asapnet)"."""
    if row.get("role") == "repeat" and row.get("repeat_of"):
        seed = f"seed {row['seed']:.0f}" if _present(row.get("seed")) else "another seed"
        return f"{row['name']} ({seed} of {row['repeat_of']})"
    return str(row["name"])


# ----------------------------------------------------------------------------------------------
# Runtime benchmarks (Fig. 1, 1b, 4, 8)
# ----------------------------------------------------------------------------------------------

def benchmark_table(bench: pd.DataFrame) -> str:
    return md_table(
        ["device", "model", "size", "median ms", "p10 ms", "p90 ms", "low-res ms", "pixelwise ms", "params (M)"],
        [[r.device, r.model, r.size, fmt(r.median_ms), fmt(r.p10_ms), fmt(r.p90_ms), fmt(r.lr_ms), fmt(r.hr_ms),
          fmt(r.params / 1e6)] for r in bench.itertuples()])


def host_span(start, end) -> str:
    """A benchmark file's host matmul rates before its first row and after its last: "0.190 / 0.172"."""
    return f"{fmt(start, 3)} / {fmt(end, 3)}" if _present(start) else NOT_RECORDED


def benchmark_provenance(bench: pd.DataFrame) -> str:
    """Which machine and commit measured each benchmark file, with how many iterations."""
    files = bench.drop_duplicates("file")
    return md_table(["file", "measured on", "commit", "timed iterations (warm-up)",
                     "host matmul TFLOP/s before / after"],
                    [[f"`metrics/{r.file}`", r.device, commit(r.commit), f"{fmt(r.iters, 0)} ({fmt(r.warmup, 0)})",
                      host_span(getattr(r, "host_start", None), getattr(r, "host_end", None))]
                     for r in files.itertuples()])


def paper_runtime_table() -> str:
    return md_table(["device", "model", "size", "ms", "where the paper says so"],
                    [[paper.PAPER_DEVICE, "ASAP-Net", s, fmt(ms, 1), "Sec. 1 and Fig. 2 caption"]
                     for s, ms in paper.PAPER_ASAPNET_MS.items()])


def speedup_table(bench: pd.DataFrame) -> str:
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


def inference_table(inference: pd.DataFrame) -> str:
    # "low-res ms": the low-res stream timed apart (GPU campaign); "PyTorch norms": the same stream with
    # torch's InstanceNorm + ReLU instead of the fast path's norm kernels, in the same run
    # "wide convs": whether the fast path ran the low-res stream's 1024-wide convs as cuDNN convolutions
    # or cuBLAS GEMMs, as it chose by timing both (the stream's two times); "kernels": which Triton
    # kernels a fast row ran (a campaign whose phase 1 failed a check turns them off: PyTorch's then)
    return md_table(["device", "size", "path", "kernels", "precision", "median ms", "p10 ms", "p90 ms", "MLP ms",
                     "low-res ms", "low-res ms, PyTorch norms", "wide convs", "max abs diff", "measured"],
                    [[r.device, r.size, r.path, "n/a" if r.path == "reference" else (r.note or "none"),
                      r.precision, fmt(r.median_ms), fmt(r.p10_ms), fmt(r.p90_ms),
                      fmt(r.mlp_ms), fmt(r.lowres_ms), fmt(r.lowres_torch_norm_ms), r.wide_convs or "n/a",
                      fmt(r.max_abs_diff, 4), r.created or NOT_RECORDED]
                     for r in inference.itertuples()])


def fast_path_speedups(inference: pd.DataFrame) -> str:
    """Per run (file), size and precision: the fast path against the reference timed in the same run,
    fp32 and same precision (benchmarks/inference.py, the GPU campaign's phase 2)."""
    rows = []
    for file, d in inference.groupby("file", sort=False):
        ref = {(r.size, r.precision): r.median_ms for r in d[d["path"] == "reference"].itertuples()}
        for r in d[d["path"] != "reference"].itertuples():
            fp32, same = ref.get((r.size, "fp32"), math.nan), ref.get((r.size, r.precision), math.nan)
            rows.append([r.device, r.size, f"{r.path} ({r.precision})", fmt(r.median_ms, 3), fmt(fp32, 3),
                         fmt(fp32 / r.median_ms), fmt(same / r.median_ms), f"`metrics/{file}`"])
    if not rows:
        return ""
    return ("Speed-up of the fast path over the reference generator, both timed in the same run (batch 1, "
            "medians):\n\n" + md_table(["device", "size", "path", "ms", "reference fp32 ms", "speed-up vs fp32",
                                          "speed-up vs same precision", "file"], rows))


def stream_table(split: pd.DataFrame) -> str:
    return md_table(["device", "size", "low-res ms", "pixelwise ms", "end to end ms", "low-res %"],
                    [[r.device, r.size, fmt(r.lr_ms), fmt(r.hr_ms), fmt(r.median_ms),
                      fmt(100 * r.lr_ms / (r.lr_ms + r.hr_ms), 1)] for r in split.itertuples()])


def slim_table(bench: pd.DataFrame) -> str:
    d = bench[~bench["fast"].astype(bool)]
    return md_table(["device", "model", "arch", "width", "params (M)", "size", "median ms"],
                    [[r.device, r.model, r.arch, fmt(r.width_mult), fmt(r.params / 1e6, 3), r.size, fmt(r.median_ms)]
                     for r in d.itertuples()])


def runtime_series(bench: pd.DataFrame, models: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dvc plots series of Fig. 1 (median ms per size, a column per model) and Fig. 4 (ASAP-Net's
    stream split), from the primary benchmark file (the first read)."""
    # one file and one device label (a campaign file holds one per precision): sizes stay unique per model
    primary = bench[(bench["file"] == bench["file"].iloc[0]) & (bench["device"] == bench["device"].iloc[0])] \
        if not bench.empty else bench
    wide = primary.drop_duplicates("size").sort_values("megapixels")[["size", "megapixels"]].copy()
    for model in models:
        wide[model] = wide["size"].map(primary[primary["model"] == model].set_index("size")["median_ms"])
    split = primary[(primary["arch"] == "asapnet") & primary["lr_ms"].notna()].drop_duplicates("size")
    return wide, split[["size", "megapixels", "lr_ms", "hr_ms", "median_ms"]].sort_values("megapixels")


# ----------------------------------------------------------------------------------------------
# Generators: quality vs runtime (Fig. 6, 8), budget, noise, provenance
# ----------------------------------------------------------------------------------------------

def _evaluated(gens: pd.DataFrame) -> pd.DataFrame:
    return gens[gens["has_eval"].astype(bool)]


DIGITS_OF = {"fid": 1, "kid_mean": 4, "pixel_acc": 3, "miou": 3}


def differences(row, ref, noise: dict[str, float]) -> str:
    """"FID +10.5 (within seed noise), KID +0.0012, ...": ``row`` minus ``ref`` per metric, each
    marked when it is no larger than the run-to-run noise (``noise``: asap.report.noise.pooled)."""
    parts = []
    for m, label in METRICS.items():
        d = row[m] - ref[m]
        if not _present(d):
            continue
        parts.append(f"{label} {d:+.{DIGITS_OF[m]}f}" + (f" ({WITHIN})" if within(d, noise.get(m)) else ""))
    return ", ".join(parts)


def versus(row, ref, noise: dict[str, float] | None = None, unmeasured: str = NOT_MEASURED) -> str:
    """How ``row`` compares with the reference generator: each metric's difference, marked "within
    seed noise" when no larger than the measured run-to-run noise (``noise``); and whether KID's
    difference exceeds NOISE_SIGMAS x its subset spread (the noise from which test images are scored).
    ``unmeasured``: what to say when there is no noise (asap.report.noise.not_measured)."""
    noise = noise or {}
    if row["name"] == ref["name"]:
        return "reference"
    if row.get("role") == "repeat" and row.get("repeat_of") == ref["name"]:
        return f"second seed of {ref['name']}: {differences(row, ref, {})} = the run-to-run noise"
    head = differences(row, ref, noise)
    if not head:
        return "n/a"
    marks = [within(row[m] - ref[m], noise.get(m)) for m in METRICS if _present(row[m] - ref[m])]
    if noise and marks and all(marks):
        head += f"; every difference {WITHIN}"
    elif not noise:
        head += f"; {unmeasured}"
    d_kid, subset = row["kid_mean"] - ref["kid_mean"], math.hypot(row["kid_std"], ref["kid_std"])
    if _present(d_kid) and _present(subset) and abs(d_kid) <= NOISE_SIGMAS * subset:
        head += f"; KID also within ±{NOISE_SIGMAS * subset:.4f} of its subset spread"
    return head


def quality_table(gens: pd.DataFrame, reference: str, noise: dict[str, float] | None = None) -> str:
    """Fig. 6's table: a row per generator (evaluated or not; a repeat as its generator's second
    seed), quality beside its floor, runtime with its device, the training budget it got (steps,
    seconds, device), and its differences to the reference marked against the run-to-run noise."""
    ref = _evaluated(gens)
    ref = ref[ref["name"] == reference]
    ref = ref.iloc[0] if not ref.empty else None
    unmeasured = not_measured(gens)
    rows = []
    for _, r in gens.iterrows():
        if not r["has_eval"]:
            verdict = (f"not evaluated: `dvc repro {stages(r['name'], r['role'])[1]}`" if r["role"] != "other"
                       else "not evaluated (not in params.yaml)")
        else:
            verdict = versus(r, ref, noise, unmeasured) if ref is not None else "n/a"
        runtime = (f"{fmt(r['runtime_ms'])} ({fmt(r['runtime_p10_ms'])}–{fmt(r['runtime_p90_ms'])})"
                   if _present(r["runtime_ms"]) else "n/a")
        trained = r["has_eval"] or r["has_train"] or r["has_checkpoint"]
        # a repeat: which seed of which generator (the arch is that generator's)
        name = generator_name(r) if r["role"] == "repeat" else f"{r['name']} ({r['arch']})"
        rows.append([name, fmt(r["params"] / 1e6, 2), fmt(r["fid"], 1),
                     fmt(r["floor_fid"], 1), pm(r["kid_mean"], r["kid_std"]),
                     pm(r["floor_kid_mean"], r["floor_kid_std"]),
                     fmt(r["pixel_acc"], 3), fmt(r["miou"], 3), runtime,
                     timed_on(r) if r["has_eval"] else "n/a", fmt(r["steps"], 0), fmt(r["train_seconds"], 0),
                     budget(r) if trained else "n/a", trained_on(r) if trained else "n/a",
                     r["stopped_by"] or "n/a", verdict])
    return md_table(["generator", "params (M)", "FID", "floor FID", "KID ± std", "floor KID ± std", "pixel acc",
                     "mIoU", "runtime ms (p10–p90)", "runtime on", "steps", "train s", "budget", "trained on",
                     "stopped by", f"vs {reference}"], rows)


def budget_facts(gens: pd.DataFrame, reference: dict) -> dict:
    """The budget the evaluated generators got, where they were timed, and its share of the
    paper-like profile's steps (``reference``: inputs.read_reference_budget); {} without evals."""
    ev = _evaluated(gens)
    if ev.empty:
        return {}
    runtime = sorted(set(runtime_device(r) for _, r in ev.iterrows()))
    ref_steps = reference.get("steps")
    share = float(ev["steps"].max()) / float(ref_steps) if ref_steps and ev["steps"].notna().any() else math.nan
    return {"budgets": sorted(set(budget(r) for _, r in ev.iterrows())),
            "steps": ", ".join(f"{r['name']} {fmt(r['steps'], 0)}" for _, r in ev.iterrows()),
            "batches": sorted(set(fmt(b, 0) for b in ev["global_batch"])),
            "train_devices": sorted(set(d for d in ev["train_device"] if d)), "runtime": runtime,
            "images": fmt(ev["num_images"].max(), 0), "datasets": sorted(set(ev["dataset"]) - {""}),
            "max_steps": fmt(ev["steps"].max(), 0), "share": share, "reference": reference,
            "quick": share < 0.1, "on_cpu": all(d.startswith("cpu") for d in runtime)}


def budget_line(gens: pd.DataFrame, reference: dict) -> str:
    """Two lines for a figure title: the training budget and steps, where runtime was measured, and a
    plain warning when the budget is a quick one."""
    f = budget_facts(gens, reference)
    if not f:
        return ""
    trained = ", ".join(f["train_devices"]) or "a device not recorded"
    line = (f"training budget {' / '.join(f['budgets'])} each on {trained} (steps: {f['steps']}); runtime batch 1 "
            f"on {', '.join(f['runtime'])}; {f['images']} test images")
    if f["quick"]:
        line += (f"\nQUICK{' CPU' if f['on_cpu'] else ''} BUDGET: {f['share']:.1%} of the steps of "
                 f"{f['reference']['file']}; far from the paper's numbers")
    return line


def budget_note(gens: pd.DataFrame, reference: dict) -> str:
    """What the compared generators were trained with (Fig. 6's section), pointing to the warning
    when that is a quick budget."""
    f = budget_facts(gens, reference)
    if not f:
        return ""
    devices = f["train_devices"] or [NOT_RECORDED + " in the train files"]
    text = (f"**Budget.** Training budget per generator: {' / '.join(f['budgets'])} (global batch "
            f"{', '.join(f['batches'])}); steps reached: {f['steps']}. Training device: {', '.join(devices)}. "
            f"Runtime: batch 1 on {', '.join(f['runtime'])}; quality on {f['images']} test images of "
            f"{', '.join(f['datasets']) or 'the dataset'}.")
    ev = _evaluated(gens)
    for host in (host_note(ev, "name", bool(ev["time_budget_s"].notna().any())), runtime_host_note(ev, "name")):
        if host:
            text += " " + host
    if len(f["budgets"]) > 1:
        text += " **The generators got different budgets: this is not an equal-budget comparison.**"
    if len(f["runtime"]) > 1:
        text += (" **Runtimes were measured on different devices, thread counts or allocator policies: they do "
                 "not compare.**")
    if not f["reference"]:
        text += " No paper-like profile was found to compare this budget with."
    elif f["quick"]:
        text += (f" That is {f['share']:.1%} of the steps of {f['reference']['file']}: a quick budget (see the top "
                 "of this page).")
    return text


def quick_warning(gens: pd.DataFrame, reference: dict) -> str:
    """The README's opening warning when the compared generators got a quick budget; "" otherwise."""
    f = budget_facts(gens, reference)
    if not f or not f["quick"]:
        return ""
    profile = f["reference"]["file"]
    return (f"**The comparisons below rest on a quick{' CPU' if f['on_cpu'] else ''} budget**: "
            f"{' / '.join(f['budgets'])} of training per generator, at most {f['max_steps']} steps, "
            f"{f['share']:.1%} of the {f['reference']['steps']} steps of {profile}, the paper-like profile; "
            f"runtime on {', '.join(f['runtime'])}. Their numbers are far from the paper's and do not say which "
            "generator is better when trained to convergence; for paper-like numbers run "
            f"`python -m pipelines.profile {profile} --run` on GPUs.")


def noise_note(gens: pd.DataFrame, noises: dict[str, SeedNoise] | None = None) -> str:
    """What the differences in Fig. 6's table are judged against: the run-to-run noise when a
    `repeat:` entry measured it (else a plain "not measured"), and KID's subset spread."""
    ev = _evaluated(gens)
    if ev.empty:
        return ""
    r = ev.iloc[0]
    kid = (f"KID's ± is its standard deviation over {fmt(r['kid_subsets'], 0)} random subsets of "
           f"{fmt(r['kid_subset_size'], 0)} of the {fmt(r['num_images'], 0)} test images: the spread from which "
           "images are scored, not from training; a KID difference within "
           f"{NOISE_SIGMAS:g} x sqrt(std_a² + std_b²) is noted too.")
    if not noises:
        why = not_measured(gens)
        return (f"**Noise.** {why[0].upper() + why[1:]}: no generator config has two evaluated seeds, so no "
                f"difference here is known to exceed training noise. {kid}")
    parts = []
    for n in noises.values():
        spread = ", ".join(f"{METRICS[m]} {fmt(v, DIGITS_OF[m] + 1)}" for m, v in n.spread.items() if _present(v))
        parts.append(f"{n.generator} trained {len(n.runs)} times with one config and budget, seeds "
                     f"{', '.join(fmt(x, 0) for x in n.seeds)} ({', '.join(n.runs)}; {n.budget()}): "
                     f"|difference| {spread}")
    return (f"**Run-to-run noise.** {'; '.join(parts)} (noise/seed-noise.json). A difference between generators "
            f"no larger than it is marked *{WITHIN}*: not shown to be more than training luck. Two seeds are one "
            "sample of that noise, and it was measured on one generator at this budget: read differences a little "
            f"above it as unproven too. {kid}")


def noise_table(gens: pd.DataFrame, noises: dict[str, SeedNoise]) -> str:
    """Each repeated generator's runs side by side, with the spread of each metric (the noise)."""
    rows = []
    for n in noises.values():
        runs = gens.set_index("name").loc[n.runs]
        for m, label in METRICS.items():
            rows.append([n.generator, label, *(f"{fmt(runs.loc[name, m], DIGITS_OF[m] + 1)} (seed "
                                                f"{fmt(runs.loc[name, 'seed'], 0)})" for name in n.runs),
                         fmt(n.spread[m], DIGITS_OF[m] + 1)])
    width = max(len(n.runs) for n in noises.values())
    return md_table(["generator", "metric", *(f"run {i + 1}" for i in range(width)), "noise (max − min)"],
                    [r[:-1] + [""] * (width + 3 - len(r)) + r[-1:] for r in rows])


def floor_note(gens: pd.DataFrame) -> str:
    ev = _evaluated(gens)
    ev = ev[ev["floor_fid"].notna()]
    if ev.empty:
        return "The real-versus-real FID floor is not in the eval files: re-run the evaluate stages."
    floors = ev.drop_duplicates(["floor_fid", "floor_num_images"])
    values = "; ".join(f"FID {fmt(r['floor_fid'], 1)}, KID {fmt(r['floor_kid_mean'], 4)} ± "
                       f"{fmt(r['floor_kid_std'], 4)} ({fmt(r['floor_num_images'], 0)} vs "
                       f"{fmt(r['floor_num_images'], 0)} photos)" for _, r in floors.iterrows())
    return (f"**Floor.** Real photos held out from the train split scored against the test photos with the same "
            f"protocol: {values}. On this few images FID is biased far above 0 even for real photos: read every "
            "generated FID against this line, not against 0.")


def ceiling_note(gens: pd.DataFrame) -> str:
    ev = _evaluated(gens)
    ev = ev[ev["real_pixel_acc"].notna()]
    if ev.empty:
        return ""
    c = ev.iloc[0]
    return (f"Real test photos through the same segmenter (the ceiling): pixel accuracy "
            f"{fmt(c['real_pixel_acc'], 3)}, mIoU {fmt(c['real_miou'], 3)}.")


def provenance_table(gens: pd.DataFrame) -> str:
    """Which files, runs and commits each generator's numbers come from."""
    rows = [[r["name"], fmt(r["seed"], 0), f"`{r['train_file']}`" if r["train_file"] else "n/a",
             f"`{r['eval_file']}`" if r["eval_file"] else "n/a", r["run_name"] or NOT_RECORDED,
             r["mlflow_run_id"] or NOT_RECORDED, commit(r["train_commit"]), commit(r["eval_commit"]),
             r["train_device"] or NOT_RECORDED, runtime_device(r) if r["has_eval"] else "n/a"]
            for _, r in gens.iterrows()]
    return md_table(["generator", "train seed", "train file", "eval file", "training run", "MLflow run",
                     "training commit", "eval commit", "trained on", "runtime measured on"], rows)


SERIES_COLUMNS = ["name", "label", "arch", "repeat_of", "seed", "runtime_ms", "fid", "fid_floor", "kid_mean",
                  "kid_std", "kid_floor", "pixel_acc", "miou", "steps", "train_seconds", "time_budget_s",
                  "runtime_device"]


def quality_series(gens: pd.DataFrame) -> pd.DataFrame:
    """reports/plots/quality_vs_runtime.csv: a row per evaluated generator (dvc.yaml's Fig. 6 plots)."""
    ev = _evaluated(gens)
    out = pd.DataFrame({"name": ev["name"], "label": [point_label(r).replace("\n", ", ") for _, r in ev.iterrows()],
                        "arch": ev["arch"], "repeat_of": ev["repeat_of"], "seed": ev["seed"],
                        "runtime_ms": ev["runtime_ms"], "fid": ev["fid"],
                        "fid_floor": ev["floor_fid"], "kid_mean": ev["kid_mean"], "kid_std": ev["kid_std"],
                        "kid_floor": ev["floor_kid_mean"], "pixel_acc": ev["pixel_acc"], "miou": ev["miou"],
                        "steps": ev["steps"], "train_seconds": ev["train_seconds"],
                        "time_budget_s": ev["time_budget_s"], "runtime_device": ev["runtime_device"]})
    return out[SERIES_COLUMNS]


# ----------------------------------------------------------------------------------------------
# The sweep (Fig. 9) and per-class IoU (Fig. 11)
# ----------------------------------------------------------------------------------------------

SWEEP_COLUMNS = ("trial", "variant", "S", "steps", "train_seconds", "host_matmul_tflops", "runtime_ms", "lr_ms",
                 "hr_ms", "runtime_host_matmul_tflops", "fid", "kid_mean", "pixel_acc", "miou")
HEADERS = {"runtime_ms": "runtime ms", "lr_ms": "low-res ms", "hr_ms": "pixelwise ms", "fid": "FID",
           "kid_mean": "KID", "pixel_acc": "pixel acc", "miou": "mIoU", "train_seconds": "train s",
           "host_matmul_tflops": "train host TFLOP/s", "runtime_host_matmul_tflops": "runtime host TFLOP/s"}
DIGITS = {"runtime_ms": 2, "lr_ms": 2, "hr_ms": 2, "fid": 2, "kid_mean": 4, "pixel_acc": 3, "miou": 3,
          "train_seconds": 0, "host_matmul_tflops": 3, "runtime_host_matmul_tflops": 3}


def sweep_table(sweep: pd.DataFrame, reference: str | None = None, noise: dict[str, float] | None = None,
                unmeasured: str = NOT_MEASURED) -> str:
    """metrics/sweep.csv's trials; with ``reference`` (a trial name) a column of each trial's
    differences to it, marked against the run-to-run noise (``noise``) as in Fig. 6's table, or saying
    ``unmeasured`` (asap.report.noise.not_measured) without one."""
    cols = [c for c in SWEEP_COLUMNS if c in sweep]
    records = sweep.to_dict("records")
    ref = next((r for r in records if str(r.get("trial")) == reference), None)
    rows = []
    for r in records:
        row = [fmt(r[c], DIGITS[c]) if c in DIGITS else r[c] for c in cols]
        if ref is not None:
            if r is ref:
                row.append("reference")
            else:
                diff = differences({m: r.get(m, math.nan) for m in METRICS}, {m: ref.get(m, math.nan) for m in METRICS},
                                   noise or {})
                row.append((diff or "n/a") + ("" if noise else f"; {unmeasured}"))
        rows.append(row)
    return md_table([HEADERS.get(c, c) for c in cols] + ([f"vs {reference}"] if ref is not None else []), rows)


def sweep_noise_note(sweep: pd.DataFrame, meta: dict, noises: dict[str, SeedNoise], gens: pd.DataFrame) -> str:
    """How the sweep's differences are judged: against the run-to-run noise measured on the generators
    (at their budget, which the trials may not share: said plainly), or "not measured"."""
    if not noises:
        return (f"One seed per trial and {not_measured(gens)}: FID differences between trials are not known to "
                "exceed training noise.")
    runs = gens[gens["name"].isin([r for n in noises.values() for r in n.runs])]
    noise_budget = sorted(set(budget(r) for _, r in runs.iterrows()))
    noise_images = sorted(set(fmt(v, 0) for v in runs["num_images"].dropna()))
    trial_budget = f"{meta['time_budget_s']:g} s" if meta.get("time_budget_s") else "steps only"
    trial_images = sorted(set(fmt(v, 0) for v in sweep["num_images"].dropna())) if "num_images" in sweep else []
    text = (f"One seed per trial; differences to the reference trial are marked *{WITHIN}* against the run-to-run "
            f"noise of {', '.join(noises)} (Fig. 6).")
    if [trial_budget] != noise_budget or (trial_images and trial_images != noise_images):
        text += (f" **The trials had another budget than the one that noise was measured at**: {trial_budget} of "
                 f"training and {', '.join(trial_images) or '?'} test images per trial, against "
                 f"{' / '.join(noise_budget)} and {', '.join(noise_images) or '?'} test images for the two seeds. "
                 "Shorter training and fewer test images make the noise larger, so the trials' own noise is likely "
                 "above the one used here: a difference marked as exceeding it may still be noise.")
    return text


def sweep_budget(sweep: pd.DataFrame, meta: dict, train_devices: list[str] | None = None) -> str:
    """One line: the budget every trial got (and where it trained, ``train_devices``, from the trials'
    checkpoints), the images it was scored on, where it was timed."""
    budget_s = meta.get("time_budget_s")
    steps = sweep["steps"] if "steps" in sweep else pd.Series(dtype=float)
    seconds = sweep["train_seconds"] if "train_seconds" in sweep else pd.Series(dtype=float)
    cap = f"{budget_s:g} s of training per trial" if budget_s else f"{meta.get('steps', '?')} steps per trial"
    reached = f"steps reached {span(steps)}" if steps.notna().any() else "steps reached not recorded"
    if seconds.notna().any():
        reached += f" in {span(seconds)} s"
    images = sweep["num_images"].max() if "num_images" in sweep else math.nan
    device = sorted(set(sweep.get("runtime_device", pd.Series(dtype=str)).dropna().astype(str))) or [NOT_RECORDED]
    threads = sweep["runtime_threads"].dropna() if "runtime_threads" in sweep else pd.Series(dtype=float)
    allocators = sorted(set(allocator_label(a) if _present(a) else "allocator not recorded"
                            for a in sweep.get("runtime_allocator", pd.Series([None] * len(sweep)))))
    timed = (", ".join(device) + (f", {threads_label(threads.max())}" if not threads.empty else "")
             + (f", {' / '.join(allocators)}" if allocators else ""))
    trained = f" on {', '.join(train_devices)}" if train_devices else ""
    return f"{cap}{trained}, {reached}; FID on {fmt(images, 0)} test images; runtime on {timed}"


def paper_s_table() -> str:
    return md_table(["trial", "S", "ms"],
                    [[role, str(paper.PAPER_S_ABLATION_DEFAULT_S) if role == "default S" else "not stated", fmt(ms, 1)]
                     for role, ms in paper.PAPER_S_ABLATION_MS.items()])


def per_class_wide(per_class: dict[str, pd.DataFrame], order: list[str]) -> pd.DataFrame:
    """One row per class: pixel share, the first generator's IoU as `iou` (dvc.yaml's Fig. 11 plot),
    every generator's as `iou_<name>`, and the real photos' as `real_iou`."""
    names = [n for n in order if n in per_class]
    if not names:
        return pd.DataFrame(columns=["class", "name", "pixel_share", "iou", "real_iou"])
    first = per_class[names[0]]
    wide = first[["class", "name", "pixel_share", "iou", "real_iou"]].copy()
    for n in names:
        wide[f"iou_{n}"] = wide["class"].map(per_class[n].set_index("class")["iou"])
    return wide


def per_class_table(wide: pd.DataFrame, names: list[str]) -> str:
    rows = [[r["name"], fmt(100 * r["pixel_share"], 2), *(fmt(r[f"iou_{n}"], 3) for n in names), fmt(r["real_iou"], 3)]
            for _, r in wide.sort_values("pixel_share", ascending=False).iterrows()]
    return md_table(["class", "pixel share %", *(f"IoU {n}" for n in names), "real-photo IoU"], rows)


def default_s(sweep: pd.DataFrame, height: int, width: int) -> int:
    """The sweep's default S: the S of its ablation trials (they run at the default), else Sec. 3.2."""
    from asap.models.asapnet import default_downsampling

    ablations = sweep[sweep["variant"] != "full"]
    return int(ablations["S"].iloc[0]) if not ablations.empty else default_downsampling(height, width)


# ----------------------------------------------------------------------------------------------
# dvc plots series
# ----------------------------------------------------------------------------------------------

def plot_series(inputs, models: list[str]) -> dict[str, pd.DataFrame]:
    """reports/plots/<name>.csv for dvc.yaml `plots:`, every column dvc.yaml names present even when
    a table is empty (DVC rejects a plot whose column is missing, but draws an empty one)."""
    wide, split = runtime_series(inputs.benchmark, models)
    names = [n for n in inputs.evals["name"] if n in inputs.per_class]
    return {"runtime_vs_resolution": wide, "asapnet_streams": split,
            "quality_vs_runtime": quality_series(inputs.generators),
            "per_class_iou": per_class_wide(inputs.per_class, names)}
