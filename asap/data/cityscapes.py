"""Cityscapes (Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016)
from a local root in the official on-disk layout:

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png

train (2975) becomes our train split and val (500) our test split, as in the paper (Sec. 4). The label
maps keep Cityscapes' 35 label ids (0..33, and 34 for the license plate, which cityscapesScripts gives
id -1), as pix2pixHD and SPADE do (label_nc = 35). The instance ids (16-bit PNG; id // 1000 is the
label, id % 1000 the instance) are turned into pix2pixHD's boundary map after resizing. Cityscapes
ships no public labels for its test split, so it is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from asap.config import require, require_choice
from asap.data.common import (FITS, DataError, check_sizes, DatasetSpec, PairSource, PrepareOptions, RawPair,
                              index_array, open_image, prepare, rgb_array)

CITATION = ("Marius Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, "
            "CVPR 2016")
NUM_CLASSES = 35
# label id -> name (cityscapesScripts labels.py); id 34 stands for the license plate (id -1 there)
LABEL_NAMES = ("unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic",
               "ground", "road", "sidewalk", "parking", "rail track", "building", "wall", "fence",
               "guard rail", "bridge", "tunnel", "pole", "polegroup", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "caravan",
               "trailer", "train", "motorcycle", "bicycle", "license plate")
SPLITS = {"train": "train", "val": "test"}  # Cityscapes folder -> our split
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"


@dataclass(frozen=True)
class CityscapesConfig:
    """params.yaml ``prepare.cityscapes``."""
    root: str | None = None             # folder holding leftImg8bit/ and gtFine/; None: not prepared
    sizes: tuple[str, ...] = ()         # HxW; paper: 256x512 and 512x1024 (Sec. 4)
    fit: str = "stretch"                # 2048x1024 sources: stretch and crop agree at 1:2 sizes

    def __post_init__(self):
        object.__setattr__(self, "sizes", check_sizes("prepare.cityscapes.sizes", self.sizes))
        require_choice("prepare.cityscapes.fit", self.fit, set(FITS))
        require(not self.sizes or bool(self.root),
                "prepare.cityscapes.sizes is set but prepare.cityscapes.root is null: set root to the "
                "folder holding leftImg8bit/ and gtFine/")


def list_pairs(root: str | Path):
    """(pairs, pairing errors) of a Cityscapes root; a DataError when the layout is not there."""
    root = Path(root)
    for sub in ("leftImg8bit", "gtFine"):
        if not (root / sub).is_dir():
            raise DataError(f"Cityscapes root {root} has no {sub}/ folder: expected the official layout "
                            f"{root}/leftImg8bit/{{train,val}}/<city>/*{IMAGE_SUFFIX} and "
                            f"{root}/gtFine/{{train,val}}/<city>/*{LABEL_SUFFIX}")
    pairs, errors = [], []
    for folder, split in SPLITS.items():
        images = _by_prefix(root / "leftImg8bit" / folder, IMAGE_SUFFIX)
        labels = _by_prefix(root / "gtFine" / folder, LABEL_SUFFIX)
        instances = _by_prefix(root / "gtFine" / folder, INSTANCE_SUFFIX)
        for stem in sorted(set(images) | set(labels)):
            if stem not in images:
                errors.append((stem, f"{labels[stem]}: label map without its photo "
                                     f"leftImg8bit/{folder}/<city>/{stem}{IMAGE_SUFFIX}"))
            elif stem not in labels:
                errors.append((stem, f"{images[stem]}: photo without its label map "
                                     f"gtFine/{folder}/<city>/{stem}{LABEL_SUFFIX}"))
            elif stem not in instances:
                errors.append((stem, f"{images[stem]}: photo without its instance map "
                                     f"gtFine/{folder}/<city>/{stem}{INSTANCE_SUFFIX}"))
            else:
                files = (("image", str(images[stem])), ("label", str(labels[stem])),
                         ("instance", str(instances[stem])))
                pairs.append(PairSource(stem=stem, split=split, files=files))
    if not pairs and not errors:
        raise DataError(f"Cityscapes root {root} holds no *{IMAGE_SUFFIX} under leftImg8bit/train or "
                        "leftImg8bit/val")
    return pairs, errors


def _by_prefix(folder: Path, suffix: str) -> dict[str, Path]:
    """{<city>_<seq>_<frame>: path} of the files ending in ``suffix`` in the city folders."""
    if not folder.is_dir():
        return {}
    return {p.name[:-len(suffix)]: p for p in folder.glob(f"*/*{suffix}")}


def load_pair(src: PairSource) -> RawPair:
    image = rgb_array(open_image(src.file("image"), src.file("image")))
    label = index_array(open_image(src.file("label"), src.file("label")), src.file("label"))
    instance = index_array(open_image(src.file("instance"), src.file("instance")), src.file("instance"))
    return RawPair(image=image, label=label, instance=instance)


def spec(root: str | Path) -> DatasetSpec:
    return DatasetSpec(dataset="cityscapes", input_kind="labels", num_classes=NUM_CLASSES,
                       label_names=LABEL_NAMES, allowed_labels=tuple(range(NUM_CLASSES)),
                       instance_edge=True,
                       source={"path": str(root), "splits": {"train": "train", "test": "val"},
                               "citation": CITATION})


def prepare_cityscapes(root: str | Path, out_dir: str | Path, opts: PrepareOptions,
                       log: Callable[[str], None] | None = None) -> dict:
    pairs, errors = list_pairs(root)
    return prepare(spec(root), pairs, load_pair, out_dir, opts, pairing_errors=errors, log=log)
