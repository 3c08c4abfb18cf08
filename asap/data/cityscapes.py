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
                              index_array, name_some, open_image, prepare, rgb_array)

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


# gtFine files per frame besides the two this reader takes (not warned about); the label maps of another
# kind are named, with what they are, when a frame's labelIds are missing
OTHER_GT = ("_gtFine_color.png", "_gtFine_polygons.json", "_gtFine_labelTrainIds.png", "_gtFine_instanceTrainIds.png")
OTHER_LABELS = {"_gtFine_color.png": "the colour rendering of the labels",
                "_gtFine_labelTrainIds.png": "the 19 train ids (cityscapesScripts createTrainIdLabelImgs)"}


def list_pairs(root: str | Path, warn: Callable[[str], None] | None = None):
    """(pairs, pairing errors) of a Cityscapes root; a DataError when the layout is not there. ``warn``
    hears about files that are left out (stray instance maps, files of an unknown type)."""
    root = Path(root)
    warn = warn or (lambda message: None)
    layout = (f"{root}/leftImg8bit/{{train,val}}/<city>/*{IMAGE_SUFFIX} and "
              f"{root}/gtFine/{{train,val}}/<city>/*{LABEL_SUFFIX}")
    if not root.exists():
        raise DataError(f"Cityscapes root {root} does not exist: set prepare.cityscapes.root (or --source) to the "
                        f"folder holding leftImg8bit/ and gtFine/, the official layout {layout}")
    if not root.is_dir():
        raise DataError(f"Cityscapes root {root} is a file, not a folder: unzip leftImg8bit_trainvaltest.zip and "
                        f"gtFine_trainvaltest.zip into one folder and point prepare.cityscapes.root at it")
    for sub in ("leftImg8bit", "gtFine"):
        if not (root / sub).is_dir():
            raise DataError(f"Cityscapes root {root} has no {sub}/ folder: expected the official layout {layout}")
    pairs, errors = [], []
    for folder, split in SPLITS.items():
        photo_files, other_photos = _by_suffix(root / "leftImg8bit" / folder, (IMAGE_SUFFIX,))
        gt_files, other_gt = _by_suffix(root / "gtFine" / folder, (LABEL_SUFFIX, INSTANCE_SUFFIX, *OTHER_GT))
        images, labels, instances = photo_files[IMAGE_SUFFIX], gt_files[LABEL_SUFFIX], gt_files[INSTANCE_SUFFIX]
        wrong_type: dict[str, list[str]] = {}  # stem -> its label files of another kind
        for suffix, what in OTHER_LABELS.items():
            for stem, p in gt_files[suffix].items():
                wrong_type.setdefault(stem, []).append(f"{p.name} ({what})")
        unknown = other_photos + other_gt
        if unknown:
            warn(f"{len(unknown)} file(s) of an unknown type in {root}/leftImg8bit/{folder} or gtFine/{folder} "
                 f"ignored (expected <city>/*{IMAGE_SUFFIX}, *{LABEL_SUFFIX}, *{INSTANCE_SUFFIX}): "
                 f"{name_some(sorted(map(str, unknown)))}")
        stray = sorted(str(instances[s]) for s in set(instances) - set(images) - set(labels))
        if stray:
            warn(f"{len(stray)} instance map(s) without a photo or label map ignored: {name_some(stray)}")

        def expected(sub: str, stem: str, suffix: str, near: Path, folder=folder) -> str:
            """Where the missing file should be: in the city folder of the file that is there."""
            return f"{root}/{sub}/{folder}/{near.parent.name}/{stem}{suffix}"

        for stem in sorted(set(images) | set(labels)):
            if stem not in images:
                errors.append((stem, f"{labels[stem]}: label map without its photo "
                                     f"{expected('leftImg8bit', stem, IMAGE_SUFFIX, labels[stem])}"))
            elif stem not in labels:
                found = (f"; found only {', '.join(wrong_type[stem])}: this reader needs the 35 label ids of "
                         f"*{LABEL_SUFFIX} (gtFine_trainvaltest.zip)") if stem in wrong_type else ""
                errors.append((stem, f"{images[stem]}: photo without its label map "
                                     f"{expected('gtFine', stem, LABEL_SUFFIX, images[stem])}{found}"))
            elif stem not in instances:
                errors.append((stem, f"{images[stem]}: photo without its instance map "
                                     f"{expected('gtFine', stem, INSTANCE_SUFFIX, images[stem])}"))
            else:
                files = (("image", str(images[stem])), ("label", str(labels[stem])),
                         ("instance", str(instances[stem])))
                pairs.append(PairSource(stem=stem, split=split, files=files))
    if not pairs and not errors:
        raise DataError(f"Cityscapes root {root} holds no *{IMAGE_SUFFIX} under leftImg8bit/train or "
                        f"leftImg8bit/val: expected the official layout {layout}")
    return pairs, errors


def _by_suffix(folder: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, dict[str, Path]], list[Path]]:
    """({suffix: {<city>_<seq>_<frame>: path}} of the files in the city folders of ``folder``, the files
    that end in none of ``suffixes`` or lie outside a city folder)."""
    found: dict[str, dict[str, Path]] = {suffix: {} for suffix in suffixes}
    other: list[Path] = []
    if not folder.is_dir():
        return found, other
    for p in sorted(folder.glob("*/*")) + sorted(q for q in folder.iterdir() if q.is_file()):
        if not p.is_file() or p.name.startswith("."):
            continue
        suffix = next((x for x in suffixes if p.name.endswith(x)), None)
        if suffix and p.parent != folder:
            found[suffix][p.name[:-len(suffix)]] = p
        else:
            other.append(p)
    return found, other


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
    log = log or (lambda message: print(message, flush=True))
    pairs, errors = list_pairs(root, warn=lambda message: log(f"warning: {message}"))
    return prepare(spec(root), pairs, load_pair, out_dir, opts, pairing_errors=errors, log=log)
