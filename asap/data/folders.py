"""Custom paired folders: the user's own data.

    <root>/images/<stem>.{png,jpg,...}      the target photos
    <root>/labels/<stem>.png                class-index label maps (single channel, 0..num_classes-1)
      or <root>/inputs/<stem>.{png,jpg,...} input images (image -> image translation)
    <root>/instances/<stem>.png             optional instance-id maps (-> instance edge channel; labels only)

Stems pair the files. With ``<root>/train/`` and ``<root>/test/`` each holding that layout, those are
the splits; otherwise a seeded random ``test_fraction`` of the pairs becomes the test split.

Side-by-side A|B images (pix2pix's format, e.g. its facades: ``<root>/{train,test}/<stem>.jpg``, photo
on the left, label rendering on the right) are read when ``ab_input`` says which half is the input:
each image is split at the middle, the input half becomes ``inputs/<stem>.png`` (image -> image) and
the other half the target photo. The same split rules apply (train/ + test/, else a random split); other
folders such as pix2pix's val/ are not used (a warning names them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from asap.config import ConfigError, require, require_choice
from asap.data.common import (DONTCARE_VALUE, FITS, DataError, check_sizes, DatasetSpec, PairError, PairSource,
                              PrepareOptions, RawPair, index_array, name_some, open_image, prepare, rgb_array)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
INDEX_EXTS = (".png",)  # class and instance ids must be lossless
SPLIT_DIRS = ("train", "test")
OTHER_SPLIT_NAMES = ("val", "valid", "validation", "eval", "dev", "testing", "training")  # names people use
AB_SIDES = ("left", "right")


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
    ab_input: str | None = None         # side-by-side A|B images: the input half ("left" or "right")

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
        require(self.ab_input is None or self.ab_input in AB_SIDES,
                f"prepare.folders.ab_input must be null (images/ + labels/ or inputs/ folders) or one of "
                f"{list(AB_SIDES)} (side-by-side A|B images: the half that is the input), got {self.ab_input!r}")
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


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTS] \
        if folder.is_dir() else []


def _holds_pairs(folder: Path, ab: bool) -> bool:
    """Does ``folder`` hold the pair layout itself (images/, or A|B images directly)?"""
    return bool(_image_files(folder)) if ab else (folder / "images").is_dir()


def _ab_hint(base: Path) -> str:
    """For a folder that holds images itself where images/ was expected: perhaps A|B images."""
    if not _image_files(base):
        return ""
    return (f"; {base} holds images itself: if they are side-by-side A|B images (pix2pix's format), set "
            "prepare.folders.ab_input to the input half (left or right)")


def split_folders(root: str | Path, ab: bool = False,
                  warn: Callable[[str], None] | None = None) -> list[tuple[Path, str | None]]:
    """[(folder, split)]: (train/, "train") + (test/, "test") when both exist, else [(root, None)] for a
    seeded random split. Split-like folders that do not make that pair (train/ + val/, only train/)
    are a DataError saying how to name them; folders left unused are named in a warning."""
    root = Path(root)
    warn = warn or (lambda message: None)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_like = [d for d in subdirs if d in SPLIT_DIRS or d.lower() in OTHER_SPLIT_NAMES]
    if all((root / d).is_dir() for d in SPLIT_DIRS):
        unused = [f"{root / d}/" for d in split_like if d not in SPLIT_DIRS and _holds_pairs(root / d, ab)]
        if unused:
            warn(f"{name_some(unused)} not used: the splits are {root}/train/ and {root}/test/")
        return [(root / "train", "train"), (root / "test", "test")]
    if _holds_pairs(root, ab):
        unused = [f"{root / d}/" for d in split_like if _holds_pairs(root / d, ab)]
        if unused:
            warn(f"{name_some(unused)} not used: {root} holds the pairs itself (a seeded random split); "
                 "split folders are used only as the pair train/ + test/")
        return [(root, None)]
    if split_like:
        others = [d for d in split_like if d not in SPLIT_DIRS]
        rename = (f"rename {root / others[0]}/ to {root}/test/" if "train" in split_like and others
                  else f"add the missing {' and '.join(f'{root / d}/' for d in SPLIT_DIRS if d not in split_like)}")
        raise DataError(f"folders root {root} has the split folder(s) {', '.join(d + '/' for d in split_like)}, but "
                        f"the split folders must be train/ and test/ (both): {rename}, or put every pair in "
                        f"{root}/ itself for a seeded random split (prepare.folders.test_fraction)")
    return [(root, None)]


def input_kind(root: str | Path, groups: list[tuple[Path, str | None]] | None = None) -> str:
    """'labels' when the folders hold labels/, 'image' when they hold inputs/."""
    root = Path(root)
    kinds = []
    for base, _ in groups or split_folders(root):
        has_labels, has_inputs = (base / "labels").is_dir(), (base / "inputs").is_dir()
        if has_labels == has_inputs:
            raise DataError(f"folder {base} must hold images/ and exactly one of labels/ (class-index maps) "
                            f"or inputs/ (input images); found labels/: {has_labels}, inputs/: {has_inputs}"
                            f"{_ab_hint(base)}")
        kinds.append("labels" if has_labels else "image")
    if len(set(kinds)) > 1:
        raise DataError(f"{root}/train holds {'labels/' if kinds[0] == 'labels' else 'inputs/'} but {root}/test holds "
                        f"{'labels/' if kinds[1] == 'labels' else 'inputs/'}: both splits need the same kind of input")
    return kinds[0]


def list_pairs(root: str | Path, cfg: FoldersConfig, warn: Callable[[str], None] | None = None):
    """(pairs, pairing errors, input kind, has_instances) of the folders; ``warn`` hears about files
    and folders that are left out (stray instance maps, unused split folders)."""
    root = Path(root)
    warn = warn or (lambda message: None)
    if not root.is_dir():
        raise DataError(f"folders root {root} not found (prepare.folders.root)")
    if cfg.ab_input:
        return _list_ab_pairs(root, cfg, warn)
    groups = split_folders(root, warn=warn)
    for base, _ in groups:
        if not (base / "images").is_dir():
            raise DataError(f"folder {base} has no images/ folder: expected {base}/images/<stem>.png|jpg and "
                            f"{base}/labels/<stem>.png (or inputs/){_ab_hint(base)}")
    kind = input_kind(root, groups)
    role_in = "label" if kind == "labels" else "input"
    in_dir = "labels" if kind == "labels" else "inputs"
    with_instances = [base for base, _ in groups if (base / "instances").is_dir()]
    has_instances = kind == "labels" and bool(with_instances)
    if with_instances and kind == "image":
        warn(f"{name_some([f'{b}/instances/' for b in with_instances])} not used: instance maps go with "
             "labels/ (class-index maps), not with inputs/")
    pairs, errors = [], []
    for base, split in groups:
        images = _files(base / "images", IMAGE_EXTS, errors)
        inputs = _files(base / in_dir, INDEX_EXTS if kind == "labels" else IMAGE_EXTS, errors)
        instances = _files(base / "instances", INDEX_EXTS, errors) if has_instances else {}
        stray = sorted(str(instances[s]) for s in set(instances) - set(images) - set(inputs))
        if stray:
            warn(f"{len(stray)} instance map(s) without an image or {role_in} ignored: {name_some(stray)}")
        for stem in sorted(set(images) | set(inputs)):
            if stem not in inputs:
                errors.append((stem, f"{images[stem]}: image without its {role_in} {base / in_dir}/{stem}.*"))
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
    if groups[0][1] is None:
        pairs = _random_split(pairs, cfg, root)
    return pairs, errors, kind, has_instances


def _list_ab_pairs(root: Path, cfg: FoldersConfig, warn: Callable[[str], None]):
    """Side-by-side A|B images directly in the split folders (or the root)."""
    groups = split_folders(root, ab=True, warn=warn)
    pairs, errors = [], []
    for base, split in groups:
        subdirs = [p.name + "/" for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")
                   and (base != root or p.name not in SPLIT_DIRS + OTHER_SPLIT_NAMES)]
        if subdirs:
            warn(f"{base}: sub-folder(s) {name_some(subdirs)} not used: with prepare.folders.ab_input the A|B "
                 f"images lie in {base}/ itself")
        files = _files(base, IMAGE_EXTS, errors)
        if not files:
            raise DataError(f"folder {base} holds no A|B images ({', '.join(IMAGE_EXTS)}): prepare.folders.ab_input "
                            f"is {cfg.ab_input!r}, so side-by-side images are expected in {base}/ itself")
        pairs += [PairSource(stem=stem, split=split or "", files=(("ab", str(path)),), ref=(cfg.ab_input,))
                  for stem, path in files.items()]
    if groups[0][1] is None:
        pairs = _random_split(pairs, cfg, root)
    return pairs, errors, "image", False


def _random_split(pairs: list[PairSource], cfg: FoldersConfig, root: Path) -> list[PairSource]:
    n = len(pairs)
    n_test = max(1, math.floor(n * cfg.test_fraction + 0.5))
    if n < 2 or n_test >= n:
        raise DataError(f"folders root {root} holds {n} pair(s): too few for a train and a test split "
                        f"(test_fraction {cfg.test_fraction})")
    test = set(np.random.default_rng(cfg.seed).permutation(n)[:n_test].tolist())
    return [PairSource(p.stem, "test" if i in test else "train", p.files, p.ref) for i, p in enumerate(pairs)]


def split_ab(ab: np.ndarray, input_side: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) side-by-side A|B image -> (input half, target half), split at the middle."""
    w = ab.shape[1]
    if w % 2:
        raise PairError(name, f"is {w} px wide: a side-by-side A|B image (prepare.folders.ab_input) has two "
                              "halves of equal width; is this really an A|B pair?")
    left, right = ab[:, :w // 2], ab[:, w // 2:]
    return (left, right) if input_side == "left" else (right, left)


def load_pair(src: PairSource) -> RawPair:
    files = dict(src.files)
    if "ab" in files:
        inp, image = split_ab(rgb_array(open_image(files["ab"], files["ab"])), src.ref[0], files["ab"])
        return RawPair(image=np.ascontiguousarray(image), input=np.ascontiguousarray(inp))
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
    root = Path(root)
    given_splits = split_folders(root, ab=bool(cfg.ab_input))[0][1] is not None
    source = {"path": str(root), "split": "folders" if given_splits else "random",
              "seed": cfg.seed, "test_fraction": cfg.test_fraction}
    if cfg.ab_input:
        source["ab_input"] = cfg.ab_input
    if kind == "image":
        return DatasetSpec(dataset=cfg.name, input_kind="image", num_classes=3,
                           label_names=("red", "green", "blue"), input_png_channels=3, source=source)
    if cfg.num_classes is None:
        label_dirs = [f"{root / d / 'labels'}/" for d in SPLIT_DIRS] if given_splits else [f"{root / 'labels'}/"]
        raise ConfigError(f"prepare.folders.num_classes is required: {' and '.join(label_dirs)} hold class-index "
                          "maps (values 0..num_classes-1); set it to the number of classes (the largest label "
                          "value + 1)")
    names = cfg.label_names or tuple(f"class_{k}" for k in range(cfg.num_classes))
    allowed = tuple(range(cfg.num_classes)) + ((DONTCARE_VALUE,) if cfg.dontcare else ())
    return DatasetSpec(dataset=cfg.name, input_kind="labels", num_classes=cfg.num_classes,
                       label_names=names, allowed_labels=allowed, dontcare=cfg.dontcare,
                       dontcare_setting="prepare.folders.dontcare", instance_edge=has_instances, source=source)


def prepare_folders(root: str | Path, out_dir: str | Path, cfg: FoldersConfig, opts: PrepareOptions,
                    log: Callable[[str], None] | None = None) -> dict:
    log = log or (lambda message: print(message, flush=True))
    pairs, errors, kind, has_instances = list_pairs(root, cfg, warn=lambda message: log(f"warning: {message}"))
    return prepare(spec(root, cfg, kind, has_instances), pairs, load_pair, out_dir, opts,
                   pairing_errors=errors, log=log)
