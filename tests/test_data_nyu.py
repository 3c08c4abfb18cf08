"""NYU depth v2 preparation on a tiny nyu_depth_v2_labeled.mat written with h5py in the official
format: a MATLAB v7.3 file (HDF5 behind a 512-byte MATLAB header) whose arrays h5py sees with MATLAB's
axes reversed: images (N, 3, W, H) uint8, depths (N, W, H) float."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from asap.config import ConfigError
from asap.data import nyu
from asap.data.common import DataError, PrepareOptions
from asap.data.prepared import PreparedDataset
from data_helpers import png

N, H, W = 5, 12, 16  # H != W: a transposition mistake changes shapes and content
MAX_DEPTH = 10.0


def scenes(n=N):
    """(n, H, W, 3) uint8 photos and (n, H, W) depths in metres, as a viewer would see them."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 12.0, (n, H, W)).astype(np.float32)  # some beyond MAX_DEPTH: clipped
    return rgb, depth


def write_mat(path, rgb, depth, **extra):
    """Store as MATLAB v7.3 does: (H, W, 3, N) in MATLAB is (N, 3, W, H) to h5py."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=rgb.transpose(0, 3, 2, 1))       # (N, H, W, 3) -> (N, 3, W, H)
        f.create_dataset("depths", data=depth.transpose(0, 2, 1))        # (N, H, W) -> (N, W, H)
        f.create_dataset("labels", data=np.zeros((len(rgb), W, H), np.uint16))
        for key, value in extra.items():
            f.create_dataset(key, data=value)
    with open(path, "r+b") as f:  # the MATLAB header lives in the HDF5 user block
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2012 HDF5 schema 1.00 .")
    return path


def prepare(mat, out, size=(H, W), skip_bad=False, **cfg):
    cfg = nyu.NYUConfig(mat=str(mat), train_count=cfg.pop("train_count", 3), max_depth=MAX_DEPTH, **cfg)
    return nyu.prepare_nyu(mat, out, cfg, PrepareOptions(*size, fit=cfg.fit, workers=1, skip_bad=skip_bad),
                           log=lambda _: None)


def depth_png(depth):
    return np.round(np.clip(depth, 0, MAX_DEPTH) / MAX_DEPTH * 255).astype(np.uint8)


def test_rgb_to_depth_reads_matlab_axis_order(tmp_path):
    rgb, depth = scenes()
    mat = write_mat(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth)
    out = tmp_path / f"nyu-{H}x{W}"
    info = prepare(mat, out)
    assert info["splits"] == {"train": 3, "test": 2}
    assert info["input_kind"] == "image" and info["num_classes"] == 3 and info["target_kind"] == "depth"
    assert info["depth"]["max_depth_m"] == MAX_DEPTH and info["depth"]["png_channels"] == 1
    for i in range(N):
        stem, split = f"nyu_{i + 1:04d}", "train" if i < 3 else "test"
        assert np.array_equal(png(out / split / "inputs" / f"{stem}.png"), rgb[i])
        assert np.array_equal(png(out / split / "images" / f"{stem}.png"), depth_png(depth[i]))

    item = PreparedDataset(out, "test")[1]
    assert item["name"] == "nyu_0005" and set(item) == {"name", "input", "image"}
    assert item["input"].shape == (3, H, W) and item["image"].shape == (3, H, W)
    assert torch.allclose(item["input"], torch.from_numpy(rgb[4]).permute(2, 0, 1).float() / 127.5 - 1)
    expected = torch.from_numpy(depth_png(depth[4])).float() / 127.5 - 1
    assert all(torch.allclose(item["image"][c], expected) for c in range(3))  # 1 channel served as 3


def test_crop_and_depth_to_rgb(tmp_path):
    rgb, depth = scenes()
    mat = write_mat(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth)
    out = tmp_path / f"nyu-{H}x{H}"
    info = prepare(mat, out, size=(H, H), direction="depth2rgb", fit="crop")  # centre H x H of H x W
    assert info["num_classes"] == 1 and info["target_kind"] == "rgb" and info["input_png_channels"] == 1
    left = (W - H) // 2
    assert np.array_equal(png(out / "train" / "images" / "nyu_0002.png"), rgb[1, :, left:left + H])
    assert np.array_equal(png(out / "train" / "inputs" / "nyu_0002.png"), depth_png(depth[1, :, left:left + H]))
    item = PreparedDataset(out, "train")[0]
    assert item["input"].shape == (1, H, H) and item["image"].shape == (3, H, H)


def test_resized_depth_is_smooth_and_in_range(tmp_path):
    rgb, depth = scenes()
    depth[:] = np.linspace(1.0, 9.0, W, dtype=np.float32)[None, None, :]  # a ramp along x
    mat = write_mat(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth)
    out = tmp_path / "nyu-6x8"
    prepare(mat, out, size=(H // 2, W // 2))
    resized = png(out / "train" / "images" / "nyu_0001.png").astype(float) / 255 * MAX_DEPTH
    # a linear ramp stays (nearly) linear under a symmetric filter: compare with the 2x2 means
    expected = depth[0].reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))
    assert np.abs(resized - expected)[:, 1:-1].max() < MAX_DEPTH / 255 + 1e-6


def test_random_split_is_seeded(tmp_path):
    rgb, depth = scenes()
    mat = write_mat(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth)

    def test_stems(seed):
        pairs = nyu.list_pairs(mat, nyu.NYUConfig(mat=str(mat), split="random", train_count=3, seed=seed))
        return sorted(p.stem for p in pairs if p.split == "test")

    assert len(test_stems(0)) == 2 and test_stems(0) == test_stems(0)
    assert {tuple(test_stems(s)) for s in range(6)} != {tuple(test_stems(0))}


def test_not_the_labeled_mat(tmp_path):
    text = tmp_path / "nyu_depth_v2_labeled.mat"
    text.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))  # a pre-v7.3 .mat is not HDF5
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat is not an HDF5 \(MATLAB v7\.3\) file"):
        nyu.check_mat(text)
    with pytest.raises(DataError, match=r"missing\.mat not found"):
        nyu.check_mat(tmp_path / "missing.mat")
    rgb, depth = scenes()
    no_depth = tmp_path / "no_depth.mat"
    with h5py.File(no_depth, "w") as f:
        f.create_dataset("images", data=rgb.transpose(0, 3, 2, 1))
    with pytest.raises(DataError, match=r"no_depth\.mat has no dataset\(s\) \['depths'\]"):
        nyu.check_mat(no_depth)


def test_sizes_that_do_not_fit(tmp_path):
    rgb, depth = scenes()
    mismatched = write_mat(tmp_path / "a.mat", rgb, depth[:, :, :-1])  # depths (N, W, H-1)
    with pytest.raises(DataError, match=r"a\.mat: 'depths' is \(5, 15, 12\) float32, expected \(5, 16, 12\)"):
        nyu.check_mat(mismatched)
    with h5py.File(tmp_path / "b.mat", "w") as f:  # channels last: not MATLAB's layout seen by h5py
        f.create_dataset("images", data=rgb)
        f.create_dataset("depths", data=depth)
    with pytest.raises(DataError, match=r"b\.mat: 'images' is \(5, 12, 16, 3\) uint8, expected \(N, 3, W, H\)"):
        nyu.check_mat(tmp_path / "b.mat")
    ok = write_mat(tmp_path / "c.mat", rgb, depth)
    with pytest.raises(ConfigError, match=r"train_count must be between 1 and 4"):
        prepare(ok, tmp_path / "nyu-12x16", train_count=5)


def test_bad_depth_fails_then_skips(tmp_path):
    rgb, depth = scenes()
    depth[3, 2, 2] = np.nan
    mat = write_mat(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth)
    out = tmp_path / f"nyu-{H}x{W}"
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat:depths\[3\]: depth holds negative or non-finite"):
        prepare(mat, out)
    assert not out.exists()
    info = prepare(mat, out, skip_bad=True)
    assert info["splits"] == {"train": 3, "test": 1} and info["skipped"][0]["stem"] == "nyu_0004"
    assert json.loads((out / "dataset.json").read_text())["skipped"][0]["stem"] == "nyu_0004"
