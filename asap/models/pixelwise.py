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

# On the CPU under no_grad / inference_mode the tiles go through all layers a chunk at a time,
# the chunk's widest activation at most this many bytes, so that it stays in the cache between
# layers (the whole image's 64-channel activations do not: at 256x256, S = 16, 2 threads, 14 ms
# chunked against 20 ms in one piece). One piece with autograd on (every activation is kept for the
# backward anyway), on CUDA, and when traced or exported (sizes may be symbolic there).
CHUNK_BYTES = 4 << 20


def pixelwise_mlp(x: torch.Tensor, params: torch.Tensor, channels: list[int], tile: int,
                  positional: bool = True) -> torch.Tensor:
    """Apply the spatially-varying MLP (Eq. 1-2).

    x:      (B, C, H, W) full-resolution input (one-hot labels or an image).
    params: (B, P, H/tile, W/tile) one parameter set per tile (or (B, P, 1, 1): spatially uniform).
            Channels-last memory (a tile's P values contiguous, as the low-res stream writes them on
            the CPU) is read in place; any other layout is copied into it once.
    Returns (B, channels[-1], H, W), tanh at the end as in the authors' code.

    Each layer is one batched product over the tiles (``baddbmm``: the bias added in the same
    pass), each tile's (S*S, nci) activations times its own (nci, nco) weight.
    """
    B, C, H, W = x.shape
    if H % tile or W % tile:
        raise ValueError(f"input {H}x{W} is not divisible by the tile size S={tile}")
    h, w = H // tile, W // tile
    P = num_mlp_params(channels)
    if params.shape[1] != P:
        raise ValueError(f"parameter grid has {params.shape[1]} channels, the MLP {channels} needs {P}")
    uniform = params.shape[2:] == (1, 1)
    if not uniform and params.shape[2:] != (h, w):
        raise ValueError(f"parameter grid is {tuple(params.shape[2:])}, expected {(h, w)} "
                         f"for a {H}x{W} input with S={tile}")

    if uniform:  # one MLP per image: its pixels are one batch entry (tile order kept for the output)
        tiles = rearrange(x, "b c (h s1) (w s2) -> b (h w) (s1 s2) c", s1=tile, s2=tile)
        groups, rows = B, h * w * tile * tile
    else:        # one MLP per tile
        tiles = rearrange(x, "b c (h s1) (w s2) -> (b h w) (s1 s2) c", s1=tile, s2=tile)
        groups, rows = B * h * w, tile * tile
    if positional:
        enc = tile_encoding(tile, device=x.device, dtype=x.dtype)  # (S*S, E)
        tiles = torch.cat([tiles, enc.expand(*tiles.shape[:-1], enc.shape[-1])], dim=-1)
    if tiles.shape[-1] != channels[0]:
        raise ValueError(f"MLP expects {channels[0]} input channels, got {tiles.shape[-1]} "
                         f"(C={C}{' + positional encoding' if positional else ''})")
    tiles = tiles.reshape(groups, rows, channels[0])
    grid = params.permute(0, 2, 3, 1).reshape(groups, P)  # a view when params are channels-last

    layers = mlp_layout(channels)
    in_place = not torch.is_grad_enabled()
    if in_place and x.device.type == "cpu" and isinstance(groups, int) and not torch.jit.is_tracing():
        step = max(1, CHUNK_BYTES // (rows * max(channels) * tiles.element_size()))
        out = torch.cat([_mlp_layers(t, g, layers, in_place) for t, g in zip(tiles.split(step), grid.split(step))])
    else:  # one piece: with autograd; on CUDA; traced or exported (sizes may be symbolic)
        out = _mlp_layers(tiles, grid, layers, in_place)
    return rearrange(out.reshape(B, h * w, tile * tile, channels[-1]),
                     "b (h w) (s1 s2) c -> b c (h s1) (w s2)", h=h, s1=tile)


def _mlp_layers(out: torch.Tensor, cell: torch.Tensor, layers: list[LayerSlices], in_place: bool) -> torch.Tensor:
    """(n, rows, channels[0]) activations through every layer with the n parameter sets of cell (n, P)."""
    n = out.shape[0]
    for i, layer in enumerate(layers):
        weight = cell[:, layer.weight].view(n, layer.nci, layer.nco)
        bias = cell[:, layer.bias].view(n, 1, layer.nco)
        out = torch.baddbmm(bias, out, weight)  # (n, rows, nco)
        last = i == len(layers) - 1
        if in_place:
            out = out.tanh_() if last else F.leaky_relu_(out, LEAKY_SLOPE)
        else:
            out = out.tanh() if last else F.leaky_relu(out, LEAKY_SLOPE)
    return out
