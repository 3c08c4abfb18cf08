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
- ``matmul_peak(device, precision)`` (asap.metrics.runtime, where training also records it): TFLOP/s of a
  large square matmul in bf16 or fp32 (TF32 off), timed here, the rate against which the counted FLOPs
  are read.

Imports only torch and asap (runs on the GPU machine).
"""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode

from asap.metrics.runtime import PEAK_SIZES, matmul_peak  # noqa: F401  (re-exported: the campaign's phases use it here)


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (a multiply-add counts 2), as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
