"""asap.evaluation on the real facades test split (64x64): FID of the real photos scored as generated
is ~0 and a grey generator's is large; an oracle segmenter scores 1.0 and a constant one scores what
the prepare stage's class histograms say; the schema; generated PNGs; the segmenter's training crops."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from asap.config import ConfigError
from asap.data.prepared import PreparedDataset
from asap.evaluation import (CroppedPairs, EvalConfig, SegmenterTrainConfig, evaluate_generator,
                             generate_test_images, score_real_photos)
from asap.metrics.fid import InceptionFeatures
from asap.models.asapnet import asapnet
from asap.models.segmenter import Segmenter, SegmenterConfig

N = 8  # test pairs scored: Inception at 299x299 is ~0.3 s an image on the CPU


class Lookup(nn.Module):
    """Maps each input to the stored value whose stored key it equals (nearest key, exact here)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.register_buffer("keys", keys.flatten(1).float())
        self.register_buffer("values", values)

    def forward(self, x, edges=None):
        return self.values[torch.cdist(x.flatten(1).float(), self.keys).argmin(1)]


class ConstantGenerator(nn.Module):
    def forward(self, labels, edges=None):
        return torch.zeros(labels.shape[0], 3, *labels.shape[-2:])  # mid-grey in [-1, 1]


class ConstantSegmenter(nn.Module):
    def __init__(self, cls: int, num_classes: int = 13):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, images):
        return F.one_hot(torch.full(images.shape[:1] + images.shape[2:], self.cls), self.num_classes).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def test_split(facades64):
    ds = PreparedDataset(facades64, "test")
    photos = torch.stack([ds[i]["image"] for i in range(len(ds))])
    labels = torch.stack([ds[i]["label"] for i in range(len(ds))])
    return ds, photos, labels


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures()


@pytest.fixture(scope="module")
def class_histogram(facades64):
    """Ground-truth pixels per class of the first N test pairs, from the prepare stage's manifest."""
    rows = pd.read_csv(facades64 / "manifest.csv")
    rows = rows[rows["split"] == "test"].sort_values("stem").head(N)
    return np.array([rows[f"hist_{k}"].sum() for k in range(13)], dtype=np.float64)


def test_real_photos_scored_as_generated_have_fid_zero_and_perfect_segmentation(facades64, test_split, inception,
                                                                                  class_histogram, tmp_path):
    _, photos, labels = test_split
    identity = Lookup(labels, photos)          # label map -> its real photo
    oracle = Lookup(photos, F.one_hot(labels, 13).permute(0, 3, 1, 2).float())  # photo -> its true label
    result = evaluate_generator(identity, facades64, oracle, batch_size=4, real_stats_cache=tmp_path,
                                max_images=N, inception=inception)
    assert result["num_images"] == N and result["kid_subset_size"] == N
    assert abs(result["fid"]) < 1e-3
    # KID's unbiased MMD^2 of a set against itself is negative: its cross term keeps k(x_i, x_i).
    # Worked directly from the cached real features, kernel (a.b / d + 1)^3 (Binkowski et al. 2018).
    with np.load(result["fid_real_cache"]) as cache:
        f = cache["features"]
    k = (f @ f.T / f.shape[1] + 1) ** 3
    off_diagonal = (k.sum() - np.trace(k)) / (N * (N - 1))
    assert result["kid_mean"] == pytest.approx(2 * off_diagonal - 2 * k.mean(), rel=1e-6)
    assert result["pixel_acc"] == 1.0 and result["miou"] == pytest.approx(1.0)
    shares = class_histogram / class_histogram.sum()
    for c in result["per_class"]:
        assert c["pixel_share"] == pytest.approx(shares[c["class"]], abs=1e-12)
        assert c["iou"] == (None if class_histogram[c["class"]] == 0 else pytest.approx(1.0))
    assert result["per_class"][0]["iou"] is None  # facades label 0 is unused
    assert result["segmented_pixels"] == N * 64 * 64

    grey = evaluate_generator(ConstantGenerator(), facades64, batch_size=8, real_stats_cache=tmp_path,
                              max_images=N, inception=inception)
    assert grey["fid_real_cached"] and grey["fid_real_cache"].endswith("facades-64x64.fid-test-first8.npz")
    assert grey["fid"] > 100 and grey["kid_mean"] > 0.05
    assert grey["pixel_acc"] is None and grey["per_class"] == []


def test_constant_segmenter_scores_match_the_class_histograms(facades64, class_histogram):
    facade = 2  # the commonest class: "facade"
    scores = score_real_photos(facades64, ConstantSegmenter(facade), max_images=N, batch_size=3)
    total = class_histogram.sum()
    present = int((class_histogram > 0).sum())
    # Hand-worked: every pixel predicted "facade" -> acc = its share; IoU(facade) = TP / all pixels;
    # every other present class has TP = 0, so IoU 0; mIoU averages over the present classes.
    assert scores["pixel_acc"] == pytest.approx(class_histogram[facade] / total)
    assert scores["miou"] == pytest.approx(class_histogram[facade] / total / present)
    assert scores["per_class"][facade]["iou"] == pytest.approx(class_histogram[facade] / total)
    assert scores["num_images"] == N


def test_schema_of_a_tiny_generator_and_segmenter(facades64, inception, tmp_path):
    torch.manual_seed(0)
    generator = asapnet(13, 64, 64, lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=16).train()
    segmenter = Segmenter(SegmenterConfig(num_classes=13, width_mult=0.1))
    seen = []
    result = evaluate_generator(generator, facades64, segmenter, batch_size=3, real_stats_cache=tmp_path,
                                max_images=4, inception=inception, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(3, 4), (4, 4)]
    assert generator.training  # mode restored
    for key in ("fid", "kid_mean", "kid_std", "pixel_acc", "miou", "generate_ms_per_image"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result["fid"] > 0 and 0 <= result["pixel_acc"] <= 1 and 0 <= result["miou"] <= 1
    assert [c["name"] for c in result["per_class"]][:4] == ["unused", "background", "facade", "window"]
    assert set(result["per_class"][0]) == {"class", "name", "iou", "pixel_share"}
    assert result["num_images"] == 4 and result["dataset"] == "facades-64x64" and not result["fid_real_cached"]
    assert (tmp_path / "facades-64x64.fid-test-first4.npz").is_file()

    with pytest.raises(ValueError, match="predicts 5 classes"):
        evaluate_generator(generator, facades64, Segmenter(SegmenterConfig(num_classes=5, width_mult=0.1)),
                           max_images=2, real_stats_cache=tmp_path, inception=inception)


def test_generated_pngs_and_triptychs(facades64, test_split, tmp_path):
    _, photos, labels = test_split
    torch.manual_seed(0)
    generator = asapnet(13, 64, 64, lr_width=8, lr_max_width=16, lr_depth=1, mlp_width=16).eval()
    files = generate_test_images(generator, facades64, tmp_path / "gen", batch_size=2, max_images=3)
    assert [f.name for f in files] == ["cmp_b0001.png", "cmp_b0002.png", "cmp_b0003.png"]
    with torch.no_grad():
        expected = ((generator(labels[:3]).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for f, e in zip(files, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(f)), e)

    rows = generate_test_images(Lookup(labels, photos), facades64, tmp_path / "rows", max_images=2, triptych=True)
    row = np.asarray(Image.open(rows[1]))
    real = np.asarray(Image.open(facades64 / "test" / "images" / "cmp_b0002.png").convert("RGB"))
    assert row.shape == (64, 192, 3)
    np.testing.assert_array_equal(row[:, 64:128], real)   # identity generator: generated == real
    np.testing.assert_array_equal(row[:, 128:], real)


def test_training_crops_keep_photo_and_label_aligned(facades64):
    ds = PreparedDataset(facades64, "train")
    torch.manual_seed(3)
    image, label = CroppedPairs(ds, 24)[5]
    assert image.shape == (3, 24, 24) and label.shape == (24, 24)
    full = ds[5]
    offsets = [(y, x) for y in range(41) for x in range(41)
               if torch.equal(full["image"][:, y:y + 24, x:x + 24], image)]
    assert len(offsets) == 1
    y, x = offsets[0]
    assert torch.equal(full["label"][y:y + 24, x:x + 24], label)
    image, label = CroppedPairs(ds, None)[5]
    assert torch.equal(image, full["image"]) and torch.equal(label, full["label"])


def test_configs_reject_bad_values():
    with pytest.raises(ConfigError, match="max_images"):
        EvalConfig(max_images=1)
    with pytest.raises(ConfigError, match="batch_size"):
        EvalConfig(batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        EvalConfig(device="tpu")
    with pytest.raises(ConfigError, match="crop"):
        SegmenterTrainConfig(crop=4)
    with pytest.raises(ConfigError, match="lr"):
        SegmenterTrainConfig(lr=0)
