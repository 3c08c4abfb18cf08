"""The spatially-adaptive pixelwise MLP of ASAP-Net (Rott Shaham et al., CVPR 2021, Sec. 3.1-3.3).

Every S x S tile of the full-resolution input is mapped by its own small MLP whose weights and
biases come from one cell of the low-resolution parameter grid (Eq. 2: nearest-neighbour upsampling,
so the parameters are piecewise constant). We never upsample the parameters: the input is cut into
tiles and each tile is multiplied by its own parameter set, so memory holds parameters at grid
resolution only.

Parameter layout (identical to the authors' released code, so their checkpoints load unchanged):
for each layer l with nci inputs and nco outputs, the P channels of the grid hold
``[bias_l (nco), weight_l (nci * nco, row-major as (nci, nco))]`` one layer after the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

LEAKY_SLOPE = 0.01  # the authors' code uses LeakyReLU(0.01) between MLP layers (paper: "ReLU")


# ----------------------------------------------------------------------------------------------
# Parameter layout
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSlices:
    """Where one MLP layer's bias and weight live among the P parameter channels."""
    nci: int
    nco: int
    bias: slice
    weight: slice


def mlp_channels(in_channels: int, width: int, depth: int, out_channels: int) -> list[int]:
    """Channel widths of the pixelwise MLP: ``depth`` linear layers, e.g. [33, 64, 64, 64, 64, 3]."""
    if depth < 1:
        raise ValueError(f"mlp depth must be >= 1, got {depth}")
    return [in_channels] + [width] * (depth - 1) + [out_channels]


def mlp_layout(channels: list[int]) -> list[LayerSlices]:
    """Slices of each layer's bias and weight in the parameter vector (the authors' order)."""
    layers, idx = [], 0
    for nci, nco in zip(channels[:-1], channels[1:]):
        bias = slice(idx, idx + nco)
        idx += nco
        weight = slice(idx, idx + nci * nco)
        idx += nci * nco
        layers.append(LayerSlices(nci, nco, bias, weight))
    return layers


def num_mlp_params(channels: list[int]) -> int:
    """P: total weights and biases of one pixelwise MLP."""
    return sum(nco + nci * nco for nci, nco in zip(channels[:-1], channels[1:]))


# ----------------------------------------------------------------------------------------------
# Positional encoding (Sec. 3.3)
# ----------------------------------------------------------------------------------------------

def positional_encoding(height: int, width: int, tile: int, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    """Sinusoidal encoding of pixel position, (4 * log2(tile), height, width).

    Sec. 3.3: (sin(2 pi p_x / 2^k), cos(2 pi p_x / 2^k)) for k = 1..log2(S), and the same for p_y.
    Channel order follows the authors' code so their weights apply: periods f = S, S/2, ..., 2, and
    for each period [cos x, sin x, cos y, sin y]. Since every period divides S, the encoding only
    depends on the position inside the S x S tile; ``p mod f`` keeps the argument exact.
    """
    n_freq = int(math.log2(tile))
    x = torch.arange(width, device=device, dtype=torch.float64)
    y = torch.arange(height, device=device, dtype=torch.float64)
    rows = []
    for k in range(n_freq, 0, -1):  # f = 2^k from S down to 2
        f = float(2 ** k)
        ax, ay = 2 * math.pi * torch.remainder(x, f) / f, 2 * math.pi * torch.remainder(y, f) / f
        rows += [torch.cos(ax).expand(height, width), torch.sin(ax).expand(height, width),
                 torch.cos(ay)[:, None].expand(height, width), torch.sin(ay)[:, None].expand(height, width)]
    if not rows:
        return torch.zeros(0, height, width, device=device, dtype=dtype)
    return torch.stack(rows).to(dtype)  # (4 log2 S, H, W)


def tile_encoding(tile: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The positional encoding of one S x S tile, flattened row-major: (S*S, 4 log2 S)."""
    enc = positional_encoding(tile, tile, tile, device=device, dtype=dtype)
    return rearrange(enc, "e s1 s2 -> (s1 s2) e")


# ----------------------------------------------------------------------------------------------
# The tiled pixelwise MLP (reference path)
# ----------------------------------------------------------------------------------------------

def pixelwise_mlp(x: torch.Tensor, params: torch.Tensor, channels: list[int], tile: int,
                  positional: bool = True) -> torch.Tensor:
    """Apply the spatially-varying MLP (Eq. 1-2).

    x:      (B, C, H, W) full-resolution input (one-hot labels or an image).
    params: (B, P, H/tile, W/tile) one parameter set per tile (or (B, P, 1, 1): spatially uniform).
    Returns (B, channels[-1], H, W), tanh at the end as in the authors' code.
    """
    B, C, H, W = x.shape
    if H % tile or W % tile:
        raise ValueError(f"input {H}x{W} is not divisible by the tile size S={tile}")
    h, w = H // tile, W // tile
    P = num_mlp_params(channels)
    if params.shape[1] != P:
        raise ValueError(f"parameter grid has {params.shape[1]} channels, the MLP {channels} needs {P}")
    if params.shape[2:] == (1, 1):
        params = params.expand(B, P, h, w)
    elif params.shape[2:] != (h, w):
        raise ValueError(f"parameter grid is {tuple(params.shape[2:])}, expected {(h, w)} "
                         f"for a {H}x{W} input with S={tile}")

    tiles = rearrange(x, "b c (h s1) (w s2) -> b h w (s1 s2) c", s1=tile, s2=tile)
    if positional:
        enc = tile_encoding(tile, device=x.device, dtype=x.dtype)  # (S*S, E)
        tiles = torch.cat([tiles, enc.expand(B, h, w, *enc.shape)], dim=-1)
    if tiles.shape[-1] != channels[0]:
        raise ValueError(f"MLP expects {channels[0]} input channels, got {tiles.shape[-1]} "
                         f"(C={C}{' + positional encoding' if positional else ''})")

    grid = rearrange(params, "b p h w -> b h w p")
    out = tiles
    layers = mlp_layout(channels)
    for i, layer in enumerate(layers):
        weight = grid[..., layer.weight].reshape(B, h, w, layer.nci, layer.nco)
        bias = grid[..., layer.bias].reshape(B, h, w, 1, layer.nco)
        out = torch.matmul(out, weight) + bias  # (B, h, w, S*S, nco)
        out = F.leaky_relu(out, LEAKY_SLOPE) if i < len(layers) - 1 else torch.tanh(out)
    return rearrange(out, "b h w (s1 s2) c -> b c (h s1) (w s2)", s1=tile, s2=tile)
