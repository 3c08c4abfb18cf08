"""Fast inference path for a trained ASAP-Net generator (Rott Shaham et al., CVPR 2021).

Same function as ``ASAPNetGenerator.forward``; what changes is how it runs:

- high-res stream: the fused Triton kernel (``pixelwise_fused``) takes the label map as class
  indices and never materialises the 64-channel activations of the pixelwise MLP;
- low-res stream: channels-last convolutions in the chosen precision; each InstanceNorm + ReLU as
  two Triton kernels that keep the channels-last layout (``lowres_fused``: eager PyTorch's norm is
  ~7 kernels and two layout copies); the wide stride-1 convs as cuBLAS GEMMs on their im2col matrix,
  or with the 3x3 ones split along K by tap (nine batched products summed in fp32), where that is
  faster (the three forms timed per input shape on first use); or the stream ``torch.compile``d instead;
  and the whole forward captured in a CUDA graph per input shape, so the ~20 small kernels of the
  16 x 16 stream cost one graph launch instead of ~20 (the authors' stream is launch-bound);
- the label check runs inside the graph and is read after replay, so it costs no extra sync.

On the CPU (no CUDA), it falls back to the reference path: the reference pixelwise MLP in the chosen
precision (or the Triton kernel in the interpreter when ``TRITON_INTERPRET=1``, which the tests use).
Imports only torch (+ triton through pixelwise_fused), so it runs on the GPU machine without the
pipeline stack.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from asap.models.asapnet import ASAPNetGenerator, fused_mlp_default, tent_downsample
from asap.models.inputs import DONTCARE_VALUE, encode_input
from asap.models.pixelwise import pixelwise_mlp
from asap.models import lowres_fused, pixelwise_fused

# precision name -> (dtype of the low-res stream and the MLP operands, Triton fp32 dot precision)
PRECISIONS = {
    "fp32": (torch.float32, "ieee"),
    "tf32": (torch.float32, "tf32"),
    "bf16": (torch.bfloat16, "ieee"),
    "fp16": (torch.float16, "ieee"),
}
MAX_GRAPHS = 8  # captured input shapes kept alive (each holds its own static buffers)
CONV_GEMM = (False, True, "split-k")  # FastGenerator's conv_gemm values besides "auto"


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")


@dataclass
class _Graph:
    """A captured forward for one input shape: replay after copying into the static inputs."""
    graph: "torch.cuda.CUDAGraph"
    x: torch.Tensor
    edges: torch.Tensor | None
    out: torch.Tensor
    bad: torch.Tensor | None


class FastGenerator(nn.Module):
    """Inference-only wrapper of an ``ASAPNetGenerator``: ``fast(labels) ~= model(labels)``."""

    def __init__(self, model: ASAPNetGenerator, precision: str = "fp32", *,
                 fused: bool | str | None = None,    # Triton kernel: auto = on CUDA (or the interpreter);
                                                     # None = $ASAP_FUSED_MLP (0 / 1 / auto, default auto)
                 cuda_graph: bool | str = "auto",    # capture per input shape: auto = on CUDA
                 compile: bool = False,              # torch.compile the low-res stream (CUDA)
                 fused_norm: bool | str | None = None,  # InstanceNorm+ReLU kernels: auto = on CUDA (or the
                                                     # interpreter), channels-last, not compiled; None =
                                                     # $ASAP_FUSED_NORM (0 / 1 / auto, default auto)
                 conv_gemm: bool | str = "auto",     # wide convs as cuBLAS GEMMs: True = one GEMM each,
                                                     # "split-k" = 3x3 ones split by tap; auto = on CUDA,
                                                     # all three timed per input shape (the fastest kept)
                 channels_last: bool = True,
                 check_labels: bool = True,          # error on label values outside the classes
                 clone_output: bool = True,          # False: return the graph's static output buffer
                 kernel_options: dict | None = None):  # block_p / sub_blocks / num_warps of the MLP kernel
        super().__init__()
        check_precision(precision)
        if not isinstance(model, ASAPNetGenerator):
            raise ValueError(f"FastGenerator wraps an ASAPNetGenerator, got {type(model).__name__}")
        self.config = model.config
        self.precision = precision
        self.dtype, self.input_precision = PRECISIONS[precision]
        device = next(model.parameters()).device
        # A private copy: casting/re-laying out the weights must not change the caller's model.
        lowres = copy.deepcopy(model.lowres_stream).eval().requires_grad_(False).to(self.dtype)
        self.channels_last = channels_last
        if channels_last:
            lowres = lowres.to(memory_format=torch.channels_last)
        norm_ok = lowres_fused.kernel_available(device) and channels_last
        if fused_norm is None:
            fused_norm = lowres_fused.fused_norm_default()
        if fused_norm == "auto":
            fused_norm = norm_ok and not compile  # compiled, inductor fuses the norms itself
        elif fused_norm and not norm_ok:
            raise ValueError("fused_norm=True needs channels_last=True and a CUDA device (or TRITON_INTERPRET=1) "
                             "with triton; use fused_norm=False or 'auto'")
        self.fused_norm = bool(fused_norm)
        # What runs: the same conv modules, with the norms as kernels or as PyTorch's own. The eager
        # form stays reachable (benchmarks time both in one run).
        self.lowres_stream_torch_norm = lowres
        self.lowres_stream = lowres_fused.fuse_norms(lowres) if self.fused_norm else lowres
        self._lowres = torch.compile(self.lowres_stream, dynamic=False) if compile else self.lowres_stream
        split_k = None
        if conv_gemm == "auto":
            split_k = lowres_fused.split_k_default()  # $ASAP_SPLIT_K: 0 / 1 / auto
            conv_gemm = False if device.type != "cuda" or compile else "split-k" if split_k is True else "auto"
        elif conv_gemm not in CONV_GEMM:
            raise ValueError(f"conv_gemm must be one of {CONV_GEMM} or 'auto', got {conv_gemm!r}")
        self.conv_gemm = conv_gemm
        # The same stream (same modules and norms) with its wide stride-1 convs as GEMMs (GemmConv), and
        # that one with the 3x3 GEMMs split by tap (SplitKConv, sharing the GEMMs' weight copies).
        self.lowres_stream_gemm = lowres_fused.gemm_convs(self.lowres_stream) if conv_gemm else None
        with_split_k = conv_gemm == "split-k" or (conv_gemm == "auto" and split_k == "auto")
        self.lowres_stream_split_k = lowres_fused.split_k_convs(self.lowres_stream_gemm) if with_split_k else None
        self._gemm_convs = [m for m in self.lowres_stream_gemm or () if isinstance(m, lowres_fused.GemmConv)]
        # input shape -> {"use": "cudnn" | "gemm" | "split-k", "ms": {form: ms}, "timed": how[, "failed": {...}]}
        self.lowres_choice: dict[tuple, dict] = {}

        reason = pixelwise_fused.unsupported_reason(self.config.mlp_channels, self.config.downsampling)
        kernel_ok = reason is None and (device.type == "cuda" or (device.type == "cpu" and pixelwise_fused.interpret_mode()))
        if fused is None:
            fused = fused_mlp_default()
        if fused == "auto":
            fused = kernel_ok
        elif fused and not kernel_ok:
            raise ValueError(f"the fused kernel cannot run here ({reason or f'device {device.type}'}); "
                             "use fused=False or 'auto'")
        self.fused = bool(fused)
        self.cuda_graph = (device.type == "cuda") if cuda_graph == "auto" else bool(cuda_graph)
        if self.cuda_graph and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the generator on a CUDA device")
        self.check_labels = check_labels
        self.clone_output = clone_output
        self.kernel_options = dict(kernel_options or {})
        self._graphs: dict[tuple, _Graph] = {}

    # -- the forward itself ----------------------------------------------------------------------
    def _label_width(self) -> int:
        c = self.config
        return c.num_classes + int(c.dontcare)

    def _forward_impl(self, x: torch.Tensor, edges: torch.Tensor | None):
        """-> (image (B, out, H, W) in self.dtype, device flag of bad labels or None). Graph-capturable:
        no host syncs, no data-dependent shapes."""
        c = self.config
        labels, bad, enc = None, None, None
        hr_width = c.hr_in_channels
        if not x.is_floating_point() and c.input_kind == "labels":
            labels = x[:, 0] if x.dim() == 4 else x  # (B, H, W)
            n = self._label_width()
            c.check_size(labels.shape[1], labels.shape[2])
            if c.dontcare:
                labels = torch.where(labels == DONTCARE_VALUE, torch.full_like(labels, c.num_classes), labels)
            if self.check_labels:
                bad = ((labels < 0) | (labels >= n)).any()
            if c.instance_edge and edges is None:
                raise ValueError("this generator was built with instance_edge=True: pass edges=(B, 1, H, W)")
            if self.fused:
                # low-res input straight from the indices: no full-resolution one-hot is written
                lowres_in = pixelwise_fused.tent_onehot(labels, n, c.s1, self.dtype)
                if c.instance_edge:
                    lowres_in = torch.cat([lowres_in, tent_downsample(edges.to(self.dtype), c.s1)], dim=1)
            if not self.fused or hr_width != n:
                # One-hot straight in the compute dtype with channels last (scatter; F.one_hot would
                # first write int64, 8 bytes per class and pixel). Clamped so bad labels cannot index
                # out of bounds before the deferred check reports them.
                idx = labels.clamp(0, n - 1).long()[..., None]  # (B, H, W, 1)
                onehot = torch.zeros(*labels.shape, n, device=x.device, dtype=self.dtype).scatter_(3, idx, 1.0)
                enc = onehot.permute(0, 3, 1, 2)  # (B, n, H, W), channels-last memory
                if c.instance_edge:
                    enc = torch.cat([enc, edges.to(self.dtype)], dim=1)
                if not self.fused:
                    lowres_in = tent_downsample(enc, c.s1)
        else:
            enc = encode_input(x, c, edges).to(self.dtype)
            c.check_size(enc.shape[2], enc.shape[3])
            lowres_in = tent_downsample(enc, c.s1)

        if self.channels_last:
            lowres_in = lowres_in.contiguous(memory_format=torch.channels_last)
        params = self.lowres_for(lowres_in)(lowres_in)  # (B, P, H/S, W/S), channels-last: a tile's P values contiguous
        if c.spatially_uniform:
            params = params.mean(dim=(2, 3), keepdim=True)

        if not self.fused:
            return pixelwise_mlp(enc[:, :hr_width], params, c.mlp_channels, c.downsampling,
                                 c.positional_encoding), bad
        if enc is None:
            # the high-res input is exactly the one-hot map: layer 1 is a gather of weight rows
            hr = labels
        else:
            hr = enc[:, :hr_width]
        out = pixelwise_fused.fused_pixelwise_mlp(hr, params, c.mlp_channels, c.downsampling,
                                                  c.positional_encoding, num_classes=hr_width,
                                                  check_labels=False, input_precision=self.input_precision,
                                                  **self.kernel_options)
        return out, bad

    def lowres_forms(self) -> dict[str, nn.Module]:
        """The forms of the low-res stream this generator can run, by name: "cudnn" (the convolutions),
        "gemm" (wide convs as one GEMM each), "split-k" (3x3 GEMMs split by tap)."""
        forms = {"cudnn": self._lowres, "gemm": self.lowres_stream_gemm, "split-k": self.lowres_stream_split_k}
        return {name: m for name, m in forms.items() if m is not None}

    def lowres_for(self, lowres_in: torch.Tensor) -> nn.Module:
        """The low-res stream this input runs through. With ``conv_gemm="auto"`` the first input of each
        shape times every form (``lowres_forms``; each in its own CUDA graph on CUDA; outside the fast
        path's own capture: its warm-up calls come first) and keeps the fastest, recorded in
        ``lowres_choice`` (with the error of any form that could not run)."""
        if self.conv_gemm is False:
            return self._lowres
        if self.conv_gemm is True:
            return self.lowres_stream_gemm
        if self.conv_gemm == "split-k":
            return self.lowres_stream_split_k
        key = (tuple(lowres_in.shape), lowres_in.dtype)
        choice = self.lowres_choice.get(key)
        if choice is None:
            if lowres_in.is_cuda and torch.cuda.is_current_stream_capturing():
                return self._lowres  # never time inside a capture (the warm-up has chosen by then)
            try:
                use, ms, how, failed = lowres_fused.fastest(self.lowres_forms(), lowres_in)
                choice = {"use": use, "ms": ms, "timed": how, **({"failed": failed} if failed else {})}
            except Exception as err:  # tuning must never cost the forward: keep the convolutions
                choice = {"use": "cudnn", "ms": {}, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            self.lowres_choice[key] = choice
        return self.lowres_forms()[choice["use"]]

    def _raise_bad_labels(self, x: torch.Tensor) -> None:
        c = self.config
        labels = x.long()
        ok = (labels >= 0) & (labels < c.num_classes)
        if c.dontcare:
            ok |= labels == DONTCARE_VALUE
        values = sorted(set(labels[~ok].unique().tolist()))[:10]
        allowed = f"0..{c.num_classes - 1}" + (f" and {DONTCARE_VALUE} (don't care)" if c.dontcare else "")
        raise ValueError(f"label values {values} are outside the {c.num_classes} classes (allowed: {allowed})")

    # -- CUDA graphs -----------------------------------------------------------------------------
    def _capture(self, x: torch.Tensor, edges: torch.Tensor | None) -> _Graph:
        static_x = x.clone()
        static_e = None if edges is None else edges.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: Triton/cuDNN pick and compile kernels
            for _ in range(2):
                self._forward_impl(static_x, static_e)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, bad = self._forward_impl(static_x, static_e)
        if len(self._graphs) >= MAX_GRAPHS:
            self._graphs.pop(next(iter(self._graphs)))
        return _Graph(graph, static_x, static_e, out, bad)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """Class indices (B, H, W) / (B, 1, H, W) or an encoded float input -> image in [-1, 1]
        (B, out_channels, H, W) in the precision's dtype."""
        if not self.cuda_graph:
            out, bad = self._forward_impl(x, edges)
            if bad is not None and bool(bad):
                self._raise_bad_labels(x)
            return out
        key = (tuple(x.shape), x.dtype, x.device, None if edges is None else (tuple(edges.shape), edges.dtype))
        for m in self._gemm_convs:  # a replay runs no Python: bring the GEMMs' weights up to date first
            m.refresh()
        entry = self._graphs.get(key)
        if entry is None:
            self.config.check_size(x.shape[-2], x.shape[-1])  # clear error before any capture
            entry = self._graphs[key] = self._capture(x, edges)
        entry.x.copy_(x)
        if edges is not None:
            entry.edges.copy_(edges)
        entry.graph.replay()
        if entry.bad is not None and bool(entry.bad):  # a sync after the work, not before it
            self._raise_bad_labels(x)
        return entry.out.clone() if self.clone_output else entry.out


def fast_generator(model: ASAPNetGenerator, precision: str = "fp32", **options) -> nn.Module:
    """The fastest form of ``model`` available here: a FastGenerator for ASAP-Net on CUDA; on the CPU
    a FastGenerator that runs the reference MLP (the kernel needs CUDA or the Triton interpreter)."""
    return FastGenerator(model, precision, **options)
