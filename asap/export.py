"""Export a generator to ONNX or a torch.export program that runs without this project.

    asap export models/asapnet/generator.pt                        # -> models/asapnet/generator.onnx
    asap export models/spade/generator.pt --format pt2 --out spade.pt2
    asap export latest_net_G.pth --out cityscapes.onnx --num-classes 35 --instance-edge

The exported file takes the label map itself and does the one-hot encoding inside:

    input   labels     int64 (N, H, W) class indices 0..C-1 (and 255 for "don't care" when the
                       generator has that channel)
            instances  int64 (N, H, W) instance ids, only for generators trained with instance edges
                       (the edge map is computed inside, as pix2pixHD's)
            (a generator of images, input_kind "image", takes "input" float32 (N, C, H, W) instead)
    output  image      float32 (N, out_channels, H, W) in [-1, 1] (tanh); (x + 1) * 127.5 gives 0..255

Accepted sizes: any batch N >= 1 (dynamic); H and W dynamic, each a multiple of the generator's
size divisor (ASAP-Net: S, its tile; pix2pixHD: 2^n_downsampling = 16; SPADE: 2^5 = 32 for "normal")
and at least twice it. The trained size (e.g. 256x256) is the one the weights saw. The ONNX file
refuses other input, in the graph itself, through nodes named after the rule that failed, e.g.
ONNX Runtime's ``... Reshape node. Name:'height_must_be_a_multiple_of_16' ... Input shape:{1,250,256}``
or ``... Gather node. Name:'label_values_must_be_0_to_12' ... idx=13`` (a negative value v shows as
idx=v-C there, C the number of classes). The pt2 file fails with torch's
``Guard failed: labels.size()[1] % 16 == 0`` and ``label values must be 0..12``.

Both files carry their description: ONNX ``metadata_props`` (``InferenceSession(...).get_modelmeta()
.custom_metadata_map``), pt2 an ``asap_export.json`` extra file (``torch.export.load(path,
extra_files={"asap_export.json": ""})``): arch, classes, sizes, value range, source checkpoint and its
SHA-1, tolerance. After writing, the command runs the file (ONNX Runtime on the CPU, or
``torch.export.load``) on label maps at the trained size and at another accepted size, compares with
the PyTorch generator and fails when the largest absolute difference exceeds ``--tolerance``
(default 1e-4 on the [-1, 1] output). Measured on the real facades test maps by
``pytest tests/test_export.py -s``: ONNX Runtime vs PyTorch 4.7e-6 for ASAP-Net (60 maps), 3.3e-7
for SPADE (20 maps); pt2 2.6e-6 for ASAP-Net. Nothing is written to OUT unless that check passes;
an existing OUT is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from asap.config import UserError
from asap.files import atomic_path, file_sha1
from asap.models.checkpoint import arch_of, load_generator
from asap.models.inputs import DONTCARE_VALUE

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
TOLERANCE = 1e-4           # max |exported - PyTorch| on the [-1, 1] output, both fp32 on the CPU
METADATA_FILE = "asap_export.json"  # the pt2 extra file holding the description


class ExportError(UserError, ValueError):
    """A generator cannot be exported, or its export does not reproduce it; the message says why."""


# ----------------------------------------------------------------------------------------------
# The exported module: label map in, image out
# ----------------------------------------------------------------------------------------------

def size_divisor(model: nn.Module) -> int:
    """The multiple both sides must be: S for ASAP-Net (one MLP per S x S tile), 2^depth for the baselines."""
    config = model.config
    return config.downsampling if arch_of(model) == "asapnet" else config.size_divisor


def edge_map(instances: torch.Tensor) -> torch.Tensor:
    """(N, H, W) instance ids -> (N, 1, H, W) float, 1 where a 4-neighbour differs (pix2pixHD's edges),
    written with pads instead of in-place slices so that it exports."""
    dx = (instances[:, :, 1:] != instances[:, :, :-1]).float()  # (N, H, W-1)
    dy = (instances[:, 1:, :] != instances[:, :-1, :]).float()  # (N, H-1, W)
    edges = F.pad(dx, (1, 0)) + F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 1, 0)) + F.pad(dy, (0, 0, 0, 1))
    return (edges > 0).float()[:, None]


class LabelMapGenerator(nn.Module):
    """A generator with its input encoding inside: (N, H, W) class indices [+ instance ids] -> image.

    The one-hot encoding is a row lookup in a (classes, channels) identity table (ONNX Gather), so a
    value outside 0..C-1 is an error of the runtime rather than a silently empty one-hot pixel;
    negative values are shifted below -C first, since Gather would otherwise wrap them around.
    Don't-care pixels (255) take the last channel's row aside from the lookup, so that the value C
    stays an error. ``check_values`` adds an explicit assertion (kept by torch.export; the ONNX
    exporter has no assertion op).
    """

    def __init__(self, generator: nn.Module, check_values: bool = False):
        super().__init__()
        self.generator = generator
        self.config = config = generator.config
        self.check_values = check_values
        channels = config.num_classes + int(config.dontcare)
        self.register_buffer("onehot_table", torch.eye(config.num_classes, channels), persistent=False)
        self.register_buffer("dontcare_row", torch.eye(channels)[-1].clone(), persistent=False)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.check_values:
            ok = (labels >= 0) & (labels < c.num_classes)
            if c.dontcare:
                ok = ok | (labels == DONTCARE_VALUE)
            torch._assert_async(ok.all(), f"label values must be {allowed_values(c)}")
        index = labels
        if c.dontcare:
            dontcare = labels == DONTCARE_VALUE
            index = torch.where(dontcare, torch.zeros_like(index), index)
        index = torch.where(index < 0, index - c.num_classes, index)
        onehot = F.embedding(index, self.onehot_table)  # (N, H, W, channels)
        if c.dontcare:
            onehot = torch.where(dontcare[..., None], self.dontcare_row, onehot)
        return onehot.permute(0, 3, 1, 2)  # (N, channels, H, W)

    def forward(self, labels: torch.Tensor, instances: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.input_kind != "labels":
            return self.generator(labels)  # already a float (N, C, H, W) image
        x = self.encode(labels)
        if self.config.instance_edge:
            x = torch.cat([x, edge_map(instances)], dim=1)
        return self.generator(x)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W as the mean of row means: two short float32 sums instead of one of H*W terms."""
    return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)


class RowMeanInstanceNorm(nn.Module):
    """``nn.InstanceNorm2d`` (no running statistics) with its mean and variance taken as means of row
    means (``spatial_mean``), for the ONNX graph. ONNX Runtime's CPU reductions over a whole 256x256
    channel (its InstanceNormalization op, or one ReduceMean over H*W) are less precise than torch's:
    the ASAP-Net output on the 60 facades test maps then differed from PyTorch by up to 5.8e-4
    (pix2pixHD 1.5e-4), while PyTorch float32 is within 4e-6 of float64. Through row means the
    difference is 4.7e-6 (pix2pixHD 4.6e-6)."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias  # the same parameters (None without affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - spatial_mean(x)
        y = centred * torch.rsqrt(spatial_mean(centred.square()) + self.eps)
        if self.weight is not None:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y


def with_row_mean_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose InstanceNorm2d modules are ``RowMeanInstanceNorm`` (the same function;
    the ONNX graph gets ReduceMean ops over W, then H, instead of InstanceNormalization)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
                setattr(parent, name, RowMeanInstanceNorm(child))
    return model


def allowed_values(config) -> str:
    return f"0..{config.num_classes - 1}" + (f" or {DONTCARE_VALUE}" if config.dontcare else "")


def input_names(config) -> list[str]:
    if config.input_kind != "labels":
        return ["input"]
    return ["labels", "instances"] if config.instance_edge else ["labels"]


def sample_inputs(config, batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Label maps of blocky random classes (8x8 blocks, closer to real maps than per-pixel noise)
    [+ instance ids], or random images in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    if config.input_kind != "labels":
        return (torch.rand(batch, config.num_classes, height, width, generator=gen) * 2 - 1,)

    def blocks(n):
        small = torch.randint(0, n, (batch, -(-height // 8), -(-width // 8)), generator=gen)
        return small.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :height, :width].contiguous()
    labels = blocks(config.num_classes)
    if config.dontcare:
        labels[:, :8, :8] = DONTCARE_VALUE
    return (labels, blocks(50)) if config.instance_edge else (labels,)


def dynamic_shapes(config, divisor: int) -> tuple[dict, ...]:
    """Dynamic batch; H = divisor * h, W = divisor * w with h, w >= 2 (the smallest grid every
    architecture runs on, and torch.export's own lower bound for a dynamic size)."""
    batch, h, w = torch.export.Dim("batch", min=1), torch.export.Dim("h", min=2), torch.export.Dim("w", min=2)
    first = 1 if config.input_kind == "labels" else 2  # (N, H, W) labels, (N, C, H, W) images
    dims = {0: batch, first: divisor * h, first + 1: divisor * w}
    return (dims,) * len(input_names(config))


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------

def _add_input_checks(proto, config, divisor: int) -> None:
    """Put the size rules in front of the graph as Reshapes that fail when broken, each named after
    its rule (ONNX has no assertion op; ONNX Runtime names the failing node in its error), and name
    the one-hot Gather after the value rule. Every check's output feeds the model, so no runtime
    prunes it."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    main = graph.input[0].name
    h_axis = 1 if config.input_kind == "labels" else 2
    rank = 3 if config.input_kind == "labels" else 4

    def const(name, values):
        graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def dim(shape, axis, out):  # 1-element int64 tensor: the size of one axis
        return helper.make_node("Slice", [shape, const(f"check_axis_{axis}", [axis]),
                                          const(f"check_axis_{axis}_end", [axis + 1])], [out])

    least = 2 * divisor
    before = [f"check_dim_{i}" for i in range(rank)]
    nodes = [helper.make_node("Shape", [main], ["check_shape"])]
    nodes += [dim("check_shape", i, before[i]) for i in range(rank)]
    nodes.append(helper.make_node("Max", [before[h_axis], const("check_least", [least])], ["check_h_least"]))
    nodes.append(helper.make_node("Max", [before[h_axis + 1], "check_least"], ["check_w_least"]))
    # 1. H >= least: reshape to the same shape with H replaced by max(H, least)
    dims = list(before)
    dims[h_axis] = "check_h_least"
    nodes += [helper.make_node("Concat", dims, ["check_target_1"], axis=0),
              helper.make_node("Reshape", [main, "check_target_1"], ["checked_1"],
                               name=f"height_must_be_at_least_{least}")]
    dims = list(before)
    dims[h_axis + 1] = "check_w_least"
    nodes += [helper.make_node("Concat", dims, ["check_target_2"], axis=0),
              helper.make_node("Reshape", ["checked_1", "check_target_2"], ["checked_2"],
                               name=f"width_must_be_at_least_{least}")]
    # 2. H % divisor == 0: (..., H, W) -> (..., -1, divisor, W); then W: (..., -1, divisor, -1, divisor)
    lead = [0] * h_axis
    nodes += [helper.make_node("Concat", [const("check_split_h", lead + [-1, divisor]), before[h_axis + 1]],
                               ["check_target_3"], axis=0),
              helper.make_node("Reshape", ["checked_2", "check_target_3"], ["checked_3"],
                               name=f"height_must_be_a_multiple_of_{divisor}"),
              helper.make_node("Reshape", ["checked_3", const("check_split_w", lead + [0, 0, -1, divisor])],
                               ["checked_4"], name=f"width_must_be_a_multiple_of_{divisor}"),
              helper.make_node("Reshape", ["checked_4", "check_shape"], [f"{main}_checked"])]
    if config.input_kind == "labels" and config.instance_edge:
        nodes.append(helper.make_node("Reshape", ["instances", "check_shape"], ["instances_checked"],
                                      name="instances_must_have_the_shape_of_labels"))
    renamed = {main: f"{main}_checked", "instances": "instances_checked"}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        if node.op_type == "Gather" and node.input[0].endswith("onehot_table"):
            node.name = f"label_values_must_be_{allowed_values(config).replace('..', '_to_').replace(' ', '_')}"
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)


def export_onnx(wrapper: LabelMapGenerator, path: Path, metadata: dict, divisor: int) -> None:
    import onnx

    config = wrapper.config
    example = sample_inputs(config, 2, 2 * divisor * 2, 2 * divisor * 2)
    # the exporter's progress lines, and its note that inputs sharing an axis keep one axis name
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        program = torch.onnx.export(wrapper, example, input_names=input_names(config), output_names=["image"],
                                    dynamo=True, external_data=False, verbose=False,
                                    dynamic_shapes=dynamic_shapes(config, divisor))
    proto = program.model_proto
    _add_input_checks(proto, config, divisor)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    proto.doc_string = metadata["description"]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def run_onnx(path: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(["image"], {n: x.numpy() for n, x in zip(names, inputs)})[0]


# ----------------------------------------------------------------------------------------------
# torch.export (pt2)
# ----------------------------------------------------------------------------------------------

def export_pt2(wrapper: LabelMapGenerator, path: Path, metadata: dict, divisor: int) -> None:
    config = wrapper.config
    example = sample_inputs(config, 2, 2 * divisor * 2, 2 * divisor * 2)
    program = torch.export.export(wrapper, example, dynamic_shapes=dynamic_shapes(config, divisor))
    torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})


def run_pt2(path: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    module = torch.export.load(path).module()
    with torch.no_grad():
        return module(*inputs).numpy()


# ----------------------------------------------------------------------------------------------
# Export + check
# ----------------------------------------------------------------------------------------------

def trained_size(meta: dict, divisor: int) -> tuple[int, int]:
    """The size in the checkpoint's metadata, else 256x256 (authors' files record none), rounded up
    to an accepted size."""
    fit = lambda n: max(2 * divisor, -(-int(n) // divisor) * divisor)  # noqa: E731
    return fit(meta.get("height", 256)), fit(meta.get("width", 256))


def describe(model: nn.Module, meta: dict, checkpoint: Path, divisor: int, tolerance: float) -> dict:
    config = model.config
    H, W = trained_size(meta, divisor)
    names = input_names(config)
    if config.input_kind == "labels":
        inputs = (f"labels: int64 (N, H, W) class indices {allowed_values(config)}"
                  + ("; instances: int64 (N, H, W) instance ids" if config.instance_edge else ""))
    else:
        inputs = f"input: float32 (N, {config.num_classes}, H, W) in [-1, 1]"
    sizes = f"N >= 1; H and W multiples of {divisor}, each >= {2 * divisor}"
    trained = f"{H}x{W}" if "height" in meta and "width" in meta else "unknown (not in the checkpoint)"
    return {
        "description": f"{arch_of(model)} generator exported by `asap export`: {inputs} -> image: float32 "
                       f"(N, {config.out_channels}, H, W) in [-1, 1]; {sizes}; trained at {trained}",
        "arch": arch_of(model),
        "inputs": ", ".join(names),
        "input_spec": inputs,
        "output": "image",
        "output_spec": f"float32 (N, {config.out_channels}, H, W), tanh",
        "value_range": "[-1, 1]",
        "num_classes": str(config.num_classes),
        "label_values": allowed_values(config) if config.input_kind == "labels" else "",
        "dontcare": str(bool(getattr(config, "dontcare", False))).lower(),
        "instance_edge": str(bool(getattr(config, "instance_edge", False))).lower(),
        "accepted_sizes": sizes,
        "size_multiple": str(divisor),
        "min_size": str(2 * divisor),
        "trained_size": trained,
        "dataset": str(meta.get("dataset", "")),
        "config": json.dumps(config.to_dict()),
        "source_checkpoint": checkpoint.name,
        "source_sha1": file_sha1(checkpoint),
        "tolerance": str(tolerance),
        "exporter": f"asap export, torch {torch.__version__}",
    }


def export(checkpoint: str | Path, out: str | Path | None = None, fmt: str = "onnx", overwrite: bool = False,
           tolerance: float = TOLERANCE, **authors_overrides) -> tuple[Path, float]:
    """Export ``checkpoint`` to ``out`` (default: beside it, ``.onnx`` / ``.pt2``), check it against
    PyTorch; returns (path, max abs difference). ``authors_overrides`` as for ``load_generator``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.with_suffix(FORMATS[fmt])
    other = {s: f for f, s in FORMATS.items()}.get(out.suffix)
    if other not in (None, fmt):
        raise ExportError(f"{out} ends in {out.suffix}, the suffix of --format {other}, but the format is {fmt}: "
                          f"name it *{FORMATS[fmt]} or pass --format {other}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ExportError(f"tolerance must be a number > 0, got {tolerance!r}")
    model, meta = load_generator(checkpoint, **authors_overrides)
    model = model.float().eval()
    divisor = size_divisor(model)
    metadata = describe(model, meta, checkpoint, divisor, tolerance)
    reference = LabelMapGenerator(model).eval()  # the generator as PyTorch runs it, to check against
    wrapper = (LabelMapGenerator(with_row_mean_norms(model)) if fmt == "onnx" else
               LabelMapGenerator(model, check_values=True)).eval()

    H, W = trained_size(meta, divisor)
    # the trained size at batch 2, and batch 1 at another size: both dynamic axes are exercised
    checks = [sample_inputs(model.config, 2, H, W, seed=1),
              sample_inputs(model.config, 1, H + divisor, 2 * W if W < 1024 else W - divisor, seed=2)]
    with atomic_path(out, suffix=FORMATS[fmt]) as tmp:
        try:
            (export_onnx if fmt == "onnx" else export_pt2)(wrapper, tmp, metadata, divisor)
        except Exception as err:  # an op the exporter cannot translate, a shape it cannot make dynamic
            raise ExportError(f"torch could not export {checkpoint} ({metadata['arch']}) to {fmt}: "
                              f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}") from err
        error = 0.0
        for inputs in checks:
            try:
                got = (run_onnx if fmt == "onnx" else run_pt2)(tmp, inputs)
            except Exception as err:
                raise ExportError(f"the exported {fmt} file does not run on a {tuple(inputs[0].shape)} input: "
                                  f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}; "
                                  f"nothing written to {out}") from err
            with torch.no_grad():
                expected = reference(*inputs).numpy()
            if got.shape != expected.shape:
                raise ExportError(f"the exported {fmt} file gives shape {got.shape}, PyTorch {expected.shape}")
            error = max(error, float(np.abs(got - expected).max()))
        if not error <= tolerance:
            raise ExportError(f"the exported {fmt} file differs from PyTorch by up to {error:.3g} "
                              f"(tolerance {tolerance:g}); nothing written to {out}")
    return out, error


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    doc = __doc__
    p.description = doc[doc.index("The exported file"):doc.index("Both files carry")].strip()  # the contract
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("checkpoint", help="generator checkpoint (ours, or an authors' latest_net_G.pth)")
    p.add_argument("--format", default="onnx", choices=sorted(FORMATS),
                   help="onnx (ONNX Runtime and other ONNX runtimes) or pt2 (torch.export.save; "
                        "torch.export.load needs only torch). Default onnx")
    p.add_argument("--out", default=None, help="output file (default: beside the checkpoint, .onnx / .pt2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"largest |exported - PyTorch| accepted by the check (default {TOLERANCE:g})")
    p.add_argument("--num-classes", type=int, default=None, help="authors' checkpoints: one-hot label classes")
    p.add_argument("--dontcare", action="store_true", help="authors' checkpoints: input has a don't-care channel")
    p.add_argument("--instance-edge", action="store_true", help="authors' checkpoints: input has an instance-edge channel")
    p.epilog = ("accepted sizes: any batch; H and W multiples of the size divisor (ASAP-Net: S; pix2pixHD: 16; "
                "SPADE: 32), each at least twice it; written into the file's metadata (accepted_sizes)")


def run(args) -> int:
    overrides = {k: v for k, v in (("num_classes", args.num_classes), ("dontcare", args.dontcare or None),
                                   ("instance_edge", args.instance_edge or None)) if v is not None}
    start = time.perf_counter()
    out, error = export(args.checkpoint, args.out, args.format, overwrite=args.overwrite,
                        tolerance=args.tolerance, **overrides)
    seconds = time.perf_counter() - start
    meta = describe_file(out, args.format)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {seconds:.0f} s): {meta['description']}")
    print(f"check: {'ONNX Runtime (CPU)' if args.format == 'onnx' else 'torch.export.load'} vs PyTorch, "
          f"max abs error {error:.2g} (tolerance {args.tolerance:g})")
    return 0


def describe_file(path: str | Path, fmt: str) -> dict:
    """The metadata an exported file carries."""
    if fmt == "onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in proto.metadata_props}
    extra = {METADATA_FILE: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[METADATA_FILE])
