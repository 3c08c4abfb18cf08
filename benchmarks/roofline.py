"""What a measured time could be at best: the arithmetic a piece of work does, and the device's own
matrix-multiply rate measured in the same run.

A speed-up target means little without its ceiling. When our training step does fewer FLOPs than the
authors' (it runs G and D forward once where theirs runs them twice), the ratio of the two counts is
the speed-up at an equal rate of arithmetic: where both steps run near the device's matmul rate, it
is the most there is. A step goes past it only by running nearer that rate than the other (the
authors' eager step at batch 1 on a big GPU is bound by its kernel launches, far below it), and the
fraction of the matmul rate each step reaches says which it is.

- ``count_flops(fn)``: FLOPs of one call, counted by torch.utils.flop_counter (matrix multiplies and
  convolutions, forward and backward, as the shapes of what actually ran say; elementwise work and
  Triton kernels are not seen by it).
- ``matmul_peak(device, precision)``: TFLOP/s of a large square matmul in bf16 or fp32 (TF32 off), timed
  here, the rate against which the counted FLOPs are read.

Imports only torch and asap (runs on the GPU machine).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from asap.metrics.runtime import time_module

PEAK_SIZES = {"cuda": 8192, "cpu": 1024}  # square matmul side: seconds-scale on neither


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (a multiply-add counts 2), as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, precision: str, n: int | None = None, iters: int = 10) -> dict:
    """The device's rate on one n x n x n matmul (asap.metrics.runtime.time_module's median of ``iters``
    after 3 warm-ups): "bf16" in bfloat16, "fp32" in float32 with TF32 off (as the fp32 rows run).
    {"tflops", "n", "ms", "precision", "dtype", "timer"}."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    device = torch.device(device)
    n = n or PEAK_SIZES.get(device.type, 1024)
    dtype = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)  # random, never zeros
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        # at the caller's CPU threads (e.g. benchmarks.training --threads), as the steps beside it run
        t = time_module(lambda: a @ b, warmup=3, iters=iters, device=device, threads=torch.get_num_threads())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    seconds = t["median_ms"] / 1e3
    return {"precision": precision, "dtype": str(dtype).removeprefix("torch."), "n": n, "ms": seconds * 1e3,
            "tflops": 2 * n ** 3 / seconds / 1e12, "timer": t["timer"]}
