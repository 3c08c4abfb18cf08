"""Images for people to look at: generator outputs in [-1, 1] as uint8, label maps in colour.

One palette for every figure, sample grid and translated file, so a class has one colour everywhere.
"""

from __future__ import annotations

import numpy as np
import torch


def label_palette(n: int = 256) -> np.ndarray:
    """(max(n, 256), 3) uint8: a fixed, distinct colour per class (bit-interleaved, as PASCAL VOC's)."""
    pal = np.zeros((max(n, 256), 3), dtype=np.uint8)
    for i in range(pal.shape[0]):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colour_labels(labels) -> np.ndarray:
    """(H, W) class indices (numpy or torch) -> (H, W, 3) uint8 in ``label_palette``'s colours."""
    labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    return label_palette(256)[labels.astype(np.int64).clip(0, 255)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (..., C, H, W) -> uint8 (..., H, W, C): (x + 1) * 127.5, rounded, clipped."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """One image (C, H, W) in [-1, 1] -> (H, W, 3) uint8: the first 3 channels, or 1 channel repeated."""
    return to_uint8(image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1))
