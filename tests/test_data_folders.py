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


# -- the messages users see ----------------------------------------------------------------------

def test_num_classes_required_names_the_label_folders_that_exist(tmp_path):
    root = tmp_path / "pairs"
    for i in range(2):
        write_pair(root / "train", f"a{i}", i)
    write_pair(root / "test", "b0", 9)
    with pytest.raises(ConfigError) as err:
        prepare(root, tmp_path / "x-10x16", num_classes=None)
    message = str(err.value)
    assert f"{root}/train/labels/ and {root}/test/labels/ hold class-index maps" in message
    assert f"{root}/labels" not in message and "set it to the number of classes" in message


@pytest.mark.parametrize("folders_made,match", [
    (("train", "val"), r"has the split folder\(s\) train/, val/, but the split folders must be train/ and test/ "
                       r"\(both\): rename .*/pairs/val/ to .*/pairs/test/, or put every pair in .*/pairs/ itself"),
    (("train",), r"has the split folder\(s\) train/, but the split folders must be train/ and test/ \(both\): "
                 r"add the missing .*/pairs/test/"),
])
def test_split_folders_other_than_train_and_test_are_named(tmp_path, folders_made, match):
    root = tmp_path / "pairs"
    for k, name in enumerate(folders_made):
        write_pair(root / name, f"{name}0", k)
    with pytest.raises(DataError, match=match) as err:
        prepare(root, tmp_path / "x-10x16")
    assert "has no images/ folder" not in str(err.value)


def test_unused_split_folder_is_named_in_a_warning(tmp_path):
    root = tmp_path / "pairs"
    for i in range(2):
        write_pair(root / "train", f"a{i}", i)
    write_pair(root / "test", "b0", 9)
    write_pair(root / "val", "c0", 8)
    info, log = prepare(root, tmp_path / "x-10x16")
    assert info["splits"] == {"train": 2, "test": 1}
    assert f"warning: {root}/val/ not used: the splits are {root}/train/ and {root}/test/" in log


def test_out_of_range_message_gives_ranges_not_every_allowed_value(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[2, 3] = 200
    root, _ = make_root(tmp_path, n=4)
    write_pair(root, "p01", 1, label=label)
    with pytest.raises(DataError) as err:
        prepare(root, tmp_path / "x-10x16", test_fraction=0.25, num_classes=182, dontcare=True)
    line = next(l for l in str(err.value).splitlines() if "p01.png" in l)
    assert line.endswith("labels/p01.png: label values [200] are outside the allowed range 0..181 "
                         "and 255 (don't care)")


@pytest.mark.parametrize("allowed,dontcare,want", [
    (range(5), False, "range 0..4"),
    ([*range(182), 255], True, "range 0..181 and 255 (don't care)"),
    ([*range(182), 255], False, "values 0..181, 255"),
    ([0, 1, 2, 7, 9, 10], False, "values 0..2, 7, 9..10"),
])
def test_describe_values_as_ranges(allowed, dontcare, want):
    from asap.data.common import describe_values
    assert describe_values(list(allowed), dontcare) == want


def test_value_255_without_dontcare_says_which_setting_keeps_it(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[:3] = 255
    root, _ = make_root(tmp_path, n=4)
    write_pair(root, "p02", 2, label=label)
    with pytest.raises(DataError, match=r"labels/p02\.png: label values \[255\] are outside the allowed range "
                                        r"0\.\.4; 255 usually marks \"don't care\" pixels: set "
                                        r"prepare\.folders\.dontcare: true"):
        prepare(root, tmp_path / "x-10x16", test_fraction=0.25)
    label[0, 0] = 9  # 9 is no don't-care value: no hint about it
    write_pair(root, "p02", 2, label=label)
    with pytest.raises(DataError, match=r"label values \[9, 255\] are outside .*set prepare\.folders\.dontcare"):
        prepare(root, tmp_path / "x-10x16", test_fraction=0.25)
    label[:3] = 9
    write_pair(root, "p02", 2, label=label)
    with pytest.raises(DataError) as err:
        prepare(root, tmp_path / "x-10x16", test_fraction=0.25)
    assert "dontcare" not in str(err.value)


def test_stray_instance_maps_and_unused_folders_are_named_in_warnings(tmp_path):
    root, _ = make_root(tmp_path, n=4)
    (root / "instances").mkdir()
    for stem in ("p00", "p01", "p02", "p03", "zz_stray"):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "instances" / f"{stem}.png")
    info, log = prepare(root, tmp_path / "x-10x16", test_fraction=0.25)
    assert info["instance_edge"] and sum(info["splits"].values()) == 4
    assert (f"warning: 1 instance map(s) without an image or label ignored: {root}/instances/zz_stray.png"
            in log)
    # image inputs: instance maps do not apply, and the folder is named
    img_root = tmp_path / "imgs"
    for i in range(4):
        write_pair(img_root, f"q{i}", i, kind="image")
    (img_root / "instances").mkdir()
    info, log = prepare(img_root, tmp_path / "y-10x16", test_fraction=0.25)
    assert not info["instance_edge"]
    assert f"warning: {img_root}/instances/ not used: instance maps go with labels/" in log


# -- side-by-side A|B images (pix2pix's format) ----------------------------------------------------

def write_ab(folder, stem, seed, width=2 * W):
    """A|B image: a left half and a right half from different random images (PNG: lossless)."""
    rng = np.random.default_rng(seed)
    left = rng.integers(0, 128, (H, width // 2, 3), dtype=np.uint8)         # darker
    right = rng.integers(128, 256, (H, width - width // 2, 3), dtype=np.uint8)  # brighter
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(folder / f"{stem}.png")
    return left, right


@pytest.mark.parametrize("side", ["left", "right"])
def test_ab_images_split_at_the_middle_into_input_and_target(tmp_path, side):
    root = tmp_path / "facades_pix2pix"  # pix2pix layout: train/, val/, test/ with A|B images in them
    halves = {}
    for i in range(3):
        halves[f"t{i}"] = write_ab(root / "train", f"t{i}", i)
    halves["s0"] = write_ab(root / "test", "s0", 7)
    write_ab(root / "val", "v0", 8)
    out = tmp_path / "ab-20x30"
    info, log = prepare(root, out, size=(H, W), ab_input=side, num_classes=None)  # same size: no resampling
    assert info["input_kind"] == "image" and info["splits"] == {"train": 3, "test": 1}
    assert info["source"]["ab_input"] == side and info["source"]["split"] == "folders"
    assert f"warning: {root}/val/ not used" in log
    for stem, (left, right) in halves.items():
        split = "test" if stem == "s0" else "train"
        want_input, want_image = (left, right) if side == "left" else (right, left)
        assert np.array_equal(png(out / split / "inputs" / f"{stem}.png"), want_input)
        assert np.array_equal(png(out / split / "images" / f"{stem}.png"), want_image)
    item = PreparedDataset(out, "test")[0]
    assert item["input"].shape == (3, H, W) and item["image"].shape == (3, H, W)


def test_ab_images_in_the_root_get_a_random_split(tmp_path):
    root = tmp_path / "ab"
    for i in range(10):
        write_ab(root, f"x{i}", i)
    info, _ = prepare(root, tmp_path / "ab-10x16", ab_input="right", test_fraction=0.2)
    assert info["splits"] == {"train": 8, "test": 2} and info["source"]["split"] == "random"


def test_ab_image_of_odd_width_is_named(tmp_path):
    root = tmp_path / "ab"
    for i in range(4):
        write_ab(root, f"x{i}", i)
    write_ab(root, "x2", 2, width=2 * W + 1)
    with pytest.raises(DataError, match=r"ab/x2\.png: is 61 px wide: a side-by-side A\|B image "
                                        r"\(prepare\.folders\.ab_input\) has two halves of equal width"):
        prepare(root, tmp_path / "ab-10x16", ab_input="left", test_fraction=0.25)


def test_ab_images_without_ab_input_say_how_to_read_them(tmp_path):
    root = tmp_path / "ab"
    for i in range(4):
        write_ab(root, f"x{i}", i)
    with pytest.raises(DataError, match=r"has no images/ folder: .* holds images itself: if they are "
                                        r"side-by-side A\|B images \(pix2pix's format\), set "
                                        r"prepare\.folders\.ab_input to the input half \(left or right\)"):
        prepare(root, tmp_path / "ab-10x16")
    with pytest.raises(ConfigError, match=r"prepare\.folders\.ab_input must be null .* or one of \['left', "
                                          r"'right'\] .*got 'A'"):
        folders.FoldersConfig(root=str(root), ab_input="A")
    # ab_input set on the images/ + labels/ layout: no A|B images where they should be
    labels_root, _ = make_root(tmp_path, n=4)
    with pytest.raises(DataError, match=r"holds no A\|B images .* prepare\.folders\.ab_input is 'left'"):
        prepare(labels_root, tmp_path / "c-10x16", ab_input="left")
