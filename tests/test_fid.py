"""FID/KID: torchmetrics-backed distances against independent computations, and the real Inception."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from asap.metrics import fid


def _features(n, d, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    # Correlated features (a random mixing matrix) so the covariances are not near-diagonal.
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + shift


def test_fid_of_a_set_against_itself_is_zero():
    a = _features(40, 16)
    assert abs(fid.fid_from_features(a, a)) < 1e-6


def test_fid_matches_scipy_sqrtm():
    a, b = _features(50, 16, seed=1), _features(40, 16, shift=0.3, seed=2)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert expected > 1.0
    assert fid.fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_feature_stats_match_numpy():
    a = _features(10, 4)
    mu, sigma = fid.feature_stats(a)
    centred = a - a.mean(0)
    np.testing.assert_allclose(mu, a.sum(0) / 10)
    np.testing.assert_allclose(sigma, centred.T @ centred / 9)


def _unbiased_mmd2(x, y, degree=3, coef=1.0):
    """Direct unbiased MMD^2 with the KID kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018)."""
    d = x.shape[1]
    k = lambda p, q: (p @ q / d + coef) ** degree  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_equals_direct_unbiased_mmd_when_the_subset_is_the_whole_set():
    a, b = _features(12, 8, seed=3), _features(12, 8, shift=0.5, seed=4)
    mean, std = fid.kid_from_features(a, b, subsets=5, subset_size=1000)  # capped to 12 = n
    assert mean == pytest.approx(_unbiased_mmd2(a, b), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_caps_subset_size_at_the_smaller_set():
    mean, std = fid.kid_from_features(_features(10, 8), _features(15, 8, shift=0.5), subsets=20, seed=1)
    again = fid.kid_from_features(_features(10, 8), _features(15, 8, shift=0.5), subsets=20, seed=1)
    assert np.isfinite(mean) and std > 0 and (mean, std) == again


@pytest.fixture(scope="module")
def extractor():
    return fid.InceptionFeatures()


def test_inception_features_shape_determinism_and_pytorch_fid_preprocessing(extractor):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 48, 64) * 2 - 1
    feats = fid.inception_features([images[0], images[1:]], batch_size=2, extractor=extractor)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    np.testing.assert_array_equal(feats, fid.inception_features([images[0], images[1:]], batch_size=2,
                                                                extractor=extractor))  # deterministic
    np.testing.assert_allclose(feats, fid.inception_features(images, batch_size=1, extractor=extractor),
                               rtol=1e-4, atol=1e-5)  # batching does not change the features
    # pytorch-fid's path, written out: [0, 1] image -> bilinear 299 -> 2x - 1 -> the TorchScript trunk.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still works
        net = torch.jit.load(str(fid.inception_weights_path()), map_location="cpu").eval()
    x01 = (images + 1) / 2
    x = 2 * F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    with torch.no_grad():
        expected = net(x).double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
    assert (feats >= 0).all() and feats.std() > 0  # post-ReLU average pool, not a constant


def test_real_stats_are_cached_by_content(tmp_path, extractor, monkeypatch):
    root = tmp_path / "prepared" / "toy-32x32"
    images = root / "test" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    calls = []
    real = fid.inception_features
    monkeypatch.setattr(fid, "inception_features",
                        lambda *a, **k: calls.append(1) or real(*a, **{**k, "extractor": extractor}))
    first = fid.real_stats(root, "test")
    assert first["cache_path"] == tmp_path / "prepared" / "toy-32x32.fid-test.npz"  # beside, not inside
    assert not first["cached"] and first["features"].shape == (3, 2048)
    mu, sigma = fid.feature_stats(first["features"])
    np.testing.assert_allclose(first["mu"], mu)
    np.testing.assert_allclose(first["sigma"], sigma)
    second = fid.real_stats(root, "test")
    assert second["cached"] and len(calls) == 1
    np.testing.assert_array_equal(second["sigma"], first["sigma"])
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / "1.png")
    third = fid.real_stats(root, "test")
    assert not third["cached"] and len(calls) == 2 and third["key"] != first["key"]
    assert not np.allclose(third["mu"], first["mu"])


def test_missing_or_wrong_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(fid.FIDWeightsError, match="does not name a file"):
        fid.inception_weights_path()
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"not inception")
    with pytest.raises(fid.FIDWeightsError, match="sha1"):
        fid.InceptionFeatures(wrong)
