"""Fused InstanceNorm (+ ReLU) for the low-res stream of the fast inference path.

Each of the low-res stream's 3x3 convs is followed by an affine ``InstanceNorm2d`` and a ReLU. In
eager PyTorch that norm is several kernels, and it undoes the channels-last layout the convs run in:
``aten::instance_norm`` makes the input NCHW-contiguous (a copy), repeats the affine weight and bias
per sample (two more), runs batch norm on the (1, B*C, H, W) view, returns NCHW, and the next conv
copies it back to channels-last; the ReLU is one more. At the 16 x 16 grid of the 1024-wide blocks
each of these is a few microseconds of launch for almost no work, eleven times per forward.

Here a norm is two Triton kernels that read the conv's channels-last output where it lies:

1. ``_in_stats``: one program per (sample, block of channels, chunk of pixels) writes its chunk's
   per-channel mean and sum of squared deviations (two passes over the chunk, in fp32, of x - K with
   K the sample's first pixel, so a large mean costs no precision);
2. ``_in_apply``: the same grid; each program merges the chunks' partials of its channels (Chan et
   al.'s pairwise formula, so a large mean does not cancel the variance), then writes
   ``relu((x - mean) * rsqrt(var + eps) * weight + bias)`` over its chunk, channels-last.

Chunks keep the grid wide at every size: 256 x 256 x 64 (the first conv at 1024 x 1024) and
16 x 16 x 1024 (the blocks) both give hundreds of programs. The function is exactly
``F.instance_norm(x, weight=w, bias=b, eps=eps)`` (biased variance, no running statistics), in fp32
whatever the input dtype, rounded once to the input dtype at the end.

Inference only (no backward). Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``
(how the tests check it). Imports only torch and triton.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from asap.config import env_switch
from asap.models.pixelwise_fused import _check_device, interpret_mode, triton

if triton is not None:
    import triton.language as tl

    from asap.models.pixelwise_fused import _round_bf16

    @triton.jit
    def _program(x_ptr, HW, C, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
        # grid (channel block, chunk, sample) -> this program's chunk index k, sample b, channels, the
        # chunk's pixel range, the sample's offset in x, and K: the sample's first pixel. Both kernels
        # work on x - K: values near K cancel exactly, so a large mean costs no precision (the
        # shifted-data algorithm for the variance).
        k = tl.program_id(1)
        b = tl.program_id(2)
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        start = k * CHUNK
        end = tl.minimum(start + CHUNK, HW)
        base = b.to(tl.int64) * HW * C
        shift_k = tl.load(x_ptr + base + cols, mask=cmask, other=0.0).to(tl.float32)
        return k, b, cols, cmask, start, end, base, shift_k

    @triton.jit
    def _in_stats(x_ptr, mean_ptr, m2_ptr, HW, C, N_CHUNKS,
                  CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # x: (B, HW, C) with channels contiguous (a channels-last NCHW tensor); partials: (B, N_CHUNKS, C)
        k, b, cols, cmask, start, end, base, shift_k = _program(x_ptr, HW, C, CHUNK, BLOCK_C)
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        # constexpr loop bounds: triton 3.6's interpreter cannot loop to a runtime value
        for p0 in range(0, CHUNK, BLOCK_P):
            rows = start + p0 + tl.arange(0, BLOCK_P)
            m = (rows < end)[:, None] & cmask[None, :]
            v = tl.load(x_ptr + base + rows[:, None].to(tl.int64) * C + cols[None, :], mask=m, other=0.0)
            acc += tl.sum(tl.where(m, v.to(tl.float32) - shift_k[None, :], 0.0), axis=0)
        n = (end - start).to(tl.float32)
        mean = acc / n  # of x - K
        acc2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for p0 in range(0, CHUNK, BLOCK_P):  # second pass over the chunk (cache-resident): no cancellation
            rows = start + p0 + tl.arange(0, BLOCK_P)
            m = (rows < end)[:, None] & cmask[None, :]
            v = tl.load(x_ptr + base + rows[:, None].to(tl.int64) * C + cols[None, :], mask=m, other=0.0)
            d = tl.where(m, (v.to(tl.float32) - shift_k[None, :]) - mean[None, :], 0.0)
            acc2 += tl.sum(d * d, axis=0)
        offs = (b * N_CHUNKS + k) * C + cols
        tl.store(mean_ptr + offs, mean, mask=cmask)
        tl.store(m2_ptr + offs, acc2, mask=cmask)

    @triton.jit
    def _in_apply(x_ptr, out_ptr, mean_ptr, m2_ptr, w_ptr, b_ptr, HW, C, N_CHUNKS, eps,
                  RELU: tl.constexpr, ROUND_BF16: tl.constexpr, CHUNK: tl.constexpr, BLOCK_P: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, K_SPAN: tl.constexpr):
        k, b, cols, cmask, start, end, base, shift_k = _program(x_ptr, HW, C, CHUNK, BLOCK_C)
        total = HW.to(tl.float32)
        part = mean_ptr + b * N_CHUNKS * C
        part2 = m2_ptr + b * N_CHUNKS * C
        # merge the chunks' partials (means of x - K): mean = sum n_k mean_k / N; M2 = sum M2_k + n_k (mean_k - mean)^2
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for k0 in range(0, K_SPAN, BLOCK_K):  # K_SPAN >= N_CHUNKS, a power of two
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < N_CHUNKS
            nk = tl.minimum(tl.maximum(HW - ks * CHUNK, 0), CHUNK).to(tl.float32)
            mk = tl.load(part + ks[:, None] * C + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0)
            acc += tl.sum(nk[:, None] * mk, axis=0)
        mean = acc / total
        m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for k0 in range(0, K_SPAN, BLOCK_K):  # K_SPAN >= N_CHUNKS, a power of two
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < N_CHUNKS
            km = kmask[:, None] & cmask[None, :]
            nk = tl.minimum(tl.maximum(HW - ks * CHUNK, 0), CHUNK).to(tl.float32)
            mk = tl.load(part + ks[:, None] * C + cols[None, :], mask=km, other=0.0)
            qk = tl.load(part2 + ks[:, None] * C + cols[None, :], mask=km, other=0.0)
            d = tl.where(km, mk - mean[None, :], 0.0)
            m2 += tl.sum(qk + nk[:, None] * d * d, axis=0)
        rstd = 1.0 / tl.sqrt(m2 / total + eps)
        scale = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32) * rstd
        shift = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        # constexpr loop bounds: triton 3.6's interpreter cannot loop to a runtime value
        for p0 in range(0, CHUNK, BLOCK_P):
            rows = start + p0 + tl.arange(0, BLOCK_P)
            m = (rows < end)[:, None] & cmask[None, :]
            offs = base + rows[:, None].to(tl.int64) * C + cols[None, :]
            # (x - K) - mean first: folding the mean into the shift would cancel two large terms
            v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
            y = ((v - shift_k[None, :]) - mean[None, :]) * scale[None, :] + shift[None, :]
            if RELU:
                y = tl.maximum(y, 0.0)
            if ROUND_BF16:
                y = _round_bf16(y)  # the interpreter's own cast would truncate
            tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)


TARGET_PROGRAMS = 512  # per kernel: a few waves on a 132-SM H100/H200, so small grids still fill the GPU
MAX_CHUNKS = 256


def launch_plan(batch: int, hw: int, channels: int, target_programs: int = TARGET_PROGRAMS) -> dict:
    """Block and chunk sizes for a (batch, hw pixels, channels) norm: BLOCK_C channels per program
    (at most 64), BLOCK_P pixels per load (~4096 elements), and the pixels cut into N_CHUNKS chunks of
    CHUNK (a multiple of BLOCK_P) so that about ``target_programs`` programs run."""
    block_c = min(64, max(16, 1 << math.ceil(math.log2(channels))))
    block_p = max(16, 4096 // block_c)
    c_blocks = math.ceil(channels / block_c)
    want = max(1, min(MAX_CHUNKS, math.ceil(target_programs / (batch * c_blocks))))
    # loop lengths are constexpr (one compile each): CHUNK = BLOCK_P * a power of two, so a few values
    # cover every layer; the merge loop runs over K_SPAN >= N_CHUNKS, also a power of two
    chunk = block_p * _pow2_at_least(math.ceil(hw / want / block_p))
    n_chunks = math.ceil(hw / chunk)
    return {"BLOCK_C": block_c, "BLOCK_P": block_p, "CHUNK": chunk, "N_CHUNKS": n_chunks, "c_blocks": c_blocks,
            "K_SPAN": max(16, _pow2_at_least(n_chunks))}


def _pow2_at_least(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def instance_norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                      relu: bool = True) -> torch.Tensor:
    """``relu(F.instance_norm(x, weight=weight, bias=bias, eps=eps))`` (or without the ReLU) for a
    (B, C, H, W) tensor; the result is channels-last in x's dtype. Statistics in fp32."""
    _check_device(x)
    if x.dim() != 4:
        raise ValueError(f"instance_norm_act expects (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if weight is None or bias is None or weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"instance_norm_act needs an affine weight and bias of shape ({C},), got "
                         f"{None if weight is None else tuple(weight.shape)} and {None if bias is None else tuple(bias.shape)}")
    if H * W < 2:
        raise ValueError(f"instance norm over a {H}x{W} map: the variance needs at least 2 pixels")
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    hw = H * W
    plan = launch_plan(B, hw, C)
    mean = torch.empty(B, plan["N_CHUNKS"], C, device=x.device, dtype=torch.float32)
    m2 = torch.empty_like(mean)
    grid = (plan["c_blocks"], plan["N_CHUNKS"], B)
    _in_stats[grid](x, mean, m2, hw, C, plan["N_CHUNKS"], **stats_constants(plan))
    _in_apply[grid](x, out, mean, m2, weight, bias, hw, C, plan["N_CHUNKS"], float(eps),
                    **apply_constants(plan, relu, round_bf16=x.device.type == "cpu" and x.dtype == torch.bfloat16))
    return out


def stats_constants(plan: dict) -> dict:
    """The constexpr arguments of ``_in_stats`` for a launch_plan (benchmarks/kernel_compile.py builds
    the same). CHUNK is one of them: a stream compiles one variant per distinct chunk length (a few)."""
    return {"CHUNK": plan["CHUNK"], "BLOCK_P": plan["BLOCK_P"], "BLOCK_C": plan["BLOCK_C"]}


def apply_constants(plan: dict, relu: bool, round_bf16: bool = False) -> dict:
    """The constexpr arguments of ``_in_apply``: the ReLU or not, and the interpreter's bf16 rounding."""
    return {"RELU": bool(relu), "ROUND_BF16": bool(round_bf16), **stats_constants(plan), "BLOCK_K": 16,
            "K_SPAN": plan["K_SPAN"]}


FUSED_NORM_ENV = "ASAP_FUSED_NORM"


def fused_norm_default() -> bool | str:
    """``FastGenerator``'s default ``fused_norm``: $ASAP_FUSED_NORM as 0 / 1 / auto (default auto)."""
    return env_switch(FUSED_NORM_ENV, "the low-res stream's InstanceNorm + ReLU as Triton kernels in the fast "
                                      "path: never, always, on CUDA when they can run")


def kernel_available(device: torch.device) -> bool:
    """Whether the norm kernels can run on ``device`` (CUDA with triton, or the CPU interpreter)."""
    return triton is not None and (device.type == "cuda" or (device.type == "cpu" and interpret_mode()))


class FusedInstanceNormReLU(nn.Module):
    """An affine ``InstanceNorm2d`` (+ the ReLU after it) as the two kernels above; shares the norm's
    parameters."""

    def __init__(self, norm: nn.InstanceNorm2d, relu: bool = True):
        super().__init__()
        if not (isinstance(norm, nn.InstanceNorm2d) and norm.affine and not norm.track_running_stats):
            raise ValueError(f"FusedInstanceNormReLU replaces an affine InstanceNorm2d without running "
                             f"statistics, got {norm!r}")
        self.norm = norm
        self.relu = relu

    def forward(self, x):
        return instance_norm_act(x, self.norm.weight, self.norm.bias, self.norm.eps, self.relu)

    def extra_repr(self) -> str:
        return f"{self.norm.num_features}, eps={self.norm.eps}, relu={self.relu}"


def _leaves(module: nn.Module) -> list[nn.Module]:
    """A stream's modules in execution order: nested Sequentials (and ConvBlock, whose forward is its
    one Sequential) unrolled."""
    children = list(module.children())
    if not children or isinstance(module, (FusedInstanceNormReLU, GemmConv, SplitKConv)):  # ours: already one step
        return [module]
    if not isinstance(module, nn.Sequential) and len(children) != 1:
        raise ValueError(f"cannot unroll {type(module).__name__}: its forward is not a plain sequence")
    return [leaf for child in children for leaf in _leaves(child)]


def fuse_norms(stream: nn.Module) -> nn.Sequential:
    """The low-res stream as one flat Sequential of the same modules (parameters shared), each
    InstanceNorm2d + ReLU pair (or lone InstanceNorm2d) replaced by a FusedInstanceNormReLU."""
    leaves, out, i = _leaves(stream), [], 0
    while i < len(leaves):
        m = leaves[i]
        if isinstance(m, nn.InstanceNorm2d):
            relu = i + 1 < len(leaves) and isinstance(leaves[i + 1], nn.ReLU)
            out.append(FusedInstanceNormReLU(m, relu=relu))
            i += 2 if relu else 1
        else:
            out.append(m)
            i += 1
    return nn.Sequential(*out)


# ----------------------------------------------------------------------------------------------
# The wide convolutions as GEMMs
# ----------------------------------------------------------------------------------------------

GEMM_MIN_CHANNELS = 256  # convs at least this wide (the 1024-wide blocks and the final 1x1) may run as GEMMs


def tap_views(nhwc: torch.Tensor, pad: int) -> tuple[list[torch.Tensor], int, int]:
    """The nine (B, h, w, C) windows a 3x3 conv reads, in (dy, dx) order, of a (B, H, W, C) input
    zero-padded by ``pad`` (0 or 1) -> (windows, h, w)."""
    B, H, W, C = nhwc.shape
    if pad:
        padded = nhwc.new_zeros(B, H + 2, W + 2, C)
        padded[:, 1:-1, 1:-1] = nhwc
    else:
        padded = nhwc
    h, w = padded.shape[1] - 2, padded.shape[2] - 2
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], h, w


class GemmConv(nn.Module):
    """A stride-1 3x3 (zero padding 0 or 1) or 1x1 ``Conv2d`` on a channels-last input as ONE matrix
    product: the (pixels, 9 C) im2col matrix times the (9 C, C_out) weight, through cuBLAS.

    Why: at batch 1 the low-res stream's 1024-wide blocks have only h*w = 256-512 output pixels, so an
    implicit-GEMM convolution has few output tiles to spread over the GPU's SMs; cuBLAS's heuristics
    split the long K = 9216 across them. Which one is faster is measured, not assumed:
    ``FastGenerator`` times both forms of the stream for each input shape and keeps the faster. Same
    function as the conv (shares its parameters; the reordered weight is a cached copy in the conv's
    dtype, rewritten in place when the conv's weight has changed since: ``refresh``).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        ok = (isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.dilation == (1, 1) and s == (1, 1)
              and conv.padding_mode == "zeros" and ((k == (3, 3) and p in ((0, 0), (1, 1))) or (k == (1, 1) and p == (0, 0))))
        if not ok:
            raise ValueError(f"GemmConv takes a stride-1 3x3 (padding 0 or 1, zeros) or 1x1 Conv2d, got {conv!r}")
        self.conv = conv
        self.taps = k[0]
        self.pad = p[0]
        # (C_out, C_in, kh, kw) -> (kh * kw * C_in, C_out): the im2col matrix's column order below
        self.register_buffer("weight_t", self._reordered(), persistent=False)
        self._weight_version = conv.weight._version

    def _reordered(self) -> torch.Tensor:
        w = self.conv.weight.detach()
        return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()

    def refresh(self) -> bool:
        """Rewrite the cached weight if the conv's weight changed since it was made (an in-place update:
        ``load_state_dict``, an optimiser step, a cast): in place, so a CUDA graph that reads it stays
        valid. A host-side version check, no device work when nothing changed. True if it rewrote."""
        w = self.conv.weight
        if w._version == self._weight_version and w.dtype == self.weight_t.dtype and w.device == self.weight_t.device:
            return False
        new = self._reordered()
        if new.dtype == self.weight_t.dtype and new.device == self.weight_t.device:
            with torch.no_grad():
                self.weight_t.copy_(new)
        else:  # a cast or a move made a new weight: a new buffer (a graph captured before is stale anyway)
            self.weight_t = new
        self._weight_version = w._version
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.refresh()
        B, C, H, W = x.shape
        nhwc = x.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            nhwc = nhwc.contiguous()
        if self.taps == 1:
            cols, h, w = nhwc, H, W
        else:
            views, h, w = tap_views(nhwc, self.pad)
            cols = torch.cat(views, dim=3)
        flat = cols.reshape(B * h * w, cols.shape[3])
        bias = self.conv.bias
        out = torch.addmm(bias, flat, self.weight_t) if bias is not None else flat @ self.weight_t
        return out.view(B, h, w, -1).permute(0, 3, 1, 2)  # (B, C_out, h, w) in channels-last memory

    def extra_repr(self) -> str:
        return f"{self.conv.in_channels}, {self.conv.out_channels}, taps={self.taps}x{self.taps}, pad={self.pad}"


class SplitKConv(nn.Module):
    """A ``GemmConv``'s 3x3 convolution split along K by tap: nine (pixels, C) x (C, C_out) products in one
    batched matmul, each an fp32 partial sum, added up in fp32, then the bias, then one rounding to the
    input's dtype.

    Why: at batch 1 the 1024-wide blocks' product is (256 pixels) x (C_out 1024) x (K 9216). In
    128 x 128 output tiles that is 16 tiles for a 132-SM H200, each running the whole K; whether cuBLAS
    splits K on its own is up to its heuristics. Nine tap products give 9 x 16 = 144 tiles whatever the
    library decides, for 9 x pixels x C_out fp32 partials (9.4 MB at 16 x 16 x 1024) written and read
    once. ``FastGenerator`` times this form against the convolutions and the one-GEMM form and keeps
    the fastest. Shares the GemmConv's reordered weight (a (9, C, C_out) view of it: no second copy),
    so the GemmConv's ``refresh`` keeps both current.

    The partials are fp32 whatever the input's dtype: on CUDA a 16-bit product writes them straight
    (``torch.bmm(..., out_dtype=torch.float32)``, fp32 accumulation as in one GEMM); elsewhere the
    operands are widened first (the CPU path exists for tests, not for speed).
    """

    def __init__(self, gemm: GemmConv):
        super().__init__()
        if not isinstance(gemm, GemmConv) or gemm.taps != 3:
            raise ValueError(f"SplitKConv splits a 3x3 GemmConv by tap, got {gemm!r}")
        self.gemm = gemm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gemm
        g.refresh()
        B, C = x.shape[:2]
        views, h, w = tap_views(x.permute(0, 2, 3, 1), g.pad)
        taps = torch.stack(views).reshape(9, B * h * w, C)
        weight = g.weight_t.view(9, C, -1)  # rows in (dy, dx, c) order: tap t's C rows are rows t*C ...
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            partial = torch.bmm(taps, weight, out_dtype=torch.float32)
        else:
            partial = torch.bmm(taps.float(), weight.float()) if x.dtype != torch.float64 else torch.bmm(taps, weight)
        out = partial.sum(dim=0)  # a fresh fp32 tensor: the bias goes in in place
        if g.conv.bias is not None:
            out.add_(g.conv.bias.to(out.dtype))
        return out.to(x.dtype).view(B, h, w, -1).permute(0, 3, 1, 2)  # channels-last memory

    def extra_repr(self) -> str:
        c = self.gemm.conv
        return f"{c.in_channels}, {c.out_channels}, 9 taps, pad={self.gemm.pad}"


SPLIT_K_ENV = "ASAP_SPLIT_K"


def split_k_default() -> bool | str:
    """What ``FastGenerator(conv_gemm="auto")`` does with the split-by-tap form: $ASAP_SPLIT_K as 0 (never
    a candidate), 1 (always: no timing), auto (default: one of the forms timed per input shape)."""
    return env_switch(SPLIT_K_ENV, "the fast path's wide 3x3 convs split along K by tap: never, always, "
                                   "when timed fastest")


def split_k_convs(gemm_stream: nn.Sequential) -> nn.Sequential:
    """A ``gemm_convs`` stream with each 3x3 GemmConv split by tap (``SplitKConv``, sharing its weight
    copy); the 1x1 GemmConvs (C_out = P ~ 16k: tiles enough) and everything else stay as they are."""
    return nn.Sequential(*(SplitKConv(m) if isinstance(m, GemmConv) and m.taps == 3 else m for m in gemm_stream))


def gemm_convs(stream: nn.Module, min_channels: int = GEMM_MIN_CHANNELS) -> nn.Sequential:
    """The stream flattened as ``fuse_norms`` does (same modules, parameters shared), each stride-1 3x3 or
    1x1 conv with at least ``min_channels`` inputs as a ``GemmConv``; strided and narrow convs stay."""
    out = []
    for m in _leaves(stream):
        if isinstance(m, nn.Conv2d) and m.in_channels >= min_channels and m.stride == (1, 1):
            try:
                out.append(GemmConv(m))
                continue
            except ValueError:
                pass
        out.append(m)
    return nn.Sequential(*out)


def fastest(candidates: dict, x: torch.Tensor, warmup: int = 2,
            iters: int = 5) -> tuple[str, dict, str, dict]:
    """Time each ``candidates[name](x)`` (``warmup`` untimed calls, the median of ``iters``) -> (the
    fastest name, {name: median ms}, how they were timed, {name: error} of the candidates that failed
    to run and were left out). On CUDA each candidate is captured in a CUDA graph and its replays are
    timed, as the fast path runs it (called eagerly, these streams are launch-bound and the ranking can
    differ); where a capture fails, synchronised eager calls. Raises only if every candidate failed."""
    import statistics
    import time

    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    def eager(fn):
        runs = []
        for _ in range(iters):
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            runs.append((time.perf_counter() - t0) * 1000)
        return statistics.median(runs)

    def replayed(fn):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(x)
        graph.replay()
        runs = []
        for _ in range(iters):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            runs.append(start.elapsed_time(stop))
        return statistics.median(runs)

    times, how, errors = {}, set(), {}
    for name, fn in candidates.items():
        try:
            for _ in range(warmup):
                fn(x)
            sync()
        except Exception as err:  # a form that cannot run here (e.g. an op this torch lacks) is left out
            errors[name] = f"{type(err).__name__}: {str(err)[:300]}"
            continue
        if x.device.type == "cuda":
            try:
                times[name] = replayed(fn)
                how.add("cuda graph replays")
                continue
            except RuntimeError:  # a form that cannot be captured is timed as it is called
                sync()
        times[name] = eager(fn)
        how.add("eager calls")
    if not times:
        raise RuntimeError(f"no candidate ran: {errors}")
    return min(times, key=times.get), times, " and ".join(sorted(how)), errors
