"""NYU Depth v2, labeled subset (Silberman et al., "Indoor Segmentation and Support Inference from RGBD
Images", ECCV 2012): 1449 aligned RGB and depth pairs of indoor scenes, 640x480.

Read from the official ``nyu_depth_v2_labeled.mat``, a MATLAB v7.3 file, i.e. HDF5 (read with h5py).
MATLAB stores arrays column-major, so h5py sees every axis reversed: ``images`` is (N, 3, W, H) uint8
and ``depths`` is (N, W, H) float metres; image i is ``images[i].transpose(2, 1, 0)`` -> (H, W, 3) and
its depth ``depths[i].T`` -> (H, W).

The paper (Sec. 4, Fig. 10) translates RGB -> depth with a 1200/249 split; it does not say which
images, so the default takes the first 1200 in file order for training (``split: random`` draws them
with a seed instead). depth -> RGB is the option. Depth is stored as a single-channel 8-bit PNG,
round(255 * min(d, max_depth) / max_depth), resized in float before that quantisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from asap.config import ConfigError, require, require_choice
from asap.data.common import (FITS, DataError, check_sizes, DatasetSpec, PairError, PairSource, PrepareOptions,
                              RawPair, prepare)

CITATION = ("Nathan Silberman, Derek Hoiem, Pushmeet Kohli and Rob Fergus, Indoor Segmentation and "
            "Support Inference from RGBD Images, ECCV 2012")
URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
DIRECTIONS = ("rgb2depth", "depth2rgb")
PAPER_TRAIN_COUNT = 1200  # Sec. 4: "split into 1200/249 training/validation images"


@dataclass(frozen=True)
class NYUConfig:
    """params.yaml ``prepare.nyu``."""
    mat: str | None = None              # path of nyu_depth_v2_labeled.mat; None: not prepared
    sizes: tuple[str, ...] = ()         # HxW, e.g. 256x256 (the paper gives none)
    direction: str = "rgb2depth"        # Fig. 10: RGB -> depth; "depth2rgb" swaps input and target
                                        # (the folder stays nyu-<H>x<W>; dataset.json says which)
    split: str = "ordered"              # "ordered": the first train_count images train; "random": seeded
    train_count: int = PAPER_TRAIN_COUNT  # Sec. 4: 1200 train / 249 test
    seed: int = 0                       # random split only
    max_depth: float = 10.0             # metres mapped to 255 (Kinect's range ends near 10 m)
    fit: str = "crop"                   # 4:3 sources: crop the centre to H:W, then resize

    def __post_init__(self):
        object.__setattr__(self, "sizes", check_sizes("prepare.nyu.sizes", self.sizes))
        require_choice("prepare.nyu.direction", self.direction, set(DIRECTIONS))
        require_choice("prepare.nyu.split", self.split, {"ordered", "random"})
        require_choice("prepare.nyu.fit", self.fit, set(FITS))
        require(isinstance(self.train_count, int) and self.train_count >= 1,
                f"prepare.nyu.train_count must be a positive integer, got {self.train_count!r}")
        require(isinstance(self.max_depth, (int, float)) and self.max_depth > 0,
                f"prepare.nyu.max_depth must be a positive number of metres, got {self.max_depth!r}")
        require(not self.sizes or bool(self.mat),
                "prepare.nyu.sizes is set but prepare.nyu.mat is null: set it to the path of "
                "nyu_depth_v2_labeled.mat")


def check_mat(path: str | Path) -> int:
    """Number of pairs in the file; a DataError naming the file when it is not the labeled .mat."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"NYU file {path} not found: download nyu_depth_v2_labeled.mat ({URL}) and set "
                        "prepare.nyu.mat to its path")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"NYU file {path} is not an HDF5 (MATLAB v7.3) file ({err}); expected "
                        f"nyu_depth_v2_labeled.mat from {URL}") from None
    with f:
        missing = [k for k in ("images", "depths") if k not in f]
        if missing:
            raise DataError(f"NYU file {path} has no dataset(s) {missing} (found {sorted(f.keys())[:8]}); "
                            "expected nyu_depth_v2_labeled.mat with 'images' and 'depths'")
        images, depths = f["images"], f["depths"]
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise DataError(f"NYU file {path}: 'images' is {images.shape} {images.dtype}, expected "
                            "(N, 3, W, H) uint8 (MATLAB's H x W x 3 x N seen by h5py)")
        expected = (images.shape[0], images.shape[2], images.shape[3])
        if depths.shape != expected or depths.dtype.kind != "f":
            raise DataError(f"NYU file {path}: 'depths' is {depths.shape} {depths.dtype}, expected "
                            f"{expected} float (N, W, H) to match 'images' {images.shape}")
        return images.shape[0]


def list_pairs(mat: str | Path, cfg: NYUConfig):
    mat = Path(mat)
    n = check_mat(mat)
    if not 1 <= cfg.train_count < n:
        raise ConfigError(f"prepare.nyu.train_count must be between 1 and {n - 1} ({mat} holds {n} "
                          f"pairs), got {cfg.train_count}")
    if cfg.split == "ordered":
        train = set(range(cfg.train_count))
    else:
        train = set(np.random.default_rng(cfg.seed).permutation(n)[:cfg.train_count].tolist())
    pairs = []
    for i in range(n):
        rgb, depth = f"{mat.name}:images[{i}]", f"{mat.name}:depths[{i}]"
        image, inp = (depth, rgb) if cfg.direction == "rgb2depth" else (rgb, depth)
        # stems count from 1 like MATLAB's indices into the file
        pairs.append(PairSource(stem=f"nyu_{i + 1:04d}", split="train" if i in train else "test",
                                files=(("input", inp), ("image", image)),
                                ref=(str(mat.resolve()), i, cfg.direction)))
    return pairs


_FILES: dict = {}


def _h5(path: str):
    """One open h5py.File per (process, path): HDF5 handles must not cross a fork."""
    import h5py

    key = (os.getpid(), path)
    if key not in _FILES:
        _FILES[key] = h5py.File(path, "r")
    return _FILES[key]


def load_pair(src: PairSource) -> RawPair:
    path, i, direction = src.ref
    f = _h5(path)
    rgb = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0))           # (3, W, H) -> (H, W, 3)
    depth = np.asarray(f["depths"][i], dtype=np.float32).T[..., None]       # (W, H) -> (H, W, 1)
    name = src.file("image" if direction == "rgb2depth" else "input")
    if not np.isfinite(depth).all() or (depth < 0).any():
        raise PairError(name, "depth holds negative or non-finite values; expected metres >= 0")
    facts = {"depth_min": round(float(depth.min()), 4), "depth_max": round(float(depth.max()), 4),
             "depth_mean": round(float(depth.mean()), 4)}
    if direction == "rgb2depth":
        return RawPair(image=depth, input=rgb, facts=facts)
    return RawPair(image=rgb, input=depth, facts=facts)


def spec(mat: str | Path, cfg: NYUConfig) -> DatasetSpec:
    rgb2depth = cfg.direction == "rgb2depth"
    return DatasetSpec(
        dataset="nyu", input_kind="image",
        num_classes=3 if rgb2depth else 1,
        label_names=("red", "green", "blue") if rgb2depth else ("depth",),
        target_kind="depth" if rgb2depth else "rgb", input_png_channels=3 if rgb2depth else 1,
        depth={"max_depth_m": float(cfg.max_depth), "png_channels": 1,
               "encoding": "uint8 = round(255 * min(depth_m, max_depth_m) / max_depth_m)"},
        source={"path": str(mat), "direction": cfg.direction, "split": cfg.split,
                "train_count": cfg.train_count, "seed": cfg.seed if cfg.split == "random" else None,
                "citation": CITATION})


def prepare_nyu(mat: str | Path, out_dir: str | Path, cfg: NYUConfig, opts: PrepareOptions,
                log: Callable[[str], None] | None = None) -> dict:
    pairs = list_pairs(mat, cfg)
    return prepare(spec(mat, cfg), pairs, load_pair, out_dir, opts, log=log)
