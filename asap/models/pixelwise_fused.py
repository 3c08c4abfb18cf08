"""Fused Triton kernel for the whole pixelwise MLP of ASAP-Net (Rott Shaham et al., CVPR 2021, Eq. 1-2).

The reference ``asap.models.pixelwise.pixelwise_mlp`` runs one batched matmul per layer and writes
every layer's (B, H, W, 64) activations to memory. Here one program handles a block of pixels of one
S x S tile: it reads the tile's parameter set (one cell of the low-res grid, Eq. 2), runs all layers
on-chip with ``tl.dot`` and writes only the output channels. The positional encoding (Sec. 3.3) is
computed in the kernel from the position inside the tile, and a label map can be passed as class
indices: one-hot(x) @ W1 == W1[x], so the first layer becomes a gather of weight rows.

Semantics, parameter layout and channel order are exactly those of the reference (see pixelwise.py):
per layer ``[bias (nco), weight (nci * nco) row-major (nci, nco)]``, LeakyReLU(0.01) between layers,
tanh at the end; encoding periods f = S, S/2, ..., 2, each [cos x, sin x, cos y, sin y] of
2 pi (p mod f) / f, appended after the input channels.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). It
imports nothing but torch and triton so it runs on the GPU machine without the pipeline stack.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from asap.models.pixelwise import LEAKY_SLOPE, num_mlp_params

try:  # triton ships with the CUDA builds of torch; a CPU-only install simply has no fused path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on installs without triton
    triton = None
    tl = None


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _next_pow2(n: int, minimum: int = 16) -> int:
    """tl.dot needs every block dimension >= 16 and tl.arange a power of two."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def unsupported_reason(channels: list[int], tile: int) -> str | None:
    """Why the fused kernel cannot run this MLP (None when it can): callers fall back to the reference."""
    if triton is None:
        return "triton is not installed"
    if len(channels) < 3:
        return f"the fused kernel needs at least one hidden layer, got widths {channels}"
    hidden = set(channels[1:-1])
    if len(hidden) != 1:
        return f"the fused kernel needs equal hidden widths, got {channels[1:-1]}"
    width = channels[1]
    if width < 16 or width & (width - 1) or width > 256:
        return f"hidden width {width} must be a power of two in 16..256 (tl.dot tiles)"
    if tile < 1 or tile & (tile - 1):
        return f"tile size S={tile} must be a power of two"
    return None


# ----------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------

if triton is not None:
    # jit functions may only read globals that are constexpr
    _SLOPE = tl.constexpr(LEAKY_SLOPE)
    _TWO_PI = tl.constexpr(2.0 * math.pi)

    @triton.jit
    def _tanh(a):
        # tanh(a) = sign(a) (1 - e^{-2|a|}) / (1 + e^{-2|a|}): stable for large |a|, and needs no
        # libdevice (tl.math has no tanh on every triton version we meet: 3.6 on the GPU box, 3.8 here).
        t = tl.exp(-2.0 * tl.abs(a))
        r = (1.0 - t) / (1.0 + t)
        return tl.where(a < 0, -r, r)

    @triton.jit
    def _round_bf16(a):
        # Round-to-nearest-even fp32 -> bf16, kept in fp32. The GPU's fp32 -> bf16 cast does this;
        # Triton's CPU interpreter (3.8) truncates instead, which doubles the error, so the
        # interpreter path rounds by hand (bf16 is the top 16 bits of an fp32).
        bits = a.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _round_tf32(a):
        # Round-to-nearest-even fp32 -> TF32 (10-bit mantissa), kept in fp32. Triton's "tf32" dots
        # on the H200 (triton 3.6) kept 4x the mean error of cuBLAS's TF32 matmuls (9.7e-4 against
        # 2.6e-4 on index_S16_tf32): the operands' low bits dropped, not rounded. Rounded here, the
        # tensor cores see exact TF32 values, whatever their own conversion does.
        bits = a.to(tl.uint32, bitcast=True)
        bits = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _mm(a, b, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
        # a @ b with a rounded to b's dtype (the parameters': every b is a weight block), products
        # accumulated in fp32 (tensor cores on GPU).
        if UPCAST:
            # Triton's CPU interpreter multiplies bf16 operands as raw uint16 bits (3.8); an fp32
            # product of values rounded to bf16 is exact, so this matches a bf16 dot.
            return tl.dot(_round_bf16(a.to(tl.float32)), b.to(tl.float32), input_precision="ieee")
        if INPUT_PRECISION == "tf32":
            # fp32 parameters: TF32 tensor cores. bf16 / fp16 parameters (DOT16 = "tf32"): the operands
            # rounded to the parameters' dtype, then multiplied on TF32 tensor cores, where a bf16 or
            # fp16 value is exact (10-bit mantissa), so every product equals the 16-bit dot's.
            if b.dtype == tl.float32:  # fp32 parameters: both operands rounded to TF32 by hand
                return tl.dot(_round_tf32(a.to(tl.float32)), _round_tf32(b), input_precision="tf32")
            return tl.dot(a.to(b.dtype).to(tl.float32), b.to(tl.float32), input_precision="tf32")
        return tl.dot(a.to(b.dtype), b, input_precision=INPUT_PRECISION)

    @triton.jit
    def _mm_grad(a, b, DT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
        # a @ b for the backward: both operands rounded to the parameters' dtype DT (autograd's bf16
        # matmul under autocast does the same), products accumulated in fp32.
        if UPCAST:
            return tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision="ieee")
        if INPUT_PRECISION == "tf32":  # as in _mm: 16-bit operands are exact in TF32, fp32 ones rounded
            if DT == tl.float32:
                return tl.dot(_round_tf32(a.to(tl.float32)), _round_tf32(b.to(tl.float32)), input_precision="tf32")
            return tl.dot(a.to(DT).to(tl.float32), b.to(DT).to(tl.float32), input_precision="tf32")
        return tl.dot(a.to(DT), b.to(DT), input_precision=INPUT_PRECISION)

    @triton.jit
    def _leaky(a):
        return tl.where(a > 0, a, _SLOPE * a)

    @triton.jit
    def _encoding(px, py, TILE: tl.constexpr, N_ENC: tl.constexpr, E_PAD: tl.constexpr):
        # Sec. 3.3 encoding, (BLOCK_P, E_PAD): channel e has period f = S >> (e // 4) and kind e % 4 in
        # [cos x, sin x, cos y, sin y]; p mod f keeps the angle exact for any tile position.
        e = tl.arange(0, E_PAD)
        f = tl.maximum(tl.full((E_PAD,), TILE, tl.int32) >> (e // 4), 1)
        kind = e % 4
        coord = tl.where((kind < 2)[None, :], px[:, None], py[:, None])
        ang = (coord % f[None, :]).to(tl.float32) * _TWO_PI / f[None, :].to(tl.float32)
        enc = tl.where((kind % 2 == 0)[None, :], tl.cos(ang), tl.sin(ang))
        return tl.where((e < N_ENC)[None, :], enc, 0.0)

    @triton.jit
    def _load_labels(x_base, gy, gx, pmask, stride_xh, stride_xw, C_IN: tl.constexpr):
        # (label, valid): out-of-range labels read nothing (the launcher rejects them)
        lab = tl.load(x_base + gy * stride_xh + gx * stride_xw, mask=pmask, other=0).to(tl.int32)
        return lab, pmask & (lab >= 0) & (lab < C_IN)

    @triton.jit
    def _load_dense(x_base, gy, gx, pmask, stride_xc, stride_xh, stride_xw, C_IN: tl.constexpr, C_PAD: tl.constexpr):
        ch = tl.arange(0, C_PAD)
        return tl.load(x_base + ch[None, :] * stride_xc + gy[:, None] * stride_xh + gx[:, None] * stride_xw,
                       mask=pmask[:, None] & (ch[None, :] < C_IN), other=0.0)

    @triton.jit
    def _layer1(x_base, p_base, px, py, gy, gx, pmask,
                stride_xc, stride_xh, stride_xw, stride_pc,
                IS_INDEX: tl.constexpr, C_IN: tl.constexpr, C_PAD: tl.constexpr, TILE: tl.constexpr,
                N_ENC: tl.constexpr, E_PAD: tl.constexpr, HID: tl.constexpr, BLOCK_P: tl.constexpr,
                UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
        # layer 1's pre-activation, (BLOCK_P, HID) fp32: bias + input part + positional-encoding part
        cols = tl.arange(0, HID)
        acc = tl.load(p_base + cols * stride_pc).to(tl.float32)[None, :] + tl.zeros((BLOCK_P, HID), tl.float32)
        if IS_INDEX:  # one-hot(x) @ W1 == W1[x]: a gather of weight rows
            lab, ok = _load_labels(x_base, gy, gx, pmask, stride_xh, stride_xw, C_IN)
            w_rows = tl.load(p_base + (HID + lab[:, None] * HID + cols[None, :]) * stride_pc,
                             mask=ok[:, None], other=0.0)
            acc += w_rows.to(tl.float32)
        else:
            ch = tl.arange(0, C_PAD)
            xv = _load_dense(x_base, gy, gx, pmask, stride_xc, stride_xh, stride_xw, C_IN, C_PAD)
            w1 = tl.load(p_base + (HID + ch[:, None] * HID + cols[None, :]) * stride_pc,
                         mask=ch[:, None] < C_IN, other=0.0)
            acc += _mm(xv, w1, UPCAST, INPUT_PRECISION)
        if N_ENC > 0:
            e = tl.arange(0, E_PAD)
            we = tl.load(p_base + (HID + (C_IN + e[:, None]) * HID + cols[None, :]) * stride_pc,
                         mask=(e < N_ENC)[:, None], other=0.0)
            acc += _mm(_encoding(px, py, TILE, N_ENC, E_PAD), we, UPCAST, INPUT_PRECISION)
        return acc

    @triton.jit
    def _hidden_pre(h, p_base, start, stride_pc, HID: tl.constexpr, UPCAST: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr):
        # pre-activation of the HID -> HID layer whose parameters start at ``start``
        cols = tl.arange(0, HID)
        bias = tl.load(p_base + (start + cols) * stride_pc).to(tl.float32)
        w = tl.load(p_base + (start + HID + cols[:, None] * HID + cols[None, :]) * stride_pc)
        return _mm(h, w, UPCAST, INPUT_PRECISION) + bias[None, :]

    @triton.jit
    def _pixelwise_mlp_fwd(
        x_ptr, params_ptr, out_ptr,
        n_tiles_w, n_tiles,                          # tiles per grid row, tiles per image
        stride_xb, stride_xc, stride_xh, stride_xw,  # input (B, C, H, W) or labels (B, 1, H, W)
        stride_pb, stride_pc, stride_ph, stride_pw,  # params (B, P, h, w); ph = pw = 0 when uniform
        stride_ob, stride_oc, stride_oh, stride_ow,  # output (B, C_OUT, H, W)
        IS_INDEX: tl.constexpr,    # x holds class indices: layer 1 is a gather of weight rows
        C_IN: tl.constexpr,        # input channels before the encoding (one-hot width for indices)
        C_PAD: tl.constexpr,       # C_IN rounded up for tl.arange / tl.dot (dense input only)
        TILE: tl.constexpr,        # S
        N_ENC: tl.constexpr,       # 4 log2 S, or 0 without positional encoding
        E_PAD: tl.constexpr,
        HID: tl.constexpr,         # hidden width (64)
        N_HIDDEN: tl.constexpr,    # number of HID -> HID layers (depth - 2 = 3)
        C_OUT: tl.constexpr,       # output channels (3)
        OUT_PAD: tl.constexpr,
        BLOCK_P: tl.constexpr,     # pixels per tl.dot block (>= 16)
        SUB_BLOCKS: tl.constexpr,  # pixel blocks per program: the tile's parameters stay in cache
        INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 parameters; ignored for bf16/fp16
        UPCAST: tl.constexpr,      # interpreter only: run bf16 dots as exact fp32 dots (see _mm)
        ROUND_OUT: tl.constexpr,   # interpreter only: round a bf16 output to nearest by hand
    ):
        pid_tile = tl.program_id(0)  # b * n_tiles + tile index
        pid_blk = tl.program_id(1)   # which group of SUB_BLOCKS pixel blocks inside the tile
        b = pid_tile // n_tiles
        t = pid_tile % n_tiles
        ty = t // n_tiles_w
        tx = t % n_tiles_w

        p_base = params_ptr + b.to(tl.int64) * stride_pb + ty * stride_ph + tx * stride_pw
        x_base = x_ptr + b.to(tl.int64) * stride_xb
        o_base = out_ptr + b.to(tl.int64) * stride_ob

        rows = tl.arange(0, HID)
        ocols = tl.arange(0, OUT_PAD)
        N_IN: tl.constexpr = C_IN + N_ENC
        HIDDEN_START: tl.constexpr = HID + N_IN * HID          # after layer 1's bias and weight
        LAYER_SIZE: tl.constexpr = HID + HID * HID
        LAST_START: tl.constexpr = HIDDEN_START + N_HIDDEN * LAYER_SIZE

        for s in range(SUB_BLOCKS):
            p = (pid_blk * SUB_BLOCKS + s) * BLOCK_P + tl.arange(0, BLOCK_P)
            pmask = p < TILE * TILE
            py = p // TILE               # position inside the tile, row-major as the reference
            px = p % TILE
            gy = ty * TILE + py
            gx = tx * TILE + px

            h = _leaky(_layer1(x_base, p_base, px, py, gy, gx, pmask, stride_xc, stride_xh, stride_xw, stride_pc,
                               IS_INDEX, C_IN, C_PAD, TILE, N_ENC, E_PAD, HID, BLOCK_P, UPCAST, INPUT_PRECISION))
            for j in tl.static_range(N_HIDDEN):  # HID -> HID on tensor cores
                h = _leaky(_hidden_pre(h, p_base, HIDDEN_START + j * LAYER_SIZE, stride_pc, HID, UPCAST,
                                       INPUT_PRECISION))

            # ---- last layer: HID -> C_OUT (padded to 16 columns for tl.dot), tanh ------------
            omask = ocols < C_OUT
            bias = tl.load(p_base + (LAST_START + ocols) * stride_pc, mask=omask, other=0.0).to(tl.float32)
            w = tl.load(p_base + (LAST_START + C_OUT + rows[:, None] * C_OUT + ocols[None, :]) * stride_pc,
                        mask=omask[None, :], other=0.0)
            y = _tanh(_mm(h, w, UPCAST, INPUT_PRECISION) + bias[None, :])
            if ROUND_OUT:
                y = _round_bf16(y)  # the interpreter's own cast would truncate
            tl.store(o_base + ocols[None, :] * stride_oc + gy[:, None] * stride_oh + gx[:, None] * stride_ow,
                     y.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & omask[None, :])

    @triton.jit
    def _add_to(ptrs, value, mask, ATOMIC: tl.constexpr):
        if ATOMIC:  # every program of a tile adds into the tile's one slot
            tl.atomic_add(ptrs, value, mask=mask, sem="relaxed")
        else:  # the slot belongs to this program: a plain read-add-write, deterministic
            tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + value, mask=mask)

    @triton.jit
    def _pixelwise_mlp_bwd(
        x_ptr, params_ptr, dy_ptr, grad_ptr, stash_ptr,
        n_tiles_w, n_tiles, n_all_tiles,             # n_all_tiles = B * n_tiles (one grad slot per tile)
        stride_xb, stride_xc, stride_xh, stride_xw,
        stride_pb, stride_pc, stride_ph, stride_pw,
        stride_db, stride_dc, stride_dh, stride_dw,  # dL/d(output) (B, C_OUT, H, W)
        P: tl.constexpr,           # parameters per tile; grad is fp32 (programs per tile, B * n_tiles, P)
        IS_INDEX: tl.constexpr, C_IN: tl.constexpr, C_PAD: tl.constexpr, TILE: tl.constexpr,
        N_ENC: tl.constexpr, E_PAD: tl.constexpr, HID: tl.constexpr, N_HIDDEN: tl.constexpr,
        C_OUT: tl.constexpr, OUT_PAD: tl.constexpr, BLOCK_P: tl.constexpr, SUB_BLOCKS: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        STASH: tl.constexpr,       # keep the block's activations in a per-program scratch (stash_ptr)
        ATOMIC: tl.constexpr,      # the tile's programs add into one grad slot with atomics (else one slot each)
    ):
        # dL/d(params) of _pixelwise_mlp_fwd for one tile's pixel blocks, summed on-chip over the
        # tile's pixels. Nothing of the forward pass is kept between the two kernels. Inside this one,
        # each layer's input is either recomputed from the labels and the tile's parameters (STASH
        # off: ~25 64-wide tl.dots per block instead of ~15, no memory traffic) or written by this
        # block's own forward pass to a scratch slot that only this program uses (STASH on: N_HIDDEN+1
        # activation blocks per program, read back at once, so mostly from L2). Both give the same
        # numbers: a LeakyReLU output has its input's sign, so the mask comes from the stashed output.
        pid_tile = tl.program_id(0)
        pid_blk = tl.program_id(1)
        b = pid_tile // n_tiles
        t = pid_tile % n_tiles
        ty = t // n_tiles_w
        tx = t % n_tiles_w
        DT: tl.constexpr = params_ptr.dtype.element_ty

        p_base = params_ptr + b.to(tl.int64) * stride_pb + ty * stride_ph + tx * stride_pw
        x_base = x_ptr + b.to(tl.int64) * stride_xb
        d_base = dy_ptr + b.to(tl.int64) * stride_db
        slot = pid_tile.to(tl.int64)
        if not ATOMIC:
            slot += pid_blk.to(tl.int64) * n_all_tiles
        g_base = grad_ptr + slot * P
        ACT: tl.constexpr = BLOCK_P * HID
        s_base = stash_ptr + (pid_tile.to(tl.int64) * tl.num_programs(1) + pid_blk) * ((N_HIDDEN + 1) * ACT)
        s_offs = tl.arange(0, BLOCK_P)[:, None] * HID + tl.arange(0, HID)[None, :]

        cols = tl.arange(0, HID)
        ocols = tl.arange(0, OUT_PAD)
        omask = ocols < C_OUT
        N_IN: tl.constexpr = C_IN + N_ENC
        HIDDEN_START: tl.constexpr = HID + N_IN * HID
        LAYER_SIZE: tl.constexpr = HID + HID * HID
        LAST_START: tl.constexpr = HIDDEN_START + N_HIDDEN * LAYER_SIZE
        all_cols = cols < HID

        for s in range(SUB_BLOCKS):
            p = (pid_blk * SUB_BLOCKS + s) * BLOCK_P + tl.arange(0, BLOCK_P)
            pmask = p < TILE * TILE
            py = p // TILE
            px = p % TILE
            gy = ty * TILE + py
            gx = tx * TILE + px

            # ---- forward to the last layer's input -------------------------------------------
            h = _leaky(_layer1(x_base, p_base, px, py, gy, gx, pmask, stride_xc, stride_xh, stride_xw, stride_pc,
                               IS_INDEX, C_IN, C_PAD, TILE, N_ENC, E_PAD, HID, BLOCK_P, UPCAST, INPUT_PRECISION))
            if STASH:
                tl.store(s_base + s_offs, h.to(stash_ptr.dtype.element_ty))
            for j in tl.static_range(N_HIDDEN):
                h = _leaky(_hidden_pre(h, p_base, HIDDEN_START + j * LAYER_SIZE, stride_pc, HID, UPCAST,
                                       INPUT_PRECISION))
                if STASH:
                    tl.store(s_base + (j + 1) * ACT + s_offs, h.to(stash_ptr.dtype.element_ty))
            if STASH:
                tl.debug_barrier()  # the stash is read back by other threads of this program

            # ---- last layer: y = tanh(h W + b); rows outside the tile get dy = 0, so every
            # gradient below is zero there ----------------------------------------------------
            bias = tl.load(p_base + (LAST_START + ocols) * stride_pc, mask=omask, other=0.0).to(tl.float32)
            w = tl.load(p_base + (LAST_START + C_OUT + cols[:, None] * C_OUT + ocols[None, :]) * stride_pc,
                        mask=omask[None, :], other=0.0)
            y = _tanh(_mm(h, w, UPCAST, INPUT_PRECISION) + bias[None, :])
            dy = tl.load(d_base + ocols[None, :] * stride_dc + gy[:, None] * stride_dh + gx[:, None] * stride_dw,
                         mask=pmask[:, None] & omask[None, :], other=0.0).to(tl.float32)
            da = dy * (1.0 - y * y)
            _add_to(g_base + LAST_START + ocols, tl.sum(da, axis=0), omask, ATOMIC)
            _add_to(g_base + LAST_START + C_OUT + cols[:, None] * C_OUT + ocols[None, :],
                    _mm_grad(tl.trans(h), da, DT, UPCAST, INPUT_PRECISION), all_cols[:, None] & omask[None, :], ATOMIC)
            dh = _mm_grad(da, tl.trans(w), DT, UPCAST, INPUT_PRECISION)

            # ---- hidden layers, last to first: the layer's input (recomputed or read back), its grads
            for j in tl.static_range(N_HIDDEN - 1, -1, -1):
                start = HIDDEN_START + j * LAYER_SIZE
                if STASH:
                    hin = tl.load(s_base + j * ACT + s_offs).to(tl.float32)
                    a = tl.load(s_base + (j + 1) * ACT + s_offs).to(tl.float32)  # leaky(a): the sign of a
                else:
                    hin = _leaky(_layer1(x_base, p_base, px, py, gy, gx, pmask, stride_xc, stride_xh, stride_xw,
                                         stride_pc, IS_INDEX, C_IN, C_PAD, TILE, N_ENC, E_PAD, HID, BLOCK_P, UPCAST,
                                         INPUT_PRECISION))
                    for k in tl.static_range(j):
                        hin = _leaky(_hidden_pre(hin, p_base, HIDDEN_START + k * LAYER_SIZE, stride_pc, HID, UPCAST,
                                                 INPUT_PRECISION))
                    a = _hidden_pre(hin, p_base, start, stride_pc, HID, UPCAST, INPUT_PRECISION)
                da = tl.where(a > 0, dh, _SLOPE * dh)
                _add_to(g_base + start + cols, tl.sum(da, axis=0), all_cols, ATOMIC)
                _add_to(g_base + start + HID + cols[:, None] * HID + cols[None, :],
                        _mm_grad(tl.trans(hin), da, DT, UPCAST, INPUT_PRECISION), all_cols[:, None] & all_cols[None, :], ATOMIC)
                w = tl.load(p_base + (start + HID + cols[:, None] * HID + cols[None, :]) * stride_pc)
                dh = _mm_grad(da, tl.trans(w), DT, UPCAST, INPUT_PRECISION)

            # ---- layer 1: bias, input rows (one-hot^T da: a scatter-add by label), encoding rows
            if STASH:
                a = tl.load(s_base + s_offs).to(tl.float32)
            else:
                a = _layer1(x_base, p_base, px, py, gy, gx, pmask, stride_xc, stride_xh, stride_xw, stride_pc,
                            IS_INDEX, C_IN, C_PAD, TILE, N_ENC, E_PAD, HID, BLOCK_P, UPCAST, INPUT_PRECISION)
            da = tl.where(a > 0, dh, _SLOPE * dh)
            _add_to(g_base + cols, tl.sum(da, axis=0), all_cols, ATOMIC)
            ch = tl.arange(0, C_PAD)
            if IS_INDEX:
                lab, ok = _load_labels(x_base, gy, gx, pmask, stride_xh, stride_xw, C_IN)
                xin = tl.where(ok[:, None] & (lab[:, None] == ch[None, :]), 1.0, 0.0)
            else:
                xin = _load_dense(x_base, gy, gx, pmask, stride_xc, stride_xh, stride_xw, C_IN, C_PAD)
            _add_to(g_base + HID + ch[:, None] * HID + cols[None, :],
                    _mm_grad(tl.trans(xin), da, DT, UPCAST, INPUT_PRECISION), (ch < C_IN)[:, None] & all_cols[None, :], ATOMIC)
            if N_ENC > 0:
                e = tl.arange(0, E_PAD)
                enc = _encoding(px, py, TILE, N_ENC, E_PAD)
                _add_to(g_base + HID + (C_IN + e[:, None]) * HID + cols[None, :],
                        _mm_grad(tl.trans(enc), da, DT, UPCAST, INPUT_PRECISION), (e < N_ENC)[:, None] & all_cols[None, :], ATOMIC)
            # the next block's read-add-write of the same slots (and its stash writes) must come after
            # every thread's stores and loads of this block
            tl.debug_barrier()


    @triton.jit
    def _tent_onehot_fwd(
        lab_ptr, taps_ptr, out_ptr,
        H, W, h, w,
        stride_lb, stride_lh, stride_lw,
        stride_ob, stride_oc, stride_oh, stride_ow,
        N_CLS: tl.constexpr, N_PAD: tl.constexpr, FACTOR: tl.constexpr, BLOCK: tl.constexpr,
        ROUND_BF16: tl.constexpr,
    ):
        # tent_downsample(one_hot(labels), FACTOR) without the full-resolution one-hot: each low-res
        # pixel sums the separable tent weights of its 2F x 2F window (reflection padding F/2) into
        # the bins of the labels found there.
        pid = tl.program_id(0)
        b = tl.program_id(1)
        o = pid * BLOCK + tl.arange(0, BLOCK)
        omask = o < h * w
        oy = o // w
        ox = o % w
        cls = tl.arange(0, N_PAD)
        lab_base = lab_ptr + b.to(tl.int64) * stride_lb
        acc = tl.zeros((BLOCK, N_PAD), tl.float32)
        if FACTOR == 1:
            lab = tl.load(lab_base + oy * stride_lh + ox * stride_lw, mask=omask, other=-1)
            acc += tl.where(lab[:, None] == cls[None, :], 1.0, 0.0)
        else:
            # taps as loops, not unrolled: unrolling all (2F)^2 taps made factor 8 with 35 classes a 5 MB
            # PTX that ptxas (sm_90, triton 3.8) had not compiled after 10 minutes; unrolling the
            # columns alone spilled 2.9 KB (factor 4) and 10 KB (factor 8) of registers per thread
            # to the stack, against none with both as loops (benchmarks.kernel_compile's report)
            for ty in range(2 * FACTOR):
                iy = oy * FACTOR - FACTOR // 2 + ty
                iy = tl.where(iy < 0, -iy, iy)                 # reflect (edge not repeated), as F.pad
                iy = tl.where(iy >= H, 2 * (H - 1) - iy, iy)
                wy = tl.load(taps_ptr + ty)
                for tx in range(2 * FACTOR):
                    ix = ox * FACTOR - FACTOR // 2 + tx
                    ix = tl.where(ix < 0, -ix, ix)
                    ix = tl.where(ix >= W, 2 * (W - 1) - ix, ix)
                    wx = tl.load(taps_ptr + tx)
                    lab = tl.load(lab_base + iy * stride_lh + ix * stride_lw, mask=omask, other=-1)
                    acc += tl.where(lab[:, None] == cls[None, :], wy * wx, 0.0)
        if ROUND_BF16:
            acc = _round_bf16(acc)  # the interpreter's own cast would truncate
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + cls[None, :] * stride_oc + oy[:, None] * stride_oh
                 + ox[:, None] * stride_ow, acc.to(out_ptr.dtype.element_ty),
                 mask=omask[:, None] & (cls[None, :] < N_CLS))


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------

def _check_device(t: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError("the fused kernels need triton (it ships with CUDA builds of torch); "
                           "use asap.models.pixelwise.pixelwise_mlp instead")
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpret_mode():
        return
    raise RuntimeError(f"the fused kernels run on CUDA tensors (got a {t.device.type} tensor); on the CPU "
                       "use asap.models.pixelwise.pixelwise_mlp, or set TRITON_INTERPRET=1 before importing "
                       "triton to run the kernel in Triton's interpreter (tests only: it is slow)")


def mlp_constants(channels: list[int], tile: int, c_in: int, *, is_index: bool, positional: bool = True,
                  input_precision: str = "ieee", block_p: int | None = None, sub_blocks: int | None = None,
                  interpreted_bf16: bool = False, round_out: bool = False) -> dict:
    """The constexpr arguments ``_pixelwise_mlp_fwd`` is launched with (also what
    benchmarks/kernel_compile.py builds ahead of time). ``input_precision``: ``kernel_precision``'s.
    ``interpreted_bf16`` / ``round_out``: bf16 parameters / output in Triton's CPU interpreter (see
    ``_mm`` and ``_round_bf16``)."""
    n_enc = 4 * int(math.log2(tile)) if positional else 0
    block_p = block_p or max(16, min(tile * tile, 64))
    if block_p < 16 or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two >= 16, got {block_p}")
    return dict(IS_INDEX=is_index, C_IN=c_in, C_PAD=_next_pow2(c_in), TILE=tile,
                N_ENC=n_enc, E_PAD=_next_pow2(n_enc), HID=channels[1], N_HIDDEN=len(channels) - 3,
                C_OUT=channels[-1], OUT_PAD=_next_pow2(channels[-1]),
                BLOCK_P=block_p, SUB_BLOCKS=sub_blocks or 1, INPUT_PRECISION=input_precision,
                UPCAST=interpreted_bf16, ROUND_OUT=round_out)


# How the kernels multiply bf16 / fp16 parameters. "native": 16-bit tensor-core dots. "tf32": the same
# operands, rounded to the parameters' dtype, on TF32 tensor cores, where they are exact, so the products
# are the same (see _mm). On the H200 (triton 3.6) every native 16-bit dot of these kernels faulted
# with an illegal memory access, or (fp16, S=32) ran and was wrong, while the TF32 dots passed: so
# "tf32" is the default until the campaign's phase 1 shows native ones right on a device.
DOT16_MODES = ("tf32", "native")
DOT16_DEFAULT = "tf32"
DOT16_ENV = "ASAP_FUSED_DOT16"
# The backward's accumulation. Atomic (True): every program of a tile adds its pixel blocks' gradients
# into the tile's one fp32 slot (red.global.add; the summation order, and so the last bits, vary from
# run to run). Read-add-write (False): each program owns a slot (summed afterwards) and adds into it with
# a plain load and store: deterministic, but wrong on the H200 where a tile spans several programs or
# blocks of 16 pixels (phase 1: grad_split_tile_S16 8.8, grad_tiny_tile_S2 4.5 relative error).
BWD_ATOMIC = True
BWD_ATOMIC_ENV = "ASAP_FUSED_BWD_ATOMIC"


def default_dot16() -> str:
    """How bf16 / fp16 parameters are multiplied: $ASAP_FUSED_DOT16 ("tf32" / "native"), else DOT16_DEFAULT."""
    value = os.environ.get(DOT16_ENV, "").strip().lower()
    if value not in ("",) + DOT16_MODES:
        raise ValueError(f"{DOT16_ENV}={value!r}: expected 'tf32' (16-bit operands on TF32 tensor cores, "
                         "exact) or 'native' (16-bit tensor-core dots)")
    return value or DOT16_DEFAULT


def _env_bit(name: str, default: bool, one: str, zero: str) -> bool:
    """$name as 1 / 0 (``one`` / ``zero`` say what each means, for the error), else ``default``."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name}={value!r}: expected 1 ({one}) or 0 ({zero})")
    return default if value == "" else value == "1"


def default_atomic() -> bool:
    """Whether the backward accumulates with atomics: $ASAP_FUSED_BWD_ATOMIC (0 / 1), else BWD_ATOMIC."""
    return _env_bit(BWD_ATOMIC_ENV, BWD_ATOMIC, "atomic adds into one slot per tile",
                    "one slot per program, read-add-write")


def kernel_precision(params_dtype: torch.dtype, input_precision: str = "ieee", dot16: str | None = None) -> str:
    """The kernels' INPUT_PRECISION: ``input_precision`` ("ieee" / "tf32") for fp32 parameters; for
    bf16 / fp16 ones "tf32" when ``dot16`` (default ``default_dot16()``) is "tf32", else "ieee" (a
    16-bit dot, for which the setting means nothing)."""
    if input_precision not in ("ieee", "tf32"):
        raise ValueError(f"input_precision must be 'ieee' or 'tf32', got {input_precision!r}")
    if params_dtype == torch.float32:
        return input_precision
    dot16 = default_dot16() if dot16 is None else dot16
    if dot16 not in DOT16_MODES:
        raise ValueError(f"dot16 must be one of {DOT16_MODES}, got {dot16!r}")
    return "tf32" if dot16 == "tf32" else "ieee"


# The backward's launch defaults. Chosen from the sm_90 build's resource report (benchmarks.kernel_compile,
# cuobjdump), not from timings (none yet): every variant uses all 255 registers per thread, and the
# stack they spill to was, for the bf16 S=16 training variant, 2224 B per thread with 64 pixels and 4
# warps, 168 B with 32 pixels and 8 warps (fp32/tf32x3: 2808 B and 656 B).
BWD_BLOCK_P = 32
BWD_NUM_WARPS = 8
# ... except for blocks of 16 pixels (tiles of 2x2 and 4x4, or a caller's bwd_block_p=16): there, with
# fp32 parameters (tf32x3 dots), 8 warps gave wrong weight gradients of the hidden layers on the H200
# (triton 3.6; O(1) off, sometimes an illegal memory access), 4 warps the right ones (a second H200
# run, benchmarks/diag_fused_bwd.py). So such blocks run 4 warps, and 8 are refused.
BWD_NUM_WARPS_16 = 4


def backward_block_p(tile: int, block_p: int | None = None) -> int:
    """The backward's pixels per block: ``block_p``, default BWD_BLOCK_P (at most the tile, at least 16)."""
    block_p = block_p or max(16, min(tile * tile, BWD_BLOCK_P))
    if block_p < 16 or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two >= 16, got {block_p}")
    return block_p


def backward_warps(block_p: int, num_warps: int | None = None) -> int:
    """The backward's warps for blocks of ``block_p`` pixels: ``num_warps`` (default BWD_NUM_WARPS, or
    BWD_NUM_WARPS_16 for 16-pixel blocks); more than 4 with 16-pixel blocks is refused (see above)."""
    if block_p < 32:
        if num_warps and num_warps > BWD_NUM_WARPS_16:
            raise ValueError(f"bwd_num_warps={num_warps} with {block_p}-pixel blocks: at most {BWD_NUM_WARPS_16} "
                             "(8 warps gave wrong gradients on an H200); use bwd_block_p >= 32 for more")
        return num_warps or BWD_NUM_WARPS_16
    return num_warps or BWD_NUM_WARPS
# Recompute (False) or stash (True) the activations inside the backward: not yet timed against each
# other (phase 3 of the GPU campaign times both, and phase 4 trains with the faster, through
# $ASAP_FUSED_BWD_STASH = 0 / 1, which overrides this default). The stashing one builds to a smaller
# binary with fewer spills (sm_90, bf16 S=16: 72 B of stack per thread against 168 B).
BWD_STASH = False
BWD_STASH_ENV = "ASAP_FUSED_BWD_STASH"


def default_stash() -> bool:
    """Whether the backward stashes activations: $ASAP_FUSED_BWD_STASH (0 / 1), else BWD_STASH."""
    return _env_bit(BWD_STASH_ENV, BWD_STASH, "keep the activations in a scratch buffer",
                    "recompute the activations in the fused backward")


def backward_constants(const: dict, channels: list[int], sub_blocks: int | None = None, *,
                       block_p: int | None = None, fp32_params: bool = False, stash: bool = False,
                       atomic: bool = True) -> dict:
    """The constexpr arguments ``_pixelwise_mlp_bwd`` is launched with, from the forward's
    ``mlp_constants``: ``block_p`` pixels per block (default BWD_BLOCK_P, at most the tile), by
    default one program per tile (SUB_BLOCKS = the tile's pixel blocks); ``stash``: activations kept
    in a scratch buffer instead of recomputed (see ``_pixelwise_mlp_bwd``); ``atomic``: the tile's
    programs add into one slot with atomics (BWD_ATOMIC). fp32 parameters at "ieee"
    precision run the backward's dots as "tf32x3" (three TF32 tensor-core products, fp32-level
    error): ~25 unrolled 64-wide fp32 FMA dots took ptxas ~100 s per variant (a 5 MB cubin), too long
    for the campaign's compile budget."""
    bwd = {k: v for k, v in const.items() if k != "ROUND_OUT"}
    if fp32_params and bwd["INPUT_PRECISION"] == "ieee" and not interpret_mode():
        bwd["INPUT_PRECISION"] = "tf32x3"
    block_p = backward_block_p(const["TILE"], block_p)
    bwd["BLOCK_P"] = block_p
    bwd["SUB_BLOCKS"] = sub_blocks or -(-const["TILE"] ** 2 // block_p)
    bwd["P"] = num_mlp_params(channels)
    bwd["STASH"] = stash
    bwd["ATOMIC"] = atomic
    return bwd


def tent_constants(num_classes: int, factor: int, block: int = 64, round_bf16: bool = False) -> dict:
    """The constexpr arguments ``_tent_onehot_fwd`` is launched with."""
    return dict(N_CLS=num_classes, N_PAD=_next_pow2(num_classes, 2), FACTOR=factor, BLOCK=block,
                ROUND_BF16=round_bf16)


@dataclass(frozen=True)
class _Launch:
    """A checked call of the pixelwise MLP: what both kernels are launched with."""
    x: torch.Tensor          # (B, 1, H, W) class indices or (B, C, H, W) dense input
    params: torch.Tensor     # (B, P, h, w) or (B, P, 1, 1), channels-last memory
    const: dict              # mlp_constants of this call
    B: int
    H: int
    W: int
    h: int
    w: int
    uniform: bool


def _prepare(labels_or_x, params, channels, tile, positional, num_classes, check_labels, input_precision,
             block_p, sub_blocks, dot16=None) -> _Launch:
    reason = unsupported_reason(channels, tile)
    if reason:
        raise ValueError(f"fused_pixelwise_mlp: {reason}; use asap.models.pixelwise.pixelwise_mlp")
    _check_device(params)
    if not params.is_floating_point() or params.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"params must be float32, bfloat16 or float16, got {params.dtype}")
    if labels_or_x.device != params.device:
        raise ValueError(f"input is on {labels_or_x.device}, params on {params.device}")
    precision = kernel_precision(params.dtype, input_precision, dot16)

    n_enc = 4 * int(math.log2(tile)) if positional else 0
    is_index = not labels_or_x.is_floating_point()
    x = labels_or_x
    if is_index:
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"class-index label maps must be (B, H, W) or (B, 1, H, W), got {tuple(labels_or_x.shape)}")
        c_in = channels[0] - n_enc if num_classes is None else num_classes
        if c_in + n_enc != channels[0]:
            raise ValueError(f"MLP expects {channels[0]} input channels; {c_in} classes"
                             f"{f' + {n_enc} encoding channels' if n_enc else ''} give {c_in + n_enc}")
        if check_labels:
            bad = (x < 0) | (x >= c_in)
            if bool(bad.any()):
                values = sorted(set(x[bad].unique().tolist()))[:10]
                raise ValueError(f"label values {values} are outside the {c_in} classes (allowed: 0..{c_in - 1})")
    else:
        if x.dim() != 4:
            raise ValueError(f"dense input must be (B, C, H, W), got {tuple(x.shape)}")
        c_in = x.shape[1]
        if c_in + n_enc != channels[0]:
            raise ValueError(f"MLP expects {channels[0]} input channels, got {c_in}"
                             f"{f' + {n_enc} encoding channels' if n_enc else ''}")
    B, _, H, W = x.shape
    if H % tile or W % tile:
        raise ValueError(f"input {H}x{W} is not divisible by the tile size S={tile}")
    h, w = H // tile, W // tile
    P = num_mlp_params(channels)
    if params.shape[0] != B or params.shape[1] != P:
        raise ValueError(f"params are {tuple(params.shape)}, the MLP {channels} on batch {B} needs ({B}, {P}, ...)")
    uniform = params.shape[2:] == (1, 1)
    if not uniform and params.shape[2:] != (h, w):
        raise ValueError(f"parameter grid is {tuple(params.shape[2:])}, expected {(h, w)} "
                         f"for a {H}x{W} input with S={tile}")
    # Channels-last puts one tile's P parameters next to each other (coalesced weight loads); the
    # fast generator's low-res stream already produces this layout, so this is usually free.
    # Detached: the kernels read it; gradients reach the caller's tensor through _FusedPixelwiseMLP.
    params = params.detach().contiguous(memory_format=torch.channels_last)
    const = mlp_constants(channels, tile, c_in, is_index=is_index, positional=positional,
                          input_precision=precision, block_p=block_p, sub_blocks=sub_blocks,
                          interpreted_bf16=params.device.type == "cpu" and params.dtype == torch.bfloat16)
    return _Launch(x, params, const, B, H, W, h, w, uniform)


def _param_strides(call: _Launch) -> tuple[int, int, int, int]:
    sb = call.params.stride()
    return sb[0], sb[1], 0 if call.uniform else sb[2], 0 if call.uniform else sb[3]


def _forward(call: _Launch, channels: list[int], out_dtype: torch.dtype | None, num_warps: int | None) -> torch.Tensor:
    params = call.params
    out = torch.empty(call.B, channels[-1], call.H, call.W, device=params.device, dtype=out_dtype or params.dtype)
    const = {**call.const, "ROUND_OUT": params.device.type == "cpu" and out.dtype == torch.bfloat16}
    tile = const["TILE"]
    blocks = triton.cdiv(tile * tile, const["BLOCK_P"])
    grid = (call.B * call.h * call.w, triton.cdiv(blocks, const["SUB_BLOCKS"]))
    _pixelwise_mlp_fwd[grid](
        call.x, params, out,
        call.w, call.h * call.w,
        *call.x.stride(), *_param_strides(call), *out.stride(),
        **const,
        **({"num_warps": num_warps} if num_warps else {}),
    )
    return out


def stash_dtype(params_dtype: torch.dtype, device_type: str) -> torch.dtype:
    """The scratch of the stashing backward: bf16 activations for bf16 parameters (exactly the dot
    operands they become; a LeakyReLU output keeps its sign), fp32 otherwise (fp16 would flush tiny
    ones to zero) and in the interpreter (its bf16 store truncates instead of rounding)."""
    return torch.bfloat16 if params_dtype == torch.bfloat16 and device_type == "cuda" else torch.float32


def _backward(call: _Launch, grad_out: torch.Tensor, channels: list[int], block_p: int | None = None,
              sub_blocks: int | None = None, num_warps: int | None = None, stash: bool | None = None,
              atomic: bool | None = None) -> torch.Tensor:
    """dL/d(params) in params' shape and dtype, from dL/d(output). By default one program per tile
    sums the tile's whole gradient; ``sub_blocks`` splits a tile over several programs. ``atomic``
    (default ``default_atomic()``): they all add into the tile's one slot with atomics; else each
    program has its own slot (read-add-write, deterministic) and the slots are summed afterwards."""
    params = call.params
    stash = default_stash() if stash is None else stash
    atomic = default_atomic() if atomic is None else atomic
    const = backward_constants(call.const, channels, sub_blocks, block_p=block_p,
                               fp32_params=params.dtype == torch.float32, stash=stash, atomic=atomic)
    tile, P = const["TILE"], const["P"]
    groups = triton.cdiv(triton.cdiv(tile * tile, const["BLOCK_P"]), const["SUB_BLOCKS"])
    n_all = call.B * call.h * call.w
    grad = torch.zeros(1 if atomic else groups, n_all, P, device=params.device, dtype=torch.float32)
    scratch = (torch.empty(n_all * groups * (const["N_HIDDEN"] + 1) * const["BLOCK_P"] * const["HID"],
                           device=params.device, dtype=stash_dtype(params.dtype, params.device.type))
               if stash else grad)  # without STASH the pointer is never read
    _pixelwise_mlp_bwd[(n_all, groups)](
        call.x, params, grad_out, grad, scratch,
        call.w, call.h * call.w, n_all,
        *call.x.stride(), *_param_strides(call), *grad_out.stride(),
        **const,
        num_warps=backward_warps(const["BLOCK_P"], num_warps),
    )
    grad = grad.sum(0) if grad.shape[0] > 1 else grad[0]
    grad = grad.view(call.B, call.h, call.w, P).permute(0, 3, 1, 2)  # (B, P, h, w), channels-last memory
    if call.uniform:
        grad = grad.sum(dim=(2, 3), keepdim=True)
    return grad.to(params.dtype)


class _FusedPixelwiseMLP(torch.autograd.Function):
    """The fused forward, differentiable in the parameters (the labels or input get no gradient)."""

    @staticmethod
    def forward(ctx, x, params, call, channels, out_dtype, num_warps, backward_options):
        ctx.call, ctx.channels, ctx.backward_options = call, channels, backward_options
        ctx.params_shape = params.shape
        return _forward(call, channels, out_dtype, num_warps)

    @staticmethod
    def backward(ctx, grad_out):
        grad = None
        if ctx.needs_input_grad[1]:
            grad = _backward(ctx.call, grad_out, ctx.channels, **ctx.backward_options)
            if grad.shape != ctx.params_shape:
                grad = grad.reshape(ctx.params_shape)
        ctx.call = None  # drop the references to the input and parameters
        return None, grad, None, None, None, None, None


def fused_pixelwise_mlp(labels_or_x: torch.Tensor, params: torch.Tensor, channels: list[int], tile: int,
                        positional: bool = True, num_classes: int | None = None, *,
                        check_labels: bool = True, out_dtype: torch.dtype | None = None,
                        input_precision: str = "ieee", block_p: int | None = None,
                        sub_blocks: int | None = None, num_warps: int | None = None,
                        bwd_block_p: int | None = None, bwd_sub_blocks: int | None = None,
                        bwd_num_warps: int | None = None, bwd_stash: bool | None = None,
                        bwd_atomic: bool | None = None, dot16: str | None = None) -> torch.Tensor:
    """The pixelwise MLP of ``pixelwise_mlp`` in one kernel, differentiable in ``params``.

    labels_or_x: integer class indices (B, H, W) or (B, 1, H, W), taken as the one-hot input of width
                 ``num_classes`` (default: channels[0] minus the encoding), or a dense float
                 (B, C, H, W) input (an image, or a one-hot map with extra channels). It gets no
                 gradient: an input that requires one is refused.
    params:      (B, P, H/S, W/S) or (B, P, 1, 1); fp32, bf16 or fp16. Layers run in the parameters'
                 dtype with fp32 accumulation; the output has ``out_dtype`` (default: params' dtype).
                 When params require grad, backward runs the fused backward kernel (``_backward``):
                 it recomputes each layer's input instead of storing activations.
    input_precision: "ieee" (exact fp32, the default) or "tf32" for fp32 parameters.
    dot16:       bf16 / fp16 parameters: "tf32" (their operands on TF32 tensor cores, exact) or
                 "native" (16-bit dots); default ``default_dot16()`` ($ASAP_FUSED_DOT16, else "tf32").
    check_labels: verify the indices lie in 0..num_classes-1 (a device sync; the kernel itself reads
                 a zero row for out-of-range labels, so skipping the check is memory-safe).
    block_p / sub_blocks / num_warps: the forward's launch (pixels per block, blocks per program);
    bwd_*: the backward's (defaults BWD_BLOCK_P, one program per tile, ``backward_warps``: BWD_NUM_WARPS,
    or 4 for 16-pixel blocks, where 8 are refused, default_stash(),
    default_atomic()).
    Returns (B, channels[-1], H, W).
    """
    if labels_or_x.requires_grad and torch.is_grad_enabled():
        raise ValueError("fused_pixelwise_mlp gives no gradient to its input (label maps and one-hot inputs "
                         "need none); use asap.models.pixelwise.pixelwise_mlp to differentiate through the input")
    call = _prepare(labels_or_x, params, channels, tile, positional, num_classes, check_labels, input_precision,
                    block_p, sub_blocks, dot16)
    if params.requires_grad and torch.is_grad_enabled():
        backward_warps(backward_block_p(tile, bwd_block_p), bwd_num_warps)  # a refused launch fails here, not in backward
        backward_options = dict(block_p=bwd_block_p, sub_blocks=bwd_sub_blocks, num_warps=bwd_num_warps,
                                stash=bwd_stash, atomic=bwd_atomic)
        return _FusedPixelwiseMLP.apply(call.x, params, call, channels, out_dtype, num_warps, backward_options)
    return _forward(call, channels, out_dtype, num_warps)


def tent_onehot(labels: torch.Tensor, num_classes: int, factor: int, dtype: torch.dtype = torch.float32,
                block: int = 64) -> torch.Tensor:
    """``tent_downsample(one_hot(labels, num_classes), factor)`` straight from class indices: the
    low-res stream's input without writing the full-resolution one-hot (num_classes floats per pixel).

    labels: (B, H, W) integer indices, already checked to lie in 0..num_classes-1 (others count for
    no class). Returns (B, num_classes, H/factor, W/factor) in channels-last memory.
    """
    _check_device(labels)
    if labels.is_floating_point() or labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W) integer class indices, got {labels.dtype} {tuple(labels.shape)}")
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"factor must be a power of two, got {factor}")
    B, H, W = labels.shape
    if H % factor or W % factor or (factor > 1 and min(H, W) <= factor // 2):
        raise ValueError(f"a {H}x{W} label map cannot be tent-downsampled by {factor}")
    h, w = H // factor, W // factor
    # The same taps as asapnet.tent_downsample: [1, 3, ..., 2f-1, 2f-1, ..., 3, 1] / (2 f^2).
    ramp = torch.arange(1, 2 * factor + 1, 2, dtype=torch.float32, device=labels.device)
    taps = torch.cat([ramp, ramp.flip(0)])
    taps = taps / taps.sum()
    out = torch.empty(B, h, w, num_classes, device=labels.device, dtype=dtype).permute(0, 3, 1, 2)
    grid = (triton.cdiv(h * w, block), B)
    _tent_onehot_fwd[grid](
        labels, taps, out, H, W, h, w, *labels.stride(), *out.stride(),
        **tent_constants(num_classes, factor, block, round_bf16=labels.device.type == "cpu" and dtype == torch.bfloat16),
    )
    return out
