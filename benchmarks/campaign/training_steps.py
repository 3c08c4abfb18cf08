"""Phase 3: training-step time of ours against the authors' way of writing the step (their layout: one-hot
input, full-resolution encoding, unfold-based MLP; their step: G and D forward twice, D's weight
gradients twice: benchmarks.training.AuthorsStep), at each size, batch and precision, in the same run.

Both trainers come from asap.training.build_trainer (benchmarks/training.py), with the paper's widths
(lr_max_width 1024, ndf 64) and the offline perceptual trunk. "bf16" is the trainer's autocast,
"fp32" switches it (and TF32) off. On CUDA "ours" runs the generator's pixelwise MLP in the fused
Triton kernel, forward and backward (ASAPNetGenerator.fused_mlp "auto"). The issue's target: ours >= 2x
the authors' way at equal batch and resolution; each row states its speedup, the generator's forward +
backward alone (where only the layout differs), the generator's share of the authors' step and what a
free generator alone would gain there (our step's structure and a graph gain outside the generator);
``targets`` gives the worst of each. Where phase 1 verified it, ours is also
timed with the whole step (G and D forward, backward, both Adam updates) replayed as one CUDA graph
(train.cuda_graph, "ours_graphed"): at batch 1 the eager step is bound by its kernel launches. In the
precisions of ``settings.channels_last`` (bf16) ours is also timed with the perceptual network in the
channels-last layout (train.perceptual_channels_last, "ours_channels_last"): the frozen VGG is a large
part of the step's convolutions, and tensor cores take NHWC. Before the steps,
``pixelwise`` times the pixelwise MLP alone, forward + backward, three ways (reference layout, the
authors' layout, the fused kernel) with the peak memory each adds.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch

from benchmarks.campaign.common import log
from benchmarks.campaign.settings import TrainingStepSettings
from benchmarks.roofline import matmul_peak
from benchmarks.training import TrainBenchSettings, measure, measure_pixelwise, step_kernels


def _measure_each(settings: TrainingStepSettings, until: float, prefix: str, measure_one, out: list,
                  skipped: list, progress, device: torch.device, fused_env: dict | None = None) -> None:
    """``measure_one(size, batch, precision)`` for every size, batch and precision of ``settings`` into
    ``out`` (an error becomes the row's "error"); labels past ``until`` go to ``skipped``.
    ``fused_env``: {precision: ASAP_FUSED_MLP} set before each row of that precision (and recorded)."""
    for size_text in settings.sizes:
        size = tuple(int(v) for v in size_text.split("x"))
        for batch in settings.batches:
            for precision in settings.precisions:
                label = f"{prefix}{size_text} batch {batch} {precision}"
                if time.perf_counter() > until:
                    skipped.append(label)
                    continue
                t0 = time.perf_counter()
                fused = (fused_env or {}).get(precision)
                if fused is not None:
                    os.environ["ASAP_FUSED_MLP"] = fused
                try:
                    row = measure_one(size, batch, precision)
                except Exception as err:
                    row = {"size": size_text, "batch": batch, "precision": precision,
                           "error": f"{type(err).__name__}: {str(err)[:400]}"}
                    log(f"[phase 3] {label}: ERROR {row['error'][:200]}")
                row["wall_s"] = round(time.perf_counter() - t0, 2)
                if fused is not None:
                    row["asap_fused_mlp"] = fused
                out.append(row)
                progress()
                if device.type == "cuda":
                    torch.cuda.empty_cache()


def profile_steps(rows: list[dict], settings: TrainingStepSettings, bench: TrainBenchSettings, device: torch.device,
                  until: float, fused_env: dict | None, progress) -> None:
    """Where our eager step's time goes, for the timed rows of the profiled sizes and precisions, after
    every timing and in a child process (benchmarks/campaign/breakdown.py ``in_child``): a fresh
    trainer per row (benchmarks.training.step_kernels), its profile in the row as ``ours["kernels"]``;
    a row the child did not reach says why there instead."""
    from benchmarks.campaign.breakdown import in_child, profiled

    todo = [r for r in rows if "error" not in r and r["size"] in settings.profile_sizes
            and r["precision"] in settings.profile_precisions]
    if not todo:
        return
    job = {"bench": asdict(bench), "device": str(device), "iters": settings.profile_iters,
           "rows": [{"size": r["size"], "batch": r["batch"], "precision": r["precision"],
                     "fused": (fused_env or {}).get(r["precision"])} for r in todo]}
    got = in_child("benchmarks.campaign.training_steps:profile_job", job, until)
    for r in todo:
        r["ours"]["kernels"] = profiled(got, profile_key(r))
    progress()


def profile_job(job: dict, emit) -> dict:
    """The child's side of ``profile_steps``: {"<size>/<batch>/<precision>": kernels}, emitted row by row."""
    from benchmarks.campaign.breakdown import describe, profile_rows

    bench, device = TrainBenchSettings(**job["bench"]), torch.device(job["device"])
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the timed rows ran

    def measure(row):
        size = tuple(int(v) for v in row["size"].split("x"))
        k = step_kernels(size, row["batch"], row["precision"], bench, device, job["iters"])
        return k, describe(k)

    return profile_rows(job["rows"], emit, key=profile_key,
                        label=lambda row: f"[phase 3] {row['size']} batch {row['batch']} {row['precision']} ours "
                                          "(an eager step)", measure=measure)


def profile_key(row: dict) -> str:
    """A profiled step row's key in the child's result."""
    return f"{row['size']}/{row['batch']}/{row['precision']}"


def run_phase(settings: TrainingStepSettings, device: torch.device, until: float, on_progress=None,
              fused_env: dict | None = None, graphed: bool = False) -> dict:
    """The rows; ``fused_env``: {precision: ASAP_FUSED_MLP}, phase 1's verdict for each (the campaign's);
    ``graphed``: ours also with the whole step replayed as one CUDA graph (phase 1 verified it)."""
    bench = TrainBenchSettings(iters=settings.iters, warmup=settings.warmup, lr_max_width=settings.lr_max_width,
                               ndf=settings.ndf, perceptual=settings.perceptual)
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    rows, skipped, pixelwise = [], [], []
    # the device's matmul rate per precision, in this run: what each row's FLOP rate is read against (~0.1 s)
    peaks = {p: matmul_peak(device, p, n=settings.peak_n) for p in settings.precisions}
    log("[phase 3] matmul peak: " + ", ".join(f"{p} {v['tflops']:.1f} TFLOP/s" for p, v in peaks.items()))

    def progress():
        if on_progress:
            on_progress({"matmul_peak": peaks, "pixelwise": pixelwise, "rows": rows, "skipped_for_time": skipped})

    def pixelwise_row(size, batch, precision):
        row = measure_pixelwise(size, batch, precision, device, iters=settings.iters, warmup=settings.warmup,
                                deadline=rows_until)
        log(f"[phase 3] pixelwise {row['size']} batch {batch} {precision}: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items())
            + (f" (fused {row['fused_vs_authors']:.2f}x the authors' way)" if row["fused_vs_authors"] else ""))
        return row

    def step_row(size, batch, precision):
        return measure(size, batch, precision, bench, device, deadline=rows_until,
                       log=lambda m: log(m.replace("[bench-train]", "[phase 3]")), graphed=graphed,
                       peak=peaks[precision], channels_last=precision in settings.channels_last)

    profiling = bool(settings.profile_iters and settings.profile_sizes and settings.profile_precisions)
    rows_until = until - (settings.profile_reserve_s if profiling else 0.0)
    try:
        # First the pixelwise MLP alone (seconds): what the fused backward changes, without the
        # discriminator and the perceptual network around it; then the whole GAN step; last, apart from
        # every timing, where our step's time goes (its own reserve of the phase's time)
        _measure_each(settings, rows_until, "pixelwise ", pixelwise_row, pixelwise, skipped, progress, device,
                      fused_env)
        _measure_each(settings, rows_until, "", step_row, rows, skipped, progress, device, fused_env)
        if profiling:
            profile_steps(rows, settings, bench, device, until, fused_env, progress)
    finally:
        torch.backends.cudnn.benchmark = saved
    good = [r for r in rows if "error" not in r]
    fp32_authors = {(r["size"], r["batch"]): r["authors_way"]["images_per_s"] for r in good if r["precision"] == "fp32"}
    for r in good:  # ours in bf16 against the authors' fp32 step (their code has no mixed precision)
        if r["precision"] == "bf16" and (r["size"], r["batch"]) in fp32_authors:
            r["speedup_vs_authors_fp32"] = r["ours"]["images_per_s"] / fp32_authors[(r["size"], r["batch"])]
    worst_row = min(good, key=lambda r: r.get("speedup_best", r["speedup"]), default=None)
    worst = worst_row.get("speedup_best", worst_row["speedup"]) if worst_row else None
    worst_g = min((r["generator_speedup"] for r in good), default=None)
    bound = min((r["generator_alone_bound"] for r in good if r.get("generator_alone_bound")), default=None)
    worst_p = min((r["fused_vs_authors"] for r in pixelwise if r.get("fused_vs_authors")), default=None)
    return {"settings_bench": asdict(bench), "matmul_peak": peaks, "pixelwise": pixelwise, "rows": rows,
            "skipped_for_time": skipped,
            "targets": {
                # ours: the fastest of the eager step, the step replayed as one CUDA graph and the
                # step with the perceptual network channels-last
                "ours >= 2x the authors' way at equal batch, size and precision (worst row)": {
                    "measured": worst, "target": 2.0, "met": None if worst is None else worst >= 2.0,
                    # a generator alone, were ours free, would gain 1 / (1 - its share of the authors'
                    # step); our step's structure (one forward of G and of D) gains on top of that
                    "generator_alone_bound": bound,
                    "worst_row": worst_row and (f"{worst_row['size']} batch {worst_row['batch']} "
                                                f"{worst_row['precision']}"),
                    "bound": worst_row and worst_row.get("flop_ratio"),
                    "bound_is": "x at an equal FLOP rate: the worst row's FLOP ratio, authors' / ours, the "
                                "speed-up where both steps run at one rate of arithmetic; past it only by running "
                                "nearer the matmul rate than the authors' step"},
                "generator forward+backward: ours >= 2x the authors' way (worst row)": {
                    "measured": worst_g, "target": 2.0, "met": None if worst_g is None else worst_g >= 2.0},
                "pixelwise MLP forward+backward: fused >= 2x the authors' way (worst row)": {
                    "measured": worst_p, "target": 2.0, "met": None if worst_p is None else worst_p >= 2.0}}}
