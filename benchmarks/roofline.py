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

Imports only torch (runs on the GPU machine).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

PEAK_SIZES = {"cuda": 8192, "cpu": 1024}  # square matmul side: seconds-scale on neither


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (a multiply-add counts 2), as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, precision: str, n: int | None = None, iters: int = 10) -> dict:
    """The device's rate on one n x n x n matmul (the median of ``iters`` after 3 warm-ups): "bf16"
    in bfloat16, "fp32" in float32 with TF32 off (as the fp32 rows run). {"tflops", "n", "ms",
    "precision", "timer"}."""
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
        for _ in range(3):
            a @ b
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iters)]
            for start, end in events:
                start.record()
                a @ b
                end.record()
            torch.cuda.synchronize(device)
            times = sorted(start.elapsed_time(end) / 1e3 for start, end in events)
            timer = "cuda_events"
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                a @ b
                times.append(time.perf_counter() - t0)
            times.sort()
            timer = "perf_counter"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    seconds = times[len(times) // 2]
    return {"precision": precision, "dtype": str(dtype).removeprefix("torch."), "n": n, "ms": seconds * 1e3,
            "tflops": 2 * n ** 3 / seconds / 1e12, "timer": timer}
