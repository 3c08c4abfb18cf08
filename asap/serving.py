"""A generator as a service: label maps in, images out, every request checked before it runs.

The library half of the served MLflow model (``pipelines/serving.py`` logs it, ``pipelines/serving_model.py``
is the MLflow side). No MLflow here: ``GeneratorService`` is plain numpy/torch, so the same checks and
the same forward serve `mlflow models serve`, a test, or any other server.

What a generator takes, at the size it was trained at (H x W from the checkpoint's meta):

    label maps        (N, H, W) int64 class indices 0..C-1 (255 too, for don't-care generators)
    + instance ids    (N, H, W) int64, for generators with an instance-edge channel (Cityscapes):
                      the inputs are then named {"labels": ..., "instances": ...}
    or images         (N, H, W, C) uint8, for image-input generators (NYU RGB -> depth)

and what it gives: (N, H, W, 3) uint8 RGB (``asap.images.to_uint8`` of the generator's [-1, 1] output).
A wrong dtype, shape, size or class value is a ``TranslateError`` naming the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asap.devices import resolve_device
from asap.images import to_uint8
from asap.infer import TranslateError
from asap.models.asapnet import ASAPNetGenerator
from asap.models.checkpoint import CheckpointError, load_generator
from asap.models.fast import PRECISIONS, FastGenerator, check_precision
from asap.models.inputs import DONTCARE_VALUE, instance_edges


@dataclass(frozen=True)
class TensorField:
    """One tensor the service takes or gives (a signature entry, framework-neutral)."""
    name: str | None        # None: the model takes a single unnamed tensor
    dtype: str              # numpy dtype name
    shape: tuple[int, ...]  # -1: any size (the batch)
    doc: str                # one line for people: what the values mean


class GeneratorService:
    """A generator checkpoint served at its trained size (``height`` x ``width`` override the meta's).

    On CUDA (``device="auto"`` picks it when present) ASAP-Net runs through ``FastGenerator``, as
    ``asap translate`` does; on the CPU through the reference path.
    """

    def __init__(self, checkpoint: str | Path, height: int | None = None, width: int | None = None,
                 device: str = "auto", precision: str = "fp32"):
        check_precision(precision)
        self.checkpoint = Path(checkpoint)
        model, self.meta = load_generator(self.checkpoint)  # CheckpointError for anything else
        self.height = int(height or self.meta.get("height") or 0)
        self.width = int(width or self.meta.get("width") or 0)
        if not (self.height > 0 and self.width > 0):
            raise CheckpointError(f"{self.checkpoint} records no trained size (meta 'height'/'width'); "
                                  "give the size to serve it at (height=, width=)")
        self.config = model.config
        self.device = resolve_device(device)
        model = model.to(self.device).eval()
        self.arch = type(model).__name__
        if isinstance(model, ASAPNetGenerator) and self.input_kind == "labels":
            self._run = FastGenerator(model, precision)
        else:
            dtype = PRECISIONS[precision][0]

            @torch.inference_mode()
            def run(x, edges=None):  # baselines, image inputs: autocast for reduced precision
                with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return model(x, edges)
            self._run = run

    # -- what it takes and gives ------------------------------------------------------------------

    @property
    def input_kind(self) -> str:
        return getattr(self.config, "input_kind", "labels")

    @property
    def needs_instances(self) -> bool:
        return self.input_kind == "labels" and bool(getattr(self.config, "instance_edge", False))

    def allowed_labels(self) -> str:
        c = self.config
        return f"0..{c.num_classes - 1}" + (f" and {DONTCARE_VALUE} (don't care)" if c.dontcare else "")

    @property
    def inputs(self) -> list[TensorField]:
        H, W, c = self.height, self.width, self.config
        if self.input_kind != "labels":
            return [TensorField(None, "uint8", (-1, H, W, c.num_classes),
                                f"images, {c.num_classes} channels 0..255, {H}x{W}")]
        labels = TensorField("labels" if self.needs_instances else None, "int64", (-1, H, W),
                             f"label maps: class indices {self.allowed_labels()}, {H}x{W}")
        if not self.needs_instances:
            return [labels]
        return [labels, TensorField("instances", "int64", (-1, H, W), f"instance ids, {H}x{W} (edges between ids)")]

    @property
    def output(self) -> TensorField:
        return TensorField(None, "uint8", (-1, self.height, self.width, self.config.out_channels),
                           f"images, RGB 0..255, {self.height}x{self.width}")

    def example(self) -> np.ndarray | dict[str, np.ndarray]:
        """A valid one-map request: horizontal bands of every class (and one instance per band)."""
        n = self.config.num_classes
        if self.input_kind != "labels":
            ramp = np.linspace(0, 255, self.width).astype(np.uint8)
            return np.broadcast_to(ramp[None, None, :, None], (1, self.height, self.width, n)).copy()
        bands = (np.arange(self.height) * n // self.height).astype(np.int64)
        labels = np.broadcast_to(bands[None, :, None], (1, self.height, self.width)).copy()
        return {"labels": labels, "instances": labels.copy()} if self.needs_instances else labels

    # -- checks -----------------------------------------------------------------------------------

    def _array(self, value, field: TensorField) -> np.ndarray:
        what = field.name or ("label maps" if self.input_kind == "labels" else "images")
        a = np.asarray(value)
        kind = "integer" if field.dtype == "int64" else "uint8"
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise TranslateError(f"{what} must be {kind} values ({field.doc}), got dtype {a.dtype}")
        expected = "(N, " + ", ".join(map(str, field.shape[1:])) + ")"
        if a.ndim != len(field.shape) or tuple(a.shape[1:]) != field.shape[1:] or a.shape[0] == 0:
            raise TranslateError(f"{what} must be {expected} ({field.doc}; this generator was trained at "
                                 f"{self.height}x{self.width}), got shape {tuple(a.shape)}")
        if kind == "uint8" and (a.min() < 0 or a.max() > 255):
            raise TranslateError(f"{what} must be 0..255, got values from {a.min()} to {a.max()}")
        return a

    def _check_labels(self, labels: np.ndarray) -> None:
        c = self.config
        ok = (labels >= 0) & (labels < c.num_classes)
        if c.dontcare:
            ok |= labels == DONTCARE_VALUE
        if not ok.all():
            values = np.unique(labels[~ok])
            shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
            maps = sorted(set(np.nonzero(~ok)[0].tolist()))
            where = f"map {maps[0]}" if len(maps) == 1 else f"maps {', '.join(map(str, maps[:10]))}"
            raise TranslateError(f"label values {shown} (in {where}, {int((~ok).sum())} pixels) are not classes of "
                                 f"this generator: {c.num_classes} classes, allowed {self.allowed_labels()}")

    def check(self, request) -> dict[str, np.ndarray]:
        """The request as {name: array}, every value checked; a TranslateError names the first problem."""
        fields = self.inputs
        if len(fields) == 1:
            if isinstance(request, dict):
                raise TranslateError(f"this generator takes one unnamed tensor ({fields[0].doc}), "
                                     f"got named inputs {sorted(request)}")
            arrays = {"": self._array(request, fields[0])}
        else:
            names = [f.name for f in fields]
            if not isinstance(request, dict) or sorted(request) != sorted(names):
                got = sorted(request) if isinstance(request, dict) else f"one {type(request).__name__}"
                raise TranslateError(f"this generator takes named inputs {names} (label maps and instance ids, "
                                     f"{self.height}x{self.width} each), got {got}")
            arrays = {f.name: self._array(request[f.name], f) for f in fields}
            if arrays["labels"].shape != arrays["instances"].shape:
                raise TranslateError(f"labels {arrays['labels'].shape} and instances {arrays['instances'].shape} "
                                     "must have the same shape")
        if self.input_kind == "labels":
            self._check_labels(arrays.get("labels", arrays.get("")))
        return arrays

    # -- the forward ------------------------------------------------------------------------------

    def translate(self, request) -> np.ndarray:
        """Check the whole request, then translate map by map: (N, H, W, 3) uint8."""
        arrays = self.check(request)
        main = arrays.get("labels", arrays.get(""))
        out = []
        for i in range(main.shape[0]):
            if self.input_kind == "labels":
                x = torch.from_numpy(main[i:i + 1].astype(np.int64)).to(self.device)        # (1, H, W)
            else:  # (1, H, W, C) uint8 -> (1, C, H, W) in [-1, 1], as the prepared data feeds training
                x = torch.from_numpy(main[i:i + 1]).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            edges = None
            if self.needs_instances:
                edges = instance_edges(torch.from_numpy(arrays["instances"][i:i + 1].astype(np.int64))).to(self.device)
            out.append(to_uint8(self._run(x, edges))[0])                                       # (H, W, 3)
        return np.stack(out)
