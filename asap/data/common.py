"""Shared machinery of the dataset readers: resizing, validation, and writing a prepared dataset.

A reader (facades.py, cityscapes.py, nyu.py, folders.py) describes its dataset with a ``DatasetSpec``,
lists its pairs as ``PairSource`` records (cheap: names only) and loads one pair as a ``RawPair``
(numpy arrays at source resolution). ``prepare()`` does the rest for every reader alike:

    list pairs -> (pool of processes) load, validate, resize, write PNGs into a staging folder
               -> all good (or bad ones skipped on request) -> manifest.csv + dataset.json -> rename
               into place

Bad input stops the run with an error naming the file and what was expected; the staging folder is
removed, so no output is written. Resizing: label and instance maps with nearest neighbour (exact
rational arithmetic, never a blend of class ids), photos with PIL's antialiased bicubic filter, depth
in float before quantisation.

No torch here: preparation runs in forked worker processes and needs only numpy and PIL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from asap.config import UserError

FORMAT_VERSION = 1
SPLITS = ("train", "test")
FITS = ("stretch", "crop")
PNG_COMPRESS_LEVEL = 1  # lossless either way; 1 is ~3x faster than PIL's default 6 for ~15% more bytes
MAX_LISTED_ERRORS = 20
DONTCARE_VALUE = 255    # as asap.models.inputs.DONTCARE_VALUE (not imported: preparation stays torch-free)


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, what was found and what was expected."""


class PairError(Exception):
    """One bad pair; ``prepare`` collects these and fails (or skips the pair) after listing them."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


# -- sizes ----------------------------------------------------------------------------------------

SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


def parse_size(size: str) -> tuple[int, int]:
    """'256x512' -> (height 256, width 512)."""
    m = SIZE_RE.match(str(size))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1 or max(map(int, m.groups())) > 8192:
        raise DataError(f"size {size!r} is not <height>x<width> with sides 1..8192 (e.g. '256x256', '512x1024')")
    return int(m.group(1)), int(m.group(2))


def check_sizes(key: str, sizes) -> tuple[str, ...]:
    """A params list of sizes as a tuple, each checked; errors name the params key (ConfigError)."""
    from asap.config import ConfigError

    sizes = tuple(sizes or ())
    for size in sizes:
        try:
            parse_size(size)
        except DataError as err:
            raise ConfigError(f"{key}: {err}") from None
    return sizes


def prepared_name(dataset: str, height: int, width: int) -> str:
    return f"{dataset}-{height}x{width}"


# -- resizing ---------------------------------------------------------------------------------------

def crop_box(h: int, w: int, height: int, width: int, fit: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the source region that maps to the output.

    stretch: the whole source (aspect ratio changes, as pix2pix did for facades);
    crop: the largest centred region with the output's aspect ratio.
    """
    if fit == "stretch":
        return 0, 0, h, w
    if fit != "crop":
        raise DataError(f"fit must be one of {list(FITS)}, got {fit!r}")
    if h * width > w * height:  # source is taller than the output: cut rows
        ch, cw = max(1, round(w * height / width)), w
    else:
        ch, cw = h, max(1, round(h * width / height))
    top, left = (h - ch) // 2, (w - cw) // 2
    return top, left, top + ch, left + cw


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for nearest-neighbour resizing: the pixel whose cell holds the
    output pixel's centre, floor((i + 1/2) * n_in / n_out), in exact integer arithmetic."""
    return ((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in) // (2 * n_out)


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, ...) -> (height, width, ...) by nearest neighbour; keeps the dtype (class or instance ids)."""
    return a[nearest_indices(a.shape[0], height)][:, nearest_indices(a.shape[1], width)]


def resize_smooth(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, C) uint8 or float32 -> (height, width, C) of the same dtype, antialiased bicubic (PIL
    widens the kernel by the downscale factor, so shrinking 1024 -> 256 averages, never aliases)."""
    if a.shape[:2] == (height, width):
        return a.copy()
    if a.dtype == np.uint8 and a.shape[2] in (1, 3):
        img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
        out = np.asarray(img.resize((width, height), Image.BICUBIC))
        return out.reshape(height, width, a.shape[2])
    # float maps (depth): channel by channel in PIL's 32-bit float mode, no quantisation before the end
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c], dtype=np.float32), mode="F")
                        .resize((width, height), Image.BICUBIC)) for c in range(a.shape[2])]
    return np.stack(chans, axis=-1)


def instance_edges(instance: np.ndarray) -> np.ndarray:
    """(H, W) instance ids -> (H, W) uint8, 255 where a 4-neighbour has another id, else 0 (the
    pix2pixHD boundary map; computed after resizing so edges stay one pixel wide)."""
    edge = np.zeros(instance.shape, dtype=bool)
    dx = instance[:, 1:] != instance[:, :-1]
    dy = instance[1:, :] != instance[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge.astype(np.uint8) * 255


# -- decoding -----------------------------------------------------------------------------------------

def open_image(source, name: str) -> Image.Image:
    """Decode an image file fully (path or file object); a corrupt or truncated file is a PairError."""
    try:
        img = Image.open(source)
        img.load()
        return img
    except FileNotFoundError:
        raise PairError(name, "file not found") from None
    except Exception as err:  # PIL raises several types for corrupt data
        raise PairError(name, f"cannot be decoded as an image ({type(err).__name__}: {err}); "
                              "the file is corrupt or not an image") from None


def rgb_array(img: Image.Image) -> np.ndarray:
    """Any photo mode (RGB, L, CMYK, RGBA...) -> (h, w, 3) uint8."""
    return np.asarray(img.convert("RGB"))


def index_array(img: Image.Image, name: str) -> np.ndarray:
    """A class or instance id map (modes L, P, I, I;16) -> (h, w) integer array in the file's own dtype
    (uint8, uint16 or int32: small dtypes keep counting fast); colour images are rejected."""
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise PairError(name, f"expected a single-channel index map (PNG mode L, P or I), got mode {img.mode} "
                              "(a colour-coded label image? convert it to class indices first)")
    return np.asarray(img)


def check_label_values(label: np.ndarray, name: str, allowed: Sequence[int], dontcare: bool = False,
                       dontcare_setting: str | None = None) -> np.ndarray:
    """Unique values of ``label``; a PairError listing any that are not in ``allowed`` (as ranges), with
    a hint to set ``dontcare_setting`` when a stray 255 (the usual don't-care value) is among them."""
    if label.dtype in (np.uint8, np.uint16):  # bincount: ~20x faster than np.unique on big maps
        values = np.flatnonzero(np.bincount(label.ravel()))
    else:
        values = np.unique(label)
    bad = np.setdiff1d(values, np.asarray(sorted(allowed)))
    if bad.size:
        shown = bad[:10].tolist() + (["..."] if bad.size > 10 else [])
        message = f"label values {shown} are outside the allowed {describe_values(allowed, dontcare)}"
        if DONTCARE_VALUE in bad and not dontcare and dontcare_setting:
            message += (f"; {DONTCARE_VALUE} usually marks \"don't care\" pixels: set {dontcare_setting}: true "
                        "to keep them as the don't-care channel")
        raise PairError(name, message)
    return values


def describe_values(values: Sequence[int], dontcare: bool = False) -> str:
    """Allowed label values as ranges, never the whole list: 'range 0..4', 'values 0..3, 7..9',
    'range 0..181 and 255 (don't care)'."""
    v = sorted(set(values))
    tail = ""
    if dontcare and v and v[-1] == DONTCARE_VALUE:
        v, tail = v[:-1], f" and {DONTCARE_VALUE} (don't care)"
    runs, start = [], 0
    for i in range(1, len(v) + 1):
        if i == len(v) or v[i] != v[i - 1] + 1:
            runs.append(f"{v[start]}..{v[i - 1]}" if i - 1 > start else str(v[start]))
            start = i
    if len(runs) == 1 and ".." in runs[0]:
        return f"range {runs[0]}{tail}"
    return f"values {', '.join(runs)}{tail}"


def name_some(items: Sequence, limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e ... and 7 more': files named in a warning without flooding it."""
    items = [str(i) for i in items]
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# -- what a reader provides -------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """What dataset.json says about a dataset (see asap/data/prepared.py: DatasetInfo)."""
    dataset: str                        # short name: facades, cityscapes, nyu, or the folders' name
    input_kind: str                     # "labels" (class-index map) or "image" (e.g. RGB -> depth)
    num_classes: int                    # one-hot classes, or input channels when input_kind == "image"
    label_names: tuple[str, ...]        # one per class (or per input channel)
    allowed_labels: tuple[int, ...] = ()  # label values accepted in the source maps (labels only)
    dontcare: bool = False              # 255 marks "don't care" pixels (an extra one-hot channel)
    dontcare_setting: str | None = None  # the params key that turns on dontcare (named when a 255 is found)
    instance_edge: bool = False         # the dataset has instance maps: write edges/<stem>.png
    target_kind: str = "rgb"            # "rgb" photo or "depth" (1-channel PNG, see depth)
    input_png_channels: int = 0         # image inputs: channels of inputs/<stem>.png
    depth: dict | None = None           # depth PNGs: {"max_depth_m": m, "encoding": ...}
    source: dict = field(default_factory=dict)  # where the data came from (path, url, citation)


@dataclass(frozen=True)
class PairSource:
    """One pair to prepare, by name: ``files`` maps a role (image, label, instance, input) to a
    human-readable source reference used in the manifest and in errors; ``ref`` is reader-specific."""
    stem: str
    split: str
    files: tuple[tuple[str, str], ...]
    ref: tuple = ()

    def file(self, role: str) -> str:
        return dict(self.files).get(role, self.stem)


@dataclass
class RawPair:
    """A loaded pair at source resolution. image: the target, (h, w, 3) uint8 photo or (h, w, 1)
    float32 depth in metres; label/instance: (h, w) integer; input: (h, w, C) uint8 or float32 depth."""
    image: np.ndarray
    label: np.ndarray | None = None
    instance: np.ndarray | None = None
    input: np.ndarray | None = None
    facts: dict = field(default_factory=dict)  # extra manifest columns


@dataclass(frozen=True)
class PrepareOptions:
    height: int
    width: int
    fit: str = "stretch"          # see crop_box
    workers: int | None = None    # processes; None = all cores available to this process
    skip_bad: bool = False        # skip bad pairs (listed in dataset.json) instead of failing


# -- one pair (runs in a worker process) ---------------------------------------------------------

def encode_depth(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """(H, W, 1) metres -> (H, W, 1) uint8: round(255 * clip(d, 0, max) / max)."""
    return np.round(np.clip(depth, 0.0, max_depth) * (255.0 / max_depth)).astype(np.uint8)


def _save_png(a: np.ndarray, path: Path) -> None:
    a = a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a
    Image.fromarray(a).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _process_pair(src: PairSource, loader: Callable[[PairSource], RawPair], spec: DatasetSpec,
                  opts: PrepareOptions, staging: Path):
    """Load, check, resize and write one pair. Returns ("ok", manifest row) or ("bad", stem, message)."""
    try:
        raw = loader(src)
        h, w = raw.image.shape[:2]
        for role in ("label", "instance", "input"):
            a = getattr(raw, role)
            if a is not None and a.shape[:2] != (h, w):
                raise PairError(src.file(role), f"is {a.shape[1]}x{a.shape[0]} (WxH) but its image "
                                                f"{src.file('image')} is {w}x{h}: a pair must have one size")
        row = {"split": src.split, "stem": src.stem}
        row.update({f"source_{role}": ref for role, ref in src.files})
        row.update(source_height=h, source_width=w, height=opts.height, width=opts.width)
        top, left, bottom, right = crop_box(h, w, opts.height, opts.width, opts.fit)
        H, W = opts.height, opts.width
        out = staging / src.split
        crop = (slice(top, bottom), slice(left, right))

        if raw.label is not None:
            values = check_label_values(raw.label, src.file("label"), spec.allowed_labels, spec.dontcare,
                                        spec.dontcare_setting)
            label = resize_nearest(raw.label[crop], H, W).astype(np.uint8)
            _save_png(label, out / "labels" / f"{src.stem}.png")
            row["label_values"] = " ".join(str(v) for v in values.tolist())
            hist = np.bincount(label.ravel(), minlength=256)
            for k in range(spec.num_classes):
                row[f"hist_{k}"] = int(hist[k])
            if spec.dontcare:
                row["hist_dontcare"] = int(hist[255])
        if raw.instance is not None:
            edges = instance_edges(resize_nearest(raw.instance[crop], H, W))
            _save_png(edges, out / "edges" / f"{src.stem}.png")
            row["edge_fraction"] = round(float((edges > 0).mean()), 6)
        if raw.input is not None:
            x = resize_smooth(raw.input[crop], H, W)
            if x.dtype != np.uint8:
                x = encode_depth(x, spec.depth["max_depth_m"])
            _save_png(x, out / "inputs" / f"{src.stem}.png")
        image = resize_smooth(raw.image[crop], H, W)
        if image.dtype != np.uint8:
            image = encode_depth(image, spec.depth["max_depth_m"])
        _save_png(image, out / "images" / f"{src.stem}.png")
        row.update(raw.facts)
        return "ok", row
    except PairError as err:
        return "bad", src.stem, str(err)


# -- the whole dataset ---------------------------------------------------------------------------

def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def format_errors(errors: Sequence[tuple[str, str]]) -> str:
    lines = [f"  {message}" for _, message in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more")
    return "\n".join(lines)


def _fail_on(errors: list[tuple[str, str]], what: str) -> None:
    raise DataError(f"{len(errors)} bad pair(s) {what}; nothing was written:\n{format_errors(errors)}\n"
                    "Fix or remove these files, or set prepare.skip_bad: true to skip bad pairs.")


def prepare(spec: DatasetSpec, pairs: Sequence[PairSource], loader: Callable[[PairSource], RawPair],
            out_dir: str | Path, opts: PrepareOptions, *, pairing_errors: Sequence[tuple[str, str]] = (),
            log: Callable[[str], None] | None = None) -> dict:
    """Write the prepared dataset to ``out_dir`` (replacing it only when everything succeeded).

    ``pairing_errors`` are (stem, message) problems the reader found while listing (unpaired files);
    ``loader`` must be a module-level function (it is sent to worker processes). Returns dataset.json
    as a dict.
    """
    log = log or (lambda msg: print(msg, flush=True))
    out_dir = Path(out_dir)
    name = out_dir.name
    pairing_errors = list(pairing_errors)
    if pairing_errors and not opts.skip_bad:
        _fail_on(pairing_errors, f"in {spec.source.get('path', spec.dataset)}")
    if not pairs:
        raise DataError(f"no pairs found in {spec.source.get('path', spec.dataset)}: nothing to prepare")

    staging = out_dir.parent / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for split in SPLITS:
            for sub in ("labels", "images", "edges", "inputs"):
                (staging / split / sub).mkdir(parents=True, exist_ok=True)
        rows, bad = _run_pairs(pairs, loader, spec, opts, staging, name, log)
        if bad and not opts.skip_bad:
            _fail_on(bad, f"in {spec.source.get('path', spec.dataset)}")
        skipped = pairing_errors + bad
        rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["stem"]))
        splits = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        for s, n in splits.items():
            if n == 0:
                raise DataError(f"the {s} split of {name} is empty after preparation "
                                f"({len(skipped)} pair(s) skipped): check the split settings and the data")
        for split in SPLITS:  # drop the folders this dataset does not use
            for sub in ("labels", "images", "edges", "inputs"):
                d = staging / split / sub
                if not any(d.iterdir()):
                    d.rmdir()

        import pandas as pd  # pandas only in the main process: workers stay lean

        pd.DataFrame(rows).to_csv(staging / "manifest.csv", index=False)
        info = _dataset_json(spec, opts, name, splits, skipped)
        (staging / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if skipped:
        log(f"{name}: skipped {len(skipped)} bad pair(s):\n{format_errors(skipped)}")
    log(f"{name}: wrote {splits['train']} train + {splits['test']} test pairs to {out_dir}")
    return info


def _run_pairs(pairs, loader, spec, opts, staging, name, log):
    work = partial(_process_pair, loader=loader, spec=spec, opts=opts, staging=staging)
    workers = max(1, min(opts.workers or default_workers(), len(pairs)))
    rows, bad = [], []
    start, last = time.monotonic(), 0.0
    log(f"{name}: preparing {len(pairs)} pairs with {workers} worker(s)")

    def collect(result, done):
        nonlocal last
        if result[0] == "ok":
            rows.append(result[1])
        else:
            bad.append((result[1], result[2]))
        now = time.monotonic() - start
        if now - last >= 5.0 or done == len(pairs):  # progress every 5 s: long runs show life
            last = now
            log(f"{name}: {done}/{len(pairs)} pairs ({now:.1f} s, {len(bad)} bad)")

    if workers == 1:
        for i, src in enumerate(pairs, 1):
            collect(work(src), i)
    else:
        import multiprocessing as mp

        # fork: workers inherit the loaded modules at no cost; everything they touch is numpy/PIL
        ctx = mp.get_context("fork") if sys.platform.startswith("linux") else None
        chunk = max(1, min(16, len(pairs) // (workers * 4)))
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for i, result in enumerate(pool.map(work, pairs, chunksize=chunk), 1):
                collect(result, i)
    return rows, bad


def _dataset_json(spec: DatasetSpec, opts: PrepareOptions, name: str, splits: dict, skipped) -> dict:
    labels = spec.input_kind == "labels"
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "dataset": spec.dataset,
        "height": opts.height,
        "width": opts.width,
        "input_kind": spec.input_kind,
        "num_classes": spec.num_classes,
        "dontcare": spec.dontcare,
        "instance_edge": spec.instance_edge,
        "label_names": list(spec.label_names),
        "label_values": list(spec.allowed_labels) if labels else [],
        "out_channels": 3,  # the target is served as 3 channels (a 1-channel depth PNG is repeated)
        "target_kind": spec.target_kind,
        "input_png_channels": spec.input_png_channels if not labels else 0,
        "depth": spec.depth,
        "files": {
            "labels": "labels/<stem>.png: uint8 single-channel class indices" if labels else None,
            "edges": "edges/<stem>.png: uint8 0/255 instance boundaries" if spec.instance_edge else None,
            "inputs": None if labels else f"inputs/<stem>.png: uint8, {spec.input_png_channels} channel(s)",
            "images": ("images/<stem>.png: uint8 RGB" if spec.target_kind == "rgb"
                       else "images/<stem>.png: uint8 single-channel depth (see depth)"),
        },
        "resize": {"fit": opts.fit, "labels": "nearest", "images": "bicubic, antialiased (PIL)"},
        "splits": splits,
        "skipped": [{"stem": stem, "reason": message} for stem, message in skipped],
        "source": spec.source,
    }
