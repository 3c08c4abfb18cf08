"""Custom paired folders: label -> image and image -> image, given or random splits, and each bad-input
case failing by name before any output is written (or skipped on request)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from asap.config import ConfigError
from asap.data import folders
from asap.data.common import DataError, PrepareOptions
from asap.data.prepared import PreparedDataset
from data_helpers import assert_nearest_resize, png

H, W = 20, 30


def write_pair(base, stem, seed, num_classes=5, label=None, kind="labels", image_size=(H, W)):
    rng = np.random.default_rng(seed)
    (base / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)).save(base / "images" / f"{stem}.jpg")
    if kind == "labels":
        (base / "labels").mkdir(exist_ok=True)
        label = rng.integers(0, num_classes, (H, W)).astype(np.uint8) if label is None else label
        Image.fromarray(label).save(base / "labels" / f"{stem}.png")
        return label
    (base / "inputs").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(base / "inputs" / f"{stem}.png")


def make_root(tmp_path, n=10, **kw):
    root = tmp_path / "mine"
    labels = {f"p{i:02d}": write_pair(root, f"p{i:02d}", i, **kw) for i in range(n)}
    return root, labels


def prepare(root, out, skip_bad=False, size=(10, 16), **cfg):
    cfg = folders.FoldersConfig(root=str(root), **{"num_classes": 5, **cfg})
    logs = []
    info = folders.prepare_folders(root, out, cfg, PrepareOptions(*size, workers=2, skip_bad=skip_bad),
                                   log=logs.append)
    return info, "\n".join(logs)


def test_labels_with_a_seeded_random_split(tmp_path):
    root, labels = make_root(tmp_path)
    out = tmp_path / "custom-10x16"
    info, _ = prepare(root, out, label_names=[f"c{k}" for k in range(5)], test_fraction=0.2, seed=3)
    assert info["splits"] == {"train": 8, "test": 2} and info["label_names"][4] == "c4"
    test = sorted(p.stem for p in (out / "test" / "labels").glob("*.png"))
    prepare(root, tmp_path / "again-10x16", test_fraction=0.2, seed=3)
    assert test == sorted(p.stem for p in (tmp_path / "again-10x16" / "test" / "labels").glob("*.png"))
    for stem in test:
        assert_nearest_resize(labels[stem], png(out / "test" / "labels" / f"{stem}.png"))
    item = PreparedDataset(out, "train")[0]
    assert item["label"].shape == (10, 16) and item["image"].shape == (3, 10, 16)


def test_given_train_and_test_folders_and_image_inputs(tmp_path):
    root = tmp_path / "pairs"
    for i in range(3):
        write_pair(root / "train", f"a{i}", i, kind="image")
    write_pair(root / "test", "b0", 9, kind="image")
    info, _ = prepare(root, tmp_path / "pairs-10x16")
    assert info["splits"] == {"train": 3, "test": 1}
    assert info["input_kind"] == "image" and info["num_classes"] == 3
    item = PreparedDataset(tmp_path / "pairs-10x16", "test")[0]
    assert item["name"] == "b0" and item["input"].shape == (3, 10, 16)


def test_dontcare_value_is_allowed_only_when_asked(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[:5] = 255
    root, _ = make_root(tmp_path, n=4)
    write_pair(root, "p01", 1, label=label)
    with pytest.raises(DataError, match=r"p01\.png: label values \[255\] are outside the allowed range 0\.\.4"):
        prepare(root, tmp_path / "x-10x16", test_fraction=0.25)
    info, _ = prepare(root, tmp_path / "x-10x16", test_fraction=0.25, dontcare=True)
    assert info["dontcare"] and info["label_values"][-1] == 255


@pytest.mark.parametrize("case,match", [
    ("unpaired", r"images/p03\.jpg: image without its label"),
    ("corrupt", r"images/p03\.jpg: cannot be decoded"),
    ("out_of_range", r"labels/p03\.png: label values \[7\] are outside the allowed range 0\.\.4"),
    ("size", r"labels/p03\.png: is 30x20 \(WxH\) but its image .*p03\.jpg is 31x20"),
    ("colour", r"labels/p03\.png: expected a single-channel index map \(PNG mode L, P or I\), got mode RGB"),
    ("lossy_label", r"labels/p03\.jpg: unexpected file type '\.jpg'"),
])
def test_bad_pairs_fail_before_any_output_and_can_be_skipped(tmp_path, case, match):
    root, _ = make_root(tmp_path)
    if case == "unpaired":
        (root / "labels" / "p03.png").unlink()
    elif case == "corrupt":
        (root / "images" / "p03.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    elif case == "out_of_range":
        label = np.zeros((H, W), np.uint8)
        label[4, 4] = 7
        Image.fromarray(label).save(root / "labels" / "p03.png")
    elif case == "size":
        write_pair(root, "p03", 3, image_size=(H, W + 1))
    elif case == "colour":
        Image.new("RGB", (W, H)).save(root / "labels" / "p03.png")
    elif case == "lossy_label":
        (root / "labels" / "p03.png").rename(root / "labels" / "p03.jpg")
    out = tmp_path / "prepared" / "custom-10x16"
    with pytest.raises(DataError, match=match):
        prepare(root, out)
    assert not out.exists() and not list(tmp_path.glob("prepared/*"))
    info, log = prepare(root, out, skip_bad=True)
    assert "p03" in [s["stem"] for s in info["skipped"]] and "skipped" in log
    assert sum(info["splits"].values()) == 9 and not list(out.glob("*/*/p03.png"))


def test_settings_are_checked(tmp_path):
    root, _ = make_root(tmp_path, n=4)
    with pytest.raises(ConfigError, match=r"num_classes is required"):
        prepare(root, tmp_path / "x-10x16", num_classes=None)
    with pytest.raises(ConfigError, match=r"test_fraction must be in \(0, 1\)"):
        folders.FoldersConfig(root=str(root), test_fraction=1.5)
    with pytest.raises(ConfigError, match=r"label_names has 2 names but num_classes is 5"):
        folders.FoldersConfig(root=str(root), num_classes=5, label_names=["a", "b"])
    (root / "inputs").mkdir()
    with pytest.raises(DataError, match=r"exactly one of labels/ .* or inputs/"):
        prepare(root, tmp_path / "x-10x16")
