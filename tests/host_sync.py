"""What a CUDA graph cannot hold, found on the CPU: a record of the aten ops a function runs.

A captured step (train.cuda_graph) must not read a device value on the host (``.item()``, ``bool(t)``,
a boolean mask, ``nonzero``, ``.tolist()``, ``.cpu()``: a sync, an error while a graph is recorded),
must not copy Python data to the device (``torch.tensor(...)``: a pageable host-to-device copy), and
replays every Python number it was recorded with: a scalar argument that changes from step to step
(a learning rate passed as a float) would be frozen at its value at capture. ``StepRecorder`` sees all
three on the CPU: every op through PyTorch's dispatcher with its non-tensor arguments, and the Tensor
methods that read back without dispatching on a CPU tensor.

Also a script: ``python tests/host_sync.py --fused`` runs ASAP-Net's training step through the fused
Triton MLP (set ``TRITON_INTERPRET=1``: it must be set before the kernel is imported, and must not
leak into the test process) and prints the host reads it found as JSON.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read a device value on the host (or copy Python data in): what a capture refuses
HOST_READ_OPS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten.masked_select",
                 "aten.allclose", "aten.equal", "aten.lift_fresh", "aten._unique", "aten._unique2",
                 "aten.unique_dim", "aten.unique_consecutive", "aten.bincount", "aten.histc"}
# Tensor methods that read back without an aten op on a CPU tensor
HOST_READ_METHODS = ("tolist", "numpy", "cpu")


def _scalars(value):
    """The non-tensor leaves of an op's arguments (numbers, bools, strings, dtypes, devices)."""
    if isinstance(value, torch.Tensor):
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(s for v in value for s in _scalars(v))
    if isinstance(value, dict):
        return tuple((k, _scalars(v)) for k, v in sorted(value.items()))
    if value is None or isinstance(value, (bool, int, float, complex, str, torch.dtype, torch.device,
                                           torch.layout, torch.memory_format)):
        return (value,)
    return (type(value).__name__,)  # e.g. a profiler's record: its identity is not a value the graph keeps


class StepRecorder(TorchDispatchMode):
    """``with StepRecorder() as rec: fn()``: ``rec.ops`` lists (op, its non-tensor arguments) in order;
    ``rec.host_reads`` the ops and methods among them a CUDA graph cannot hold."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []
        self.host_reads: list[str] = []
        self._saved = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name.startswith("profiler."):  # the optimisers' record_function markers, not work
            return func(*args, **kwargs)
        self.ops.append((name, _scalars(args) + _scalars(kwargs)))
        if name in HOST_READ_OPS or (name == "aten.repeat_interleave" and "output_size" not in kwargs
                                     and isinstance(args[0], torch.Tensor) and len(args) == 1):
            self.host_reads.append(name)
        elif name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None):
            self.host_reads.append(f"{name} (boolean mask)")
        return func(*args, **kwargs)

    def __enter__(self):
        for method in HOST_READ_METHODS:
            original = self._saved[method] = getattr(torch.Tensor, method)

            def reading(tensor, *a, _name=method, _original=original, **k):
                self.host_reads.append(f"Tensor.{_name}")
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, method, reading)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)
        self._saved = {}
        return super().__exit__(*exc)


def changing_scalars(a: StepRecorder, b: StepRecorder) -> list[str]:
    """Where two records of the same step differ: an op whose Python arguments changed (a graph would
    replay the first), or a different sequence of ops (the step's control flow depends on its data)."""
    if [op for op, _ in a.ops] != [op for op, _ in b.ops]:
        first = next(i for i, (x, y) in enumerate(zip(a.ops + [("end", ())], b.ops + [("end", ())])) if x[0] != y[0])
        return [f"op {first}: {a.ops[first][0] if first < len(a.ops) else 'end'} then "
                f"{b.ops[first][0] if first < len(b.ops) else 'end'} (different op sequences)"]
    return [f"op {i}: {x[0]} {x[1]} then {y[1]}" for i, (x, y) in enumerate(zip(a.ops, b.ops)) if x[1] != y[1]]


def _fused_step() -> dict:
    """ASAP-Net's training step (perceptual loss off: it does not touch the kernel) through the fused MLP
    in Triton's interpreter: the host reads it makes."""
    from asap.engine import TrainConfig
    from asap.losses import GANLossConfig
    from asap.models.asapnet import asapnet
    from asap.training import TrainingRun, build_trainer

    size, classes = 32, 5
    generator = asapnet(classes, size, size, lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=16)
    run = TrainingRun(name="t", arch="asapnet", generator=generator.config.to_dict(),
                      train=TrainConfig(steps=10, ndf=8, d_layers=2), loss=GANLossConfig(perceptual="off"),
                      dataset="synthetic", data_root="")
    trainer = build_trainer(run)
    trainer.generator.fused_mlp = True  # an error, not a fallback, if the kernel cannot run
    gen = torch.Generator().manual_seed(0)
    batch = {"label": torch.randint(0, classes, (1, size, size), generator=gen),
             "image": torch.rand(1, 3, size, size, generator=gen) * 2 - 1}
    trainer.set_learning_rates()
    x, real = trainer.inputs(batch)
    hr = x[:, :trainer.generator.config.hr_in_channels]
    with StepRecorder() as rec:
        trainer.update(x, real)
    return {"fused": trainer.generator.uses_fused_mlp(hr), "ops": len(rec.ops), "host_reads": rec.host_reads}


if __name__ == "__main__":
    if sys.argv[1:] != ["--fused"]:
        sys.exit("usage: TRITON_INTERPRET=1 python tests/host_sync.py --fused")
    print(json.dumps(_fused_step()))
