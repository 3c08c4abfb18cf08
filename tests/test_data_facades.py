"""CMP facades preparation on the real archive (all 378 pairs at 256x256, prepared once per module) and
the prepared-dataset reader on its output."""

from __future__ import annotations

import io
import json
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from asap.data import facades
from asap.data.common import PrepareOptions
from asap.data.prepared import DatasetInfo, PreparedDataset
from data_helpers import assert_nearest_resize, assert_smooth_resize, facades_archive, png

SIZE = 256


@pytest.fixture(scope="module")
def archive():
    return facades_archive()


@pytest.fixture(scope="module")
def prepared(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / f"facades-{SIZE}x{SIZE}"
    logs = []
    facades.prepare_facades(archive, out, facades.FacadesConfig(),
                            PrepareOptions(SIZE, SIZE, workers=2), log=logs.append)
    assert any("378/378" in line for line in logs)  # progress reached the end
    return out


def archive_stems(archive) -> list[str]:
    with zipfile.ZipFile(archive) as z:
        return sorted(m.group(1) for n in z.namelist() if (m := re.match(r"base/(cmp_b\d+)\.jpg$", n)))


def read_member(archive, name) -> Image.Image:
    with zipfile.ZipFile(archive) as z:
        img = Image.open(io.BytesIO(z.read(name)))
        img.load()
    return img


def test_all_pairs_in_the_authors_split(archive, prepared):
    stems = archive_stems(archive)
    assert len(stems) == 378
    info = json.loads((prepared / "dataset.json").read_text())
    assert info["splits"] == {"train": 318, "test": 60}
    assert info["num_classes"] == 13 and info["input_kind"] == "labels" and not info["instance_edge"]
    assert len(info["label_names"]) == 13 and info["label_names"][3] == "window"
    test = sorted(p.stem for p in (prepared / "test" / "labels").glob("*.png"))
    train = sorted(p.stem for p in (prepared / "train" / "labels").glob("*.png"))
    assert test == [f"cmp_b{i:04d}" for i in range(1, 61)]
    assert train == [f"cmp_b{i:04d}" for i in range(61, 379)]
    assert sorted(test + train) == stems
    for split, names in (("train", train), ("test", test)):
        assert sorted(p.stem for p in (prepared / split / "images").glob("*.png")) == names
    assert not (prepared / "train" / "edges").exists()
    assert not list(prepared.parent.glob(".*partial*"))  # the staging folder is gone


def test_labels_are_class_indices_with_manifest_facts(archive, prepared):
    manifest = pd.read_csv(prepared / "manifest.csv").set_index("stem")
    assert len(manifest) == 378
    seen = set()
    for path in sorted((prepared / "train" / "labels").glob("*.png"))[::9] + sorted(
            (prepared / "test" / "labels").glob("*.png"))[::9]:
        with Image.open(path) as img:
            assert img.mode == "L" and img.size == (SIZE, SIZE)
            label = np.asarray(img)
        values = set(np.unique(label).tolist())
        assert values <= set(range(1, 13)), f"{path}: {values}"
        seen |= values
        row = manifest.loc[path.stem]
        counts = np.bincount(label.ravel(), minlength=13)
        assert [row[f"hist_{k}"] for k in range(13)] == counts.tolist()
        source = np.asarray(read_member(archive, f"base/{path.stem}.png"))
        assert row["label_values"] == " ".join(map(str, np.unique(source).tolist()))
        assert (row["source_height"], row["source_width"]) == source.shape
        assert row["source_label"].endswith(f"base/{path.stem}.png")
    assert seen == set(range(1, 13))


@pytest.mark.parametrize("stem,split", [("cmp_b0001", "test"), ("cmp_b0200", "train")])
def test_resized_pair_matches_an_independent_resize(archive, prepared, stem, split):
    label = np.asarray(read_member(archive, f"base/{stem}.png"))
    photo = np.asarray(read_member(archive, f"base/{stem}.jpg").convert("RGB"))
    assert max(label.shape) > SIZE  # a real downscale
    assert_nearest_resize(label, png(prepared / split / "labels" / f"{stem}.png"))
    assert_smooth_resize(photo, png(prepared / split / "images" / f"{stem}.png"))


def test_prepared_dataset_items(prepared):
    ds = PreparedDataset(prepared, "train")
    assert len(ds) == 318 and ds.info.num_classes == 13
    item = ds[5]
    assert item["name"] == "cmp_b0066"
    assert item["label"].dtype == torch.long and item["label"].shape == (SIZE, SIZE)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
    assert "edge" not in item and "input" not in item
    label = png(prepared / "train" / "labels" / "cmp_b0066.png")
    image = png(prepared / "train" / "images" / "cmp_b0066.png")
    assert torch.equal(item["label"], torch.from_numpy(label.astype(np.int64)))
    expected = torch.from_numpy(image.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(item["image"], expected, atol=1e-6)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    lazy = PreparedDataset(prepared, "test", in_memory=False)
    assert len(lazy) == 60 and torch.equal(lazy[0]["label"], PreparedDataset(prepared, "test")[0]["label"])


def test_flip_moves_label_and_image_together(prepared):
    plain = PreparedDataset(prepared, "test")[3]
    flipping = PreparedDataset(prepared, "test", flip=True)
    torch.manual_seed(0)
    outcomes = set()
    for _ in range(16):
        item = flipping[3]
        flipped = torch.equal(item["label"], plain["label"].flip(-1))
        same = torch.equal(item["label"], plain["label"])
        assert flipped != same  # the facade is not mirror-symmetric
        reference = plain["image"].flip(-1) if flipped else plain["image"]
        assert torch.equal(item["image"], reference)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_dataset_info_round_trip_and_missing_dataset(prepared, tmp_path):
    info = DatasetInfo.load(prepared)
    assert (info.name, info.height, info.width, info.num_classes) == (f"facades-{SIZE}x{SIZE}", SIZE, SIZE, 13)
    assert info.splits == {"train": 318, "test": 60} and info.out_channels == 3
    assert info.model_kwargs()["num_classes"] == 13
    with pytest.raises(FileNotFoundError, match=r"prepare-facades@512x512"):
        DatasetInfo.load(tmp_path / "facades-512x512")


def test_random_split_is_seeded(archive):
    def split(seed):
        pairs, errors, _ = facades.list_pairs(archive, facades.FacadesConfig(split="random", test_count=40,
                                                                              seed=seed))
        assert not errors and len(pairs) == 378
        return sorted(p.stem for p in pairs if p.split == "test")

    a, b, c = split(1), split(1), split(2)
    assert len(a) == 40 and a == b and a != c
    assert a != [f"cmp_b{i:04d}" for i in range(1, 41)]
