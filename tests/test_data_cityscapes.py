"""Cityscapes preparation on a tiny fixture in the official on-disk layout (leftImg8bit/ + gtFine/ with
labelIds and 16-bit instanceIds PNGs, plus the files the reader must ignore)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from asap.data import cityscapes
from asap.data.common import DataError, PrepareOptions
from asap.data.prepared import PreparedDataset
from data_helpers import assert_smooth_resize, png

H, W = 32, 64                      # source size (Cityscapes' 1:2 aspect, scaled down from 1024x2048)
FRAMES = {"train": [("aachen", "000000_000019"), ("aachen", "000001_000019"), ("bochum", "000000_000313")],
          "val": [("frankfurt", "000000_000294"), ("lindau", "000000_000019")]}


def small_maps(seed):
    """Label and instance maps at (H/2, W/2); the fixture stores them 2x2-block upsampled, so a nearest
    resize by 2 must give them back exactly, whichever pixel of a block it picks."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 34, (H // 2, W // 2)).astype(np.uint8)
    label[:4, :] = 7                                                # road (stuff: instance id = label id)
    instance = label.astype(np.int32)
    instance[4:10, 3:12] = 26 * 1000 + 1                            # car #1 (id = label * 1000 + instance)
    instance[8:14, 10:20] = 26 * 1000 + 2                           # car #2, overlapping #1
    instance[10:, 22:] = 24 * 1000 + 0                              # person #0
    return label, instance


def write_frame(root, folder, city, frame, seed, label=None, instance=None, image_size=(H, W)):
    prefix = f"{city}_{frame}"
    img_dir, gt_dir = root / "leftImg8bit" / folder / city, root / "gtFine" / folder / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(100 + seed)
    photo = rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)
    Image.fromarray(photo).save(img_dir / f"{prefix}_leftImg8bit.png")
    small_label, small_instance = small_maps(seed)
    label = np.kron(small_label, np.ones((2, 2), np.uint8)) if label is None else label
    instance = np.kron(small_instance, np.ones((2, 2), np.int32)) if instance is None else instance
    Image.fromarray(label, mode="L").save(gt_dir / f"{prefix}_gtFine_labelIds.png")
    # instanceIds are 16-bit grayscale PNGs (ids up to 33999)
    Image.fromarray(instance.astype(np.uint16)).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")
    Image.fromarray(photo).save(gt_dir / f"{prefix}_gtFine_color.png")           # ignored
    (gt_dir / f"{prefix}_gtFine_polygons.json").write_text("{}")                 # ignored
    return photo


def make_root(tmp_path):
    root = tmp_path / "cityscapes"
    photos = {}
    for seed, (folder, city, frame) in enumerate(
            (folder, city, frame) for folder, frames in FRAMES.items() for city, frame in frames):
        photos[f"{city}_{frame}"] = (write_frame(root, folder, city, frame, seed), seed)
    # the test split has no public labels and must be ignored
    (root / "leftImg8bit" / "test" / "berlin").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png")
    return root, photos


def naive_edges(instance):
    """1 where any 4-neighbour has another id, by a per-pixel loop."""
    h, w = instance.shape
    out = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and instance[yy, xx] != instance[y, x]:
                    out[y, x] = 1
    return out


def prepare(root, out, skip_bad=False):
    logs = []
    info = cityscapes.prepare_cityscapes(root, out, PrepareOptions(H // 2, W // 2, workers=2, skip_bad=skip_bad),
                                         log=logs.append)
    return info, "\n".join(logs)


def test_official_layout_prepares_labels_edges_and_photos(tmp_path):
    root, photos = make_root(tmp_path)
    out = tmp_path / "prepared" / f"cityscapes-{H // 2}x{W // 2}"
    info, _ = prepare(root, out)
    assert info["splits"] == {"train": 3, "test": 2}
    assert info["num_classes"] == 35 and len(info["label_names"]) == 35 and info["instance_edge"]
    assert info["label_names"][26] == "car" and not info["dontcare"]
    for stem, (photo, seed) in photos.items():
        split = "train" if stem.split("_")[0] in ("aachen", "bochum") else "test"
        small_label, small_instance = small_maps(seed)
        assert np.array_equal(png(out / split / "labels" / f"{stem}.png"), small_label)
        edges = png(out / split / "edges" / f"{stem}.png")
        assert set(np.unique(edges).tolist()) == {0, 255}
        assert np.array_equal(edges // 255, naive_edges(small_instance))
        assert_smooth_resize(photo, png(out / split / "images" / f"{stem}.png"))
    assert not (out / "test" / "labels" / "berlin_000000_000019.png").exists()

    item = PreparedDataset(out, "train")[0]
    assert item["name"] == "aachen_000000_000019"
    assert item["edge"].shape == (1, H // 2, W // 2) and set(item["edge"].unique().tolist()) == {0.0, 1.0}
    assert item["label"].dtype == torch.long and int(item["label"].max()) < 35


def test_bad_label_value_fails_then_skips(tmp_path):
    root, _ = make_root(tmp_path)
    label = np.full((H, W), 7, np.uint8)
    label[3, 5] = 40
    write_frame(root, "train", "bochum", "000000_000313", 1, label=label)
    out = tmp_path / "prepared" / "cityscapes-16x32"
    with pytest.raises(DataError, match=r"bochum_000000_000313_gtFine_labelIds\.png: label values \[40\] "
                                        r"are outside the allowed range 0\.\.34"):
        prepare(root, out)
    assert not out.exists()
    info, log = prepare(root, out, skip_bad=True)
    assert info["splits"] == {"train": 2, "test": 2}
    assert info["skipped"][0]["stem"] == "bochum_000000_000313" and "skipped 1 bad pair" in log


@pytest.mark.parametrize("case,match", [
    ("no_instances", r"lindau_000000_000019_leftImg8bit\.png: photo without its instance map"),
    ("no_photo", r"lindau_000000_000019_gtFine_labelIds\.png: label map without its photo"),
    ("size", r"lindau_000000_000019_gtFine_labelIds\.png: is 32x16 \(WxH\) but its image .* is 64x32"),
    ("corrupt", r"lindau_000000_000019_leftImg8bit\.png: cannot be decoded"),
])
def test_bad_pairs_fail_naming_the_file(tmp_path, case, match):
    root, _ = make_root(tmp_path)
    gt = root / "gtFine" / "val" / "lindau"
    photo = root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png"
    if case == "no_instances":
        (gt / "lindau_000000_000019_gtFine_instanceIds.png").unlink()
    elif case == "no_photo":
        photo.unlink()
    elif case == "size":
        write_frame(root, "val", "lindau", "000000_000019", 3, label=np.zeros((H // 2, W // 2), np.uint8))
    elif case == "corrupt":
        photo.write_bytes(photo.read_bytes()[:60])
    out = tmp_path / "prepared" / "cityscapes-16x32"
    with pytest.raises(DataError, match=match):
        prepare(root, out)
    assert not out.exists() and not list(tmp_path.glob("prepared/*"))


def test_not_a_cityscapes_root(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(DataError, match=r"has no gtFine/ folder: expected the official layout"):
        cityscapes.list_pairs(tmp_path)


def test_missing_root_is_reported_as_missing(tmp_path):
    with pytest.raises(DataError) as err:
        cityscapes.list_pairs(tmp_path / "nowhere")
    message = str(err.value)
    assert message.startswith(f"Cityscapes root {tmp_path / 'nowhere'} does not exist: set "
                              "prepare.cityscapes.root (or --source) to the folder holding leftImg8bit/ and gtFine/")
    assert "has no leftImg8bit/ folder" not in message
    (tmp_path / "leftImg8bit_trainvaltest.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"leftImg8bit_trainvaltest\.zip is a file, not a folder: unzip"):
        cityscapes.list_pairs(tmp_path / "leftImg8bit_trainvaltest.zip")


@pytest.mark.parametrize("case,want", [
    ("no_photo", "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png: label map without its photo "
                 "{root}/leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"),
    ("no_label", "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png: photo without its label map "
                 "{root}/gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"),
    ("no_instances", "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png: photo without its instance map "
                     "{root}/gtFine/val/lindau/lindau_000000_000019_gtFine_instanceIds.png"),
    # a label file of another type where the labelIds should be: named, with what it is
    ("train_ids", "photo without its label map {root}/gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png; "
                  "found only lindau_000000_000019_gtFine_color.png (the colour rendering of the labels), "
                  "lindau_000000_000019_gtFine_labelTrainIds.png (the 19 train ids"),
])
def test_pairing_messages_name_the_real_city_folder(tmp_path, case, want):
    root, _ = make_root(tmp_path)
    gt = root / "gtFine" / "val" / "lindau"
    if case == "no_photo":
        (root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png").unlink()
    elif case == "no_label":
        (gt / "lindau_000000_000019_gtFine_labelIds.png").unlink()
    elif case == "no_instances":
        (gt / "lindau_000000_000019_gtFine_instanceIds.png").unlink()
    elif case == "train_ids":
        (gt / "lindau_000000_000019_gtFine_labelIds.png").rename(gt / "lindau_000000_000019_gtFine_labelTrainIds.png")
    _, errors = cityscapes.list_pairs(root)
    assert [stem for stem, _ in errors] == ["lindau_000000_000019"]
    message = errors[0][1]
    assert want.format(root=root) in message and "<city>" not in message
    if case == "no_label":  # the fixture's colour rendering is there: named as the wrong kind
        assert message.endswith("; found only lindau_000000_000019_gtFine_color.png (the colour rendering of the "
                                "labels): this reader needs the 35 label ids of *_gtFine_labelIds.png "
                                "(gtFine_trainvaltest.zip)")
    elif case != "train_ids":
        assert "found only" not in message


def test_stray_instance_maps_and_unknown_files_are_named_in_warnings(tmp_path):
    root, _ = make_root(tmp_path)
    gt = root / "gtFine" / "train" / "aachen"
    Image.fromarray(np.zeros((H, W), np.uint16)).save(gt / "aachen_000099_000019_gtFine_instanceIds.png")
    Image.new("RGB", (W, H)).save(root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.jpg")
    (gt / "notes.txt").write_text("mine")
    out = tmp_path / "cityscapes-16x32"
    info, log = prepare(root, out)
    assert info["splits"] == {"train": 3, "test": 2}
    warnings = [l for l in log.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 2, warnings
    assert warnings[0] == (
        f"warning: 2 file(s) of an unknown type in {root}/leftImg8bit/train or gtFine/train ignored (expected "
        "<city>/*_leftImg8bit.png, *_gtFine_labelIds.png, *_gtFine_instanceIds.png): "
        f"{gt / 'notes.txt'}, {root}/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.jpg")
    assert warnings[1] == ("warning: 1 instance map(s) without a photo or label map ignored: "
                           f"{gt / 'aachen_000099_000019_gtFine_instanceIds.png'}")
    # the official companions (colour, polygons, train ids) are expected: no warning for them
    clean_root, _ = make_root(tmp_path / "clean")
    _, clean_log = prepare(clean_root, tmp_path / "clean-16x32")
    assert "warning" not in clean_log


def test_dataset_json_names_cityscapes_ids(tmp_path):
    root, _ = make_root(tmp_path)
    out = tmp_path / "cityscapes-16x32"
    prepare(root, out)
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"]["splits"] == {"train": "train", "test": "val"}
    assert info["label_names"][:8] == ["unlabeled", "ego vehicle", "rectification border", "out of roi",
                                       "static", "dynamic", "ground", "road"]
