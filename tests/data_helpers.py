"""Helpers of the data tests (tests/test_data_*.py, tests/test_prepare*.py): where the real facades
archive lies, and resizes computed independently of asap.data (PIL's nearest, torch's antialiased
bicubic) to check the prepared files against."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def facades_archive() -> Path:
    """The real CMP_facade_DB_base.zip: $ASAP_FACADES_ARCHIVE, else <repo>/../shared/data/."""
    for candidate in (os.environ.get("ASAP_FACADES_ARCHIVE"), REPO.parent / "shared/data/CMP_facade_DB_base.zip"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("the real CMP facades archive is not on this machine: set ASAP_FACADES_ARCHIVE to a copy "
                "of CMP_facade_DB_base.zip")


def assert_nearest_resize(source: np.ndarray, resized: np.ndarray) -> None:
    """``resized`` is a nearest-neighbour resize of ``source`` (2-D): equal to PIL's NEAREST except on
    rows/columns whose pixel centre falls exactly on a source pixel boundary (a tie PIL's float
    arithmetic may break either way), where it must be one of the two neighbours."""
    h, w = source.shape
    H, W = resized.shape
    pil = np.asarray(Image.fromarray(source.astype(np.int32)).resize((W, H), Image.NEAREST))
    differ = pil != resized
    if not differ.any():
        return
    ys, xs = np.nonzero(differ)
    tie_y = ((2 * ys + 1) * h) % (2 * H) == 0
    tie_x = ((2 * xs + 1) * w) % (2 * W) == 0
    assert (tie_y | tie_x).all(), f"{(~(tie_y | tie_x)).sum()} pixels differ from PIL's nearest off ties"
    # at a tie the exact centre rule takes the upper/right neighbour: check the value came from there
    sy = np.minimum(((2 * ys + 1) * h) // (2 * H), h - 1)
    sx = np.minimum(((2 * xs + 1) * w) // (2 * W), w - 1)
    assert (resized[ys, xs] == source[sy, sx]).all()
    assert differ.mean() < 0.01, f"{differ.mean():.2%} of pixels are ties: not a nearest resize"


def torch_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, C) uint8 -> (height, width, C) uint8 by torch's antialiased bicubic (Keys a = -0.5)."""
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # (1, C, h, w)
    out = F.interpolate(t, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def assert_smooth_resize(source: np.ndarray, resized: np.ndarray) -> None:
    """``resized`` (uint8, H x W x C) is an antialiased bicubic resize of ``source``: within rounding
    of torch's implementation almost everywhere (a plain, aliased resize is far off on photos)."""
    ref = torch_resize(source, *resized.shape[:2]).astype(np.int16)
    diff = np.abs(ref - resized.astype(np.int16))
    assert diff.mean() < 0.5, f"mean |diff| {diff.mean():.3f} vs torch antialiased bicubic"
    assert (diff <= 2).mean() > 0.995, f"only {(diff <= 2).mean():.2%} of values within 2 levels"


def png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)
