"""Custom paired folders: the user's own data.

    <root>/images/<stem>.{png,jpg,...}      the target photos
    <root>/labels/<stem>.png                class-index label maps (single channel, 0..num_classes-1)
      or <root>/inputs/<stem>.{png,jpg,...} input images (image -> image translation)
    <root>/instances/<stem>.png             optional instance-id maps (-> instance edge channel)

Stems pair the files. With ``<root>/train/`` and ``<root>/test/`` each holding that layout, those are
the splits; otherwise a seeded random ``test_fraction`` of the pairs becomes the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from asap.config import ConfigError, require, require_choice
from asap.data.common import (FITS, DataError, check_sizes, DatasetSpec, PairSource, PrepareOptions, RawPair,
                              index_array, open_image, prepare, rgb_array)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
INDEX_EXTS = (".png",)  # class and instance ids must be lossless
DONTCARE_VALUE = 255    # as asap.models.inputs.DONTCARE_VALUE (not imported: preparation stays torch-free)


@dataclass(frozen=True)
class FoldersConfig:
    """params.yaml ``prepare.folders``."""
    root: str | None = None             # the folder described above; None: not prepared
    name: str = "custom"                # prepared as data/prepared/<name>-<H>x<W>
    sizes: tuple[str, ...] = ()         # HxW
    num_classes: int | None = None      # label classes (values 0..num_classes-1); required for labels/
    label_names: tuple[str, ...] | None = None  # one per class; None: class_0, class_1, ...
    dontcare: bool = False              # label value 255 means "don't care" (an extra one-hot channel)
    test_fraction: float = 0.1          # without train/ and test/ folders: share of pairs for test
    seed: int = 0                       # the random split's seed
    fit: str = "stretch"                # "stretch" to HxW, or "crop" the centre to H:W first

    def __post_init__(self):
        object.__setattr__(self, "sizes", check_sizes("prepare.folders.sizes", self.sizes))
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))
        require(isinstance(self.name, str) and self.name.replace("-", "").replace("_", "").isalnum(),
                f"prepare.folders.name must be letters, digits, '-' or '_', got {self.name!r}")
        require(self.num_classes is None or (isinstance(self.num_classes, int) and 1 <= self.num_classes <= 255),
                f"prepare.folders.num_classes must be an integer in 1..255 (uint8 label PNGs), "
                f"got {self.num_classes!r}")
        require(self.label_names is None or self.num_classes is None
                or len(self.label_names) == self.num_classes,
                f"prepare.folders.label_names has {len(self.label_names or ())} names but num_classes is "
                f"{self.num_classes}")
        require(isinstance(self.test_fraction, (int, float)) and 0 < self.test_fraction < 1,
                f"prepare.folders.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        require_choice("prepare.folders.fit", self.fit, set(FITS))
        require(not self.sizes or bool(self.root),
                "prepare.folders.sizes is set but prepare.folders.root is null: set it to your folder")


def _files(folder: Path, exts: tuple[str, ...], errors: list) -> dict[str, Path]:
    """{stem: path} of the files in ``folder``; other extensions and duplicate stems are errors."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() not in exts:
            errors.append((p.stem, f"{p}: unexpected file type {p.suffix!r} (allowed: {', '.join(exts)})"))
        elif p.stem in out:
            errors.append((p.stem, f"{p}: a second file with stem {p.stem!r} (also {out[p.stem]})"))
        else:
            out[p.stem] = p
    return out


def input_kind(root: str | Path) -> str:
    """'labels' when the folders hold labels/, 'image' when they hold inputs/."""
    root = Path(root)
    base = root / "train" if (root / "train").is_dir() else root
    has_labels, has_inputs = (base / "labels").is_dir(), (base / "inputs").is_dir()
    if has_labels == has_inputs:
        raise DataError(f"folder {base} must hold images/ and exactly one of labels/ (class-index maps) "
                        f"or inputs/ (input images); found labels/: {has_labels}, inputs/: {has_inputs}")
    return "labels" if has_labels else "image"


def list_pairs(root: str | Path, cfg: FoldersConfig):
    """(pairs, pairing errors, input kind, has_instances) of the folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folders root {root} not found (prepare.folders.root)")
    kind = input_kind(root)
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    groups = [(root / "train", "train"), (root / "test", "test")] if split_dirs else [(root, None)]
    role_in = "label" if kind == "labels" else "input"
    pairs, errors, has_instances = [], [], (groups[0][0] / "instances").is_dir()
    for base, split in groups:
        if not (base / "images").is_dir():
            raise DataError(f"folder {base} has no images/ folder: expected {base}/images/<stem>.png|jpg")
        images = _files(base / "images", IMAGE_EXTS, errors)
        inputs = _files(base / ("labels" if kind == "labels" else "inputs"),
                        INDEX_EXTS if kind == "labels" else IMAGE_EXTS, errors)
        instances = _files(base / "instances", INDEX_EXTS, errors) if has_instances else {}
        for stem in sorted(set(images) | set(inputs)):
            if stem not in inputs:
                errors.append((stem, f"{images[stem]}: image without its {role_in} "
                                     f"{base / ('labels' if kind == 'labels' else 'inputs')}/{stem}.*"))
            elif stem not in images:
                errors.append((stem, f"{inputs[stem]}: {role_in} without its image {base / 'images'}/{stem}.*"))
            elif has_instances and stem not in instances:
                errors.append((stem, f"{images[stem]}: image without its instance map "
                                     f"{base / 'instances'}/{stem}.png"))
            else:
                files = [("image", str(images[stem])), (role_in, str(inputs[stem]))]
                if has_instances:
                    files.append(("instance", str(instances[stem])))
                pairs.append(PairSource(stem=stem, split=split or "", files=tuple(files)))
    if not split_dirs:
        pairs = _random_split(pairs, cfg, root)
    return pairs, errors, kind, has_instances


def _random_split(pairs: list[PairSource], cfg: FoldersConfig, root: Path) -> list[PairSource]:
    n = len(pairs)
    n_test = max(1, math.floor(n * cfg.test_fraction + 0.5))
    if n < 2 or n_test >= n:
        raise DataError(f"folders root {root} holds {n} pair(s): too few for a train and a test split "
                        f"(test_fraction {cfg.test_fraction})")
    test = set(np.random.default_rng(cfg.seed).permutation(n)[:n_test].tolist())
    return [PairSource(p.stem, "test" if i in test else "train", p.files) for i, p in enumerate(pairs)]


def load_pair(src: PairSource) -> RawPair:
    files = dict(src.files)
    image = rgb_array(open_image(files["image"], files["image"]))
    label = instance = inp = None
    if "label" in files:
        label = index_array(open_image(files["label"], files["label"]), files["label"])
    if "input" in files:
        inp = rgb_array(open_image(files["input"], files["input"]))
    if "instance" in files:
        instance = index_array(open_image(files["instance"], files["instance"]), files["instance"])
    return RawPair(image=image, label=label, instance=instance, input=inp)


def spec(root: str | Path, cfg: FoldersConfig, kind: str, has_instances: bool) -> DatasetSpec:
    source = {"path": str(root), "split": "folders" if (Path(root) / "test").is_dir() else "random",
              "seed": cfg.seed, "test_fraction": cfg.test_fraction}
    if kind == "image":
        return DatasetSpec(dataset=cfg.name, input_kind="image", num_classes=3,
                           label_names=("red", "green", "blue"), input_png_channels=3, source=source)
    if cfg.num_classes is None:
        raise ConfigError(f"prepare.folders.num_classes is required: {root}/labels holds class-index maps "
                          "(values 0..num_classes-1)")
    names = cfg.label_names or tuple(f"class_{k}" for k in range(cfg.num_classes))
    allowed = tuple(range(cfg.num_classes)) + ((DONTCARE_VALUE,) if cfg.dontcare else ())
    return DatasetSpec(dataset=cfg.name, input_kind="labels", num_classes=cfg.num_classes,
                       label_names=names, allowed_labels=allowed, dontcare=cfg.dontcare,
                       instance_edge=has_instances, source=source)


def prepare_folders(root: str | Path, out_dir: str | Path, cfg: FoldersConfig, opts: PrepareOptions,
                    log: Callable[[str], None] | None = None) -> dict:
    pairs, errors, kind, has_instances = list_pairs(root, cfg)
    return prepare(spec(root, cfg, kind, has_instances), pairs, load_pair, out_dir, opts,
                   pairing_errors=errors, log=log)
