"""How local a trained generator's answer to a label edit is, and for ASAP-Net, which stream carries it.

    python -m benchmarks.edit_locality models/asapnet/generator.pt models/spade/generator.pt \\
        --labels data/prepared/facades-256x256/test/labels --class 4 --maps 20 --out edit-locality.json

For each of the first ``--maps`` test label maps, a band (``--band top:bottom,left:right``, default
the middle eighth of the rows across three quarters of the width) is painted with one class, as a
user of `asap demo` would, and the generated image is compared with the unedited one: the mean
absolute change (in 0..255 levels, over the three channels) inside the band and far from it (pixels
at least ``--far`` pixels away from the band in both directions' max norm).

For ASAP-Net the change is split by holding one stream fixed (Sec. 3 of the paper: the per-pixel MLP
reads the full-resolution labels, its parameters come from the low-res stream):

- labels only: the edited labels through the MLP with the unedited map's parameters. Zero outside
  the band by construction (the MLP is per pixel);
- parameters only: the unedited labels through the MLP with the edited map's parameters: how far
  the low-res stream spreads the edit.

A generator that has learned to read its labels changes the band mostly through the first; an
undertrained one paints a low-resolution picture through the per-tile parameters, and an edit moves
pixels far away. Prints a table and writes JSON (``--out``). Runs on the CPU; imports torch, numpy,
PIL and asap only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from asap.config import UserError
from asap.files import write_text_atomic
from asap.infer import read_label_map
from asap.models.asapnet import ASAPNetGenerator
from asap.models.checkpoint import load_generator
from asap.models.pixelwise import pixelwise_mlp

LEVELS = 127.5  # [-1, 1] image -> 0..255 levels


def parse_band(text: str | None, height: int, width: int) -> tuple[int, int, int, int]:
    """"top:bottom,left:right" -> (top, bottom, left, right), checked against the map size."""
    if text is None:
        return height * 2 // 8, height * 3 // 8, width // 8, width * 7 // 8
    try:
        rows, cols = text.split(",")
        top, bottom = (int(v) for v in rows.split(":"))
        left, right = (int(v) for v in cols.split(":"))
    except ValueError:
        raise UserError(f"--band must be top:bottom,left:right in pixels, got {text!r}") from None
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise UserError(f"--band {text} does not lie inside the {height}x{width} label maps")
    return top, bottom, left, right


def regions(height: int, width: int, band: tuple[int, int, int, int], far: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (H, W) masks: the band, and the pixels at least ``far`` px from it (max norm)."""
    top, bottom, left, right = band
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    row_gap = torch.clamp(torch.maximum(top - rows, rows - (bottom - 1)), min=0)
    col_gap = torch.clamp(torch.maximum(left - cols, cols - (right - 1)), min=0)
    return inside, torch.maximum(row_gap, col_gap) >= far


def change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) images in [-1, 1] -> (H, W) mean absolute difference in 0..255 levels."""
    return (a - b).abs().mean(dim=1)[0] * LEVELS


@torch.no_grad()
def measure(model: torch.nn.Module, maps: list[np.ndarray], cls: int, band, far: int) -> dict:
    """Mean changes over the maps (see the module docstring); ASAP-Net also split by stream."""
    height, width = maps[0].shape
    inside, far_mask = regions(height, width, band, far)
    top, bottom, left, right = band
    sums: dict[str, float] = {}

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + float(value)

    split = isinstance(model, ASAPNetGenerator)
    if split:  # its forward, written out: the streams' outputs are reused for the split below
        c = model.config

        def mlp(x, p):
            return pixelwise_mlp(x[:, :c.hr_in_channels], p, c.mlp_channels, c.downsampling, c.positional_encoding)
    for labels in maps:
        before = torch.from_numpy(labels)[None]
        after = before.clone()
        after[:, top:bottom, left:right] = cls
        if split:
            x0, x1 = model.encode(before), model.encode(after)
            p0, p1 = model.tile_params(x0), model.tile_params(x1)
            out0, out1 = mlp(x0, p0), mlp(x1, p1)
        else:
            out0, out1 = model(before), model(after)
        total = change(out0, out1)
        add("inside", total[inside].mean())
        add("far", total[far_mask].mean())
        if split:
            labels_only, params_only = change(out0, mlp(x1, p0)), change(out0, mlp(x0, p1))
            add("labels_only_inside", labels_only[inside].mean())
            add("labels_only_far", labels_only[far_mask].mean())
            add("params_only_inside", params_only[inside].mean())
            add("params_only_far", params_only[far_mask].mean())
    return {k: v / len(maps) for k, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="generator checkpoints (models/<name>/generator.pt)")
    ap.add_argument("--labels", type=Path, default=Path("data/prepared/facades-256x256/test/labels"),
                    help="folder of label-map PNGs (class indices)")
    ap.add_argument("--maps", type=int, default=20, help="how many maps (sorted by name), default 20")
    ap.add_argument("--class", dest="cls", type=int, default=4, help="class painted into the band (facades 4: door)")
    ap.add_argument("--band", default=None, help="top:bottom,left:right in pixels (default: rows H/4..3H/8, "
                                                 "columns W/8..7W/8)")
    ap.add_argument("--far", type=int, default=64, help="'far' = at least this many pixels from the band")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    try:
        files = sorted(args.labels.glob("*.png"))[:args.maps]
        if not files:
            raise UserError(f"{args.labels}: no label-map PNGs there (run `dvc repro` to prepare the dataset)")
        maps = [read_label_map(f) for f in files]
        height, width = maps[0].shape
        band = parse_band(args.band, height, width)
        rows = []
        print(f"{len(maps)} maps from {args.labels}, class {args.cls} painted in rows {band[0]}:{band[1]}, "
              f"columns {band[2]}:{band[3]}; mean |change| in 0..255 levels", flush=True)
        for path in args.checkpoints:
            model, meta = load_generator(path)
            classes = getattr(model.config, "num_classes", None)
            if classes is not None and not 0 <= args.cls < classes:
                raise UserError(f"--class {args.cls} is not one of {path}'s {classes} classes (0..{classes - 1})")
            row = {"checkpoint": str(path), "arch": type(model).__name__, "steps": meta.get("steps"),
                   "train_seconds": meta.get("train_seconds"),
                   **measure(model.eval(), maps, args.cls, band, args.far)}
            rows.append(row)
            split = (f"; labels only {row['labels_only_inside']:.2f} inside, parameters only "
                     f"{row['params_only_inside']:.2f} inside / {row['params_only_far']:.2f} far"
                     if "labels_only_inside" in row else "")
            print(f"{str(path):40s} steps {row['steps']}: inside {row['inside']:.2f}, far {row['far']:.2f}{split}",
                  flush=True)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        record = {"labels": str(args.labels), "maps": len(maps), "class": args.cls, "band": list(band),
                  "far_px": args.far, "units": "mean |change| in 0..255 levels", "machine": platform.node(),
                  "torch": torch.__version__, "rows": rows}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
