"""Translate label maps into images with a trained generator.

    asap translate models/facades/generator.pt labels/ more/cmp_b0001.png --out outputs/
    asap translate latest_net_G.pth labels/ --instances inst/ --out out/ --num-classes 35 --instance-edge
    asap translate models/facades/generator.pt labels/ --out out/ --device cuda --precision bf16

A label map is a single-channel PNG whose pixel values are class indices: mode "P" (palette: the
palette indices are the classes, colours are ignored), "L", or 16-bit "I;16"/"I". Each input
``<stem>.png`` gives ``<OUT>/<stem>.png`` (RGB, or grey for one output channel). Existing outputs are
never replaced unless ``--overwrite``. Every input is checked before anything is written.

The generator is ours (``save_generator``) or an authors' ``latest_net_G.pth`` (converted on the fly:
pass ``--num-classes`` / ``--dontcare`` / ``--instance-edge`` as for ``asap convert-authors``; their
Cityscapes default is 35 classes + the instance edge, with ``--dontcare`` only for a model trained with
their ``--contain_dontcare_label``). On CUDA ASAP-Net runs through ``asap.models.fast.FastGenerator``
(fused Triton MLP, CUDA graph); on the CPU through the reference path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from asap.config import UserError
from asap.models.asapnet import ASAPNetGenerator
from asap.models.checkpoint import load_generator
from asap.devices import resolve_device
from asap.files import atomic_path
from asap.images import to_uint8
from asap.models.fast import PRECISIONS, FastGenerator, check_precision
from asap.models.inputs import DONTCARE_VALUE, instance_edges

LABEL_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I")


class TranslateError(UserError, ValueError):
    """An input cannot be translated; the message names the file, the value and what to do."""


# ----------------------------------------------------------------------------------------------
# Reading and checking inputs
# ----------------------------------------------------------------------------------------------

def label_files(inputs: list[str | Path]) -> list[Path]:
    """PNG files named directly, or every ``*.png`` in a named folder (sorted, not recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() == ".png" and p.is_file())
            if not found:
                raise TranslateError(f"folder {item} holds no .png label maps")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise TranslateError(f"input {item} does not exist (give label-map PNGs or folders of them)")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise TranslateError(f"{stems[f.stem]} and {f} would both be written as {f.stem}.png; "
                                 "translate them into different --out folders")
        stems[f.stem] = f
    return list(stems.values())


def read_label_map(path: str | Path) -> np.ndarray:
    """(H, W) int64 class indices from a palette / grey / 16-bit PNG."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in LABEL_MODES:
                raise TranslateError(
                    f"{path} is a {mode} image; a label map must be single-channel with class indices as "
                    f"values (PNG modes {', '.join(LABEL_MODES)}). Colour-coded maps must be converted to "
                    "indices first")
            return np.asarray(img).astype(np.int64)  # mode P: the palette indices, not the colours
    except OSError as err:
        raise TranslateError(f"{path} is not a readable image: {err}") from err


def check_label_values(labels: np.ndarray, path: Path, num_classes: int, dontcare: bool) -> None:
    ok = (labels >= 0) & (labels < num_classes)
    if dontcare:
        ok |= labels == DONTCARE_VALUE
    if not ok.all():
        values = np.unique(labels[~ok])
        shown = ", ".join(map(str, values[:10])) + (" ..." if len(values) > 10 else "")
        allowed = f"0..{num_classes - 1}" + (f" and {DONTCARE_VALUE} (don't care)" if dontcare else "")
        raise TranslateError(f"{path}: label values {shown} are not classes of this generator "
                             f"({num_classes} classes, allowed {allowed}); {int((~ok).sum())} pixels affected")


def fitting_size(height: int, width: int, tile: int) -> str:
    """A size near (height, width) that the generator accepts: both sides multiples of S."""
    down = (max(tile, height - height % tile), max(tile, width - width % tile))
    up = (-(-height // tile) * tile, -(-width // tile) * tile)
    return f"{down[0]}x{down[1]} (crop) or {up[0]}x{up[1]} (pad)"


def check_label_size(labels: np.ndarray, path: Path, tile: int) -> None:
    H, W = labels.shape
    if H % tile or W % tile:
        raise TranslateError(f"{path}: size {H}x{W} does not fit this generator: both sides must be multiples "
                             f"of S={tile}; e.g. {fitting_size(H, W, tile)}")


def write_png(array: np.ndarray, path: Path) -> None:
    """(H, W, C) uint8 -> PNG, written to a temp name and renamed (no half-written outputs)."""
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------

def load_translator(checkpoint: str | Path, device: str = "auto", precision: str = "fp32", **authors_overrides):
    """-> (callable labels (1, H, W) long [, edges] -> image (1, C, H, W), the generator's config, device)."""
    check_precision(precision)
    device = resolve_device(device)
    model, _ = load_generator(checkpoint, **authors_overrides)
    model = model.to(device).eval()
    config = model.config
    if getattr(config, "input_kind", "labels") != "labels":
        raise TranslateError(f"{checkpoint} translates images (input_kind={config.input_kind!r}); "
                             "`asap translate` reads label maps only")
    if isinstance(model, ASAPNetGenerator):
        return FastGenerator(model, precision), config, device
    dtype = PRECISIONS[precision][0]

    @torch.inference_mode()
    def run_baseline(labels, edges=None):  # pix2pixHD / SPADE: autocast for reduced precision
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(labels, edges)
    return run_baseline, config, device


def translate(checkpoint: str | Path, inputs: list[str | Path] | str | Path, output_dir: str | Path,
              device: str = "auto", precision: str = "fp32", overwrite: bool = False,
              instances: str | Path | None = None, **authors_overrides) -> list[Path]:
    """Translate label-map PNGs (files or folders) into ``output_dir/<stem>.png``; returns the written paths.

    ``instances``: a folder of instance-id PNGs with the same stems, for generators built with
    ``instance_edge`` (Cityscapes). ``authors_overrides`` (num_classes, dontcare, instance_edge) apply
    when ``checkpoint`` is an authors' state dict.
    """
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files = label_files(inputs)
    output_dir = Path(output_dir)
    outputs = [output_dir / f"{f.stem}.png" for f in files]
    existing = [o for o in outputs if o.exists()]
    if existing and not overwrite:
        shown = ", ".join(map(str, existing[:5])) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise TranslateError(f"{shown} already exist(s); pass --overwrite (overwrite=True) to replace, "
                             "or choose another --out")
    run_model, config, device = load_translator(checkpoint, device, precision, **authors_overrides)
    tile = getattr(config, "downsampling", 1)
    needs_edges = getattr(config, "instance_edge", False)
    if needs_edges and instances is None:
        raise TranslateError(f"{checkpoint} was trained with instance edges: pass the instance-id maps "
                             "(--instances DIR, same file stems)")

    def instance_path(f: Path) -> Path:
        path = Path(instances) / f.name
        if not path.is_file():
            raise TranslateError(f"{f}: no instance map {path} (the generator needs instance edges)")
        return path

    # Check every input before writing anything: a bad file in the middle must not leave half a folder.
    for f in files:
        labels = read_label_map(f)
        check_label_values(labels, f, config.num_classes, getattr(config, "dontcare", False))
        check_label_size(labels, f, tile)
        if needs_edges and read_label_map(instance_path(f)).shape != labels.shape:
            raise TranslateError(f"{instance_path(f)} and {f} differ in size")

    output_dir.mkdir(parents=True, exist_ok=True)
    for f, out_path in zip(files, outputs):
        labels = torch.from_numpy(read_label_map(f))[None].to(device)  # (1, H, W)
        edges = None
        if needs_edges:
            edges = instance_edges(torch.from_numpy(read_label_map(instance_path(f)))[None]).to(device)
        write_png(to_uint8(run_model(labels, edges))[0], out_path)
    return outputs


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="generator checkpoint (ours, or an authors' latest_net_G.pth)")
    p.add_argument("inputs", nargs="+", help="label-map PNGs (palette or index values) or folders of them")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                   help="fp32 (exact), tf32, bf16 or fp16 (faster on GPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--instances", default=None,
                   help="folder of instance-id PNGs (same stems), for generators with instance edges")
    p.add_argument("--num-classes", type=int, default=None, help="authors' checkpoints: one-hot label classes")
    p.add_argument("--dontcare", action="store_true", help="authors' checkpoints: input has a don't-care channel")
    p.add_argument("--instance-edge", action="store_true", help="authors' checkpoints: input has an instance-edge channel")


def run(args) -> int:
    overrides = {}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if args.dontcare:
        overrides["dontcare"] = True
    if args.instance_edge:
        overrides["instance_edge"] = True
    start = time.perf_counter()
    written = translate(args.checkpoint, args.inputs, args.out, device=args.device, precision=args.precision,
                        overwrite=args.overwrite, instances=args.instances, **overrides)
    seconds = time.perf_counter() - start
    print(f"wrote {len(written)} image(s) to {args.out} ({seconds:.1f} s, device {resolve_device(args.device)}, "
          f"{args.precision})")
    return 0
