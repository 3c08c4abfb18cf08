"""The prepared form that training and evaluation read: ``data/prepared/<dataset>-<H>x<W>/``.

    dataset.json                  DatasetInfo below
    manifest.csv                  one row per pair: split, stem, source files and size, label values,
                                  class histogram (hist_<k>: pixels of class k at H x W)
    {train,test}/labels/<stem>.png  uint8 class indices (label inputs)
    {train,test}/inputs/<stem>.png  input image (image inputs, e.g. NYU RGB)
    {train,test}/images/<stem>.png  the target: RGB photo, or 1-channel depth (dataset.json "depth")
    {train,test}/edges/<stem>.png   uint8 0/255 instance boundaries (datasets with instances)

Written by the prepare stage (pipelines/prepare.py); ``PreparedDataset`` decodes a split once into
uint8 tensors so that a training step only indexes memory.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SPLITS = ("train", "test")
# the generator config fields a prepared dataset decides, never params (DatasetInfo.model_kwargs)
MODEL_KEYS = ("num_classes", "input_kind", "dontcare", "instance_edge", "out_channels")
DEFAULT_ROOT = Path("data/prepared")


@dataclass(frozen=True)
class DatasetInfo:
    """dataset.json of a prepared dataset."""
    name: str                           # <dataset>-<H>x<W>, the folder's name
    height: int
    width: int
    input_kind: str                     # "labels" (class-index map) or "image"
    num_classes: int                    # one-hot classes; input channels when input_kind == "image"
    dontcare: bool                      # label 255 = "don't care" (an extra one-hot channel)
    instance_edge: bool                 # edges/ present: one extra input channel
    label_names: tuple[str, ...]        # one per class (per input channel for images)
    out_channels: int                   # channels of the target served as "image" (always 3)
    splits: dict                        # {"train": n, "test": n}
    source: dict                        # where the data came from (path, url, split, citation)
    dataset: str = ""                   # facades, cityscapes, nyu, or the custom folders' name
    target_kind: str = "rgb"            # "rgb" photo or "depth" (1-channel PNG, see depth)
    input_png_channels: int = 0         # image inputs: channels of inputs/<stem>.png
    depth: dict | None = None           # {"max_depth_m", "png_channels", "encoding"} for depth PNGs
    label_values: tuple[int, ...] = ()  # label values the source maps may hold
    skipped: tuple = ()                 # bad pairs left out on request: {"stem", "reason"}
    format_version: int = 1

    @classmethod
    def load(cls, root: str | Path) -> "DatasetInfo":
        """Read ``root/dataset.json``; when missing, say which stage writes it."""
        root = Path(root)
        path = root / "dataset.json"
        if not path.is_file():
            raise FileNotFoundError(f"no prepared dataset at {root} ({path.name} missing): {prepare_hint(root.name)}")
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{path} lacks {missing}: it was written by another version; "
                             f"re-run the prepare stage ({prepare_hint(root.name)})")
        kept = {k: v for k, v in data.items() if k in known}  # newer writers may add keys
        for key in ("label_names", "label_values", "skipped"):
            if key in kept:
                kept[key] = tuple(kept[key])
        return cls(**kept)

    def model_kwargs(self) -> dict:
        """The generator config fields this dataset decides (MODEL_KEYS)."""
        return {key: getattr(self, key) for key in MODEL_KEYS}


def prepare_hint(name: str) -> str:
    """How to create prepared dataset ``name`` (<dataset>-<H>x<W>)."""
    dataset, _, size = name.rpartition("-")
    if not dataset:
        return "run the prepare stage (`dvc repro`)"
    section = dataset if dataset in ("facades", "cityscapes", "nyu") else "folders"
    return (f"run `dvc repro prepare-{section}@{size}` (with '{size}' listed in prepare.{section}.sizes "
            f"of params.yaml), or `python -m pipelines.prepare {section} {size}`")


def _decode(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """PNG -> (channels, H, W) uint8, checking the size the dataset promises."""
    with Image.open(path) as img:
        a = np.asarray(img.convert("RGB") if channels == 3 else img)
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if a.shape[1:] != (height, width) or a.shape[0] != channels:
        raise ValueError(f"{path} is {tuple(a.shape)} (C, H, W), expected ({channels}, {height}, {width}): "
                         "the prepared folder is inconsistent; re-run the prepare stage")
    return a


class PreparedDataset(Dataset):
    """One split of a prepared dataset as a torch Dataset of dicts:

        label  LongTensor (H, W) class indices            (input_kind == "labels")
        edge   FloatTensor (1, H, W) in {0, 1}            (instance_edge)
        input  FloatTensor (C, H, W) in [-1, 1]           (input_kind == "image")
        image  FloatTensor (3, H, W) in [-1, 1]           the target (1-channel depth repeated)
        name   str, the pair's stem

    ``flip``: a random horizontal flip (p = 1/2, torch's RNG) of all maps together, the only
    augmentation. ``in_memory``: decode every PNG once on construction (fast steps; about
    H*W*4 bytes per pair) or, when False, at each access.
    """

    def __init__(self, root: str | Path, split: str, flip: bool = False, in_memory: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.root = Path(root)
        self.info = DatasetInfo.load(self.root)
        self.split, self.flip, self.in_memory = split, flip, in_memory
        self.stems = self._stems()
        info, folder = self.info, self.root / split
        self._fields = []  # (key in item, folder, channels)
        if info.input_kind == "labels":
            self._fields.append(("label", folder / "labels", 1))
            if info.instance_edge:
                self._fields.append(("edge", folder / "edges", 1))
        else:
            self._fields.append(("input", folder / "inputs", info.input_png_channels or info.num_classes))
        target_channels = (info.depth or {}).get("png_channels", 1) if info.target_kind == "depth" else 3
        self._fields.append(("image", folder / "images", target_channels))
        self._cache: dict[str, torch.Tensor] = {}
        if in_memory:
            for key, sub, channels in self._fields:
                # PIL decodes outside the GIL: threads overlap the PNG work
                with ThreadPoolExecutor(4) as pool:
                    arrays = list(pool.map(lambda s: _decode(sub / f"{s}.png", channels, info.height,
                                                             info.width), self.stems))
                self._cache[key] = torch.from_numpy(np.stack(arrays))  # (N, C, H, W) uint8

    def _stems(self) -> list[str]:
        manifest = self.root / "manifest.csv"
        if manifest.is_file():
            import pandas as pd

            rows = pd.read_csv(manifest, usecols=["split", "stem"], dtype=str)
            stems = sorted(rows.loc[rows["split"] == self.split, "stem"])
        else:
            stems = sorted(p.stem for p in (self.root / self.split / "images").glob("*.png"))
        if len(stems) != self.info.splits.get(self.split, len(stems)):
            raise ValueError(f"{self.root}: {len(stems)} {self.split} pairs listed but dataset.json says "
                             f"{self.info.splits[self.split]}; re-run the prepare stage")
        return stems

    def __len__(self) -> int:
        return len(self.stems)

    def raw(self, index: int) -> dict[str, torch.Tensor]:
        """The uint8 tensors of pair ``index``, (C, H, W) each, unflipped."""
        if self.in_memory:
            return {key: self._cache[key][index] for key, _, _ in self._fields}
        stem, info = self.stems[index], self.info
        return {key: torch.from_numpy(np.array(_decode(sub / f"{stem}.png", c, info.height, info.width)))
                for key, sub, c in self._fields}

    def __getitem__(self, index: int) -> dict:
        raw = self.raw(index)
        if self.flip and torch.rand(()) < 0.5:
            raw = {key: t.flip(-1) for key, t in raw.items()}
        item: dict = {"name": self.stems[index]}
        for key, t in raw.items():
            if key == "label":
                item["label"] = t[0].long()                              # (H, W)
            elif key == "edge":
                item["edge"] = (t > 0).float()                           # (1, H, W)
            else:
                x = t.float() / 127.5 - 1.0                              # (C, H, W) in [-1, 1]
                item[key] = x.expand(3, -1, -1).contiguous() if key == "image" and x.shape[0] == 1 else x
        return item
