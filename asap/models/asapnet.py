"""ASAP-Net generator (Rott Shaham et al., "Spatially-Adaptive Pixelwise Networks for Fast Image
Translation", CVPR 2021, Fig. 3).

Two streams:
  low-res  x -> tent downsample by S1 -> G (strided convs by S2 = 16, 1024-wide conv blocks)
           -> grid of P MLP parameters, one set per S x S tile (S = S1 * S2, Sec. 3.2)
  high-res x (+ positional encoding, Sec. 3.3) -> pixelwise MLP with the tile's parameters (Eq. 1-2)

Module names and the parameter layout follow the authors' released code (github.com/tamarott/ASAPNet,
``ASAPNetsGenerator``), so their ``latest_net_G.pth`` loads into this class without renaming; see
``asap.models.checkpoint``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from asap.config import ConfigError, env_switch, require, require_power_of_two
from asap.models.inputs import encode_input
from asap.models.pixelwise import mlp_channels, num_mlp_params, pixelwise_mlp

LEARNED_DOWNSAMPLING = 16  # Sec. 3.2: "We use S2 = 16 throughout"
LOWRES_SHORT_SIDE = 256    # Sec. 3.2: x_l has at most 256 pixels on the short axis
PADDINGS = ("zeros", "reflect")  # border handling of the low-res stream's 3x3 convs


def default_downsampling(height: int, width: int) -> int:
    """Sec. 3.2: S = S1 * S2 with S2 = 16 and x_l at most 256 px on the short side, i.e. S = short / 16
    (S = 32 at 512x512 and 512x1024, S = 64 at 1024x1024, S = 16 at 256x256 and 256x512)."""
    short = min(height, width)
    s = max(2, short // LEARNED_DOWNSAMPLING)
    s = 2 ** int(math.floor(math.log2(s)))  # the largest power of two that fits
    return s


@dataclass(frozen=True)
class ASAPNetConfig:
    """Everything needed to rebuild an ASAP-Net generator (stored in every checkpoint)."""
    num_classes: int                    # one-hot label classes, or image channels when input_kind == "image"
    downsampling: int                   # S: side of the tile that shares one MLP (power of two)
    input_kind: str = "labels"          # "labels" (one-hot label map) or "image" (e.g. RGB -> depth)
    dontcare: bool = False              # one extra one-hot channel for the "don't care" label
    instance_edge: bool = False         # one extra channel: instance boundary map
    lowres_only_last_channel: bool = False  # authors' lr_instance: last input channel feeds only the low-res stream
    out_channels: int = 3               # output image channels
    learned_downsampling: int = LEARNED_DOWNSAMPLING  # S2: strided convs; S1 = S / S2 by the tent filter
    lr_width: int = 64                  # width of the first conv and the strided convs
    lr_max_width: int = 1024            # width of the last strided conv and the conv blocks
    lr_depth: int = 7                   # number of 3x3 conv blocks at lr_max_width
    mlp_width: int = 64                 # Sec. 3.1: "MLPs with 5 layers and 64 channels per layer"
    mlp_depth: int = 5
    positional_encoding: bool = True    # Sec. 3.3; False is the ablation of Fig. 9b
    spatially_uniform: bool = False     # Fig. 9c ablation: one parameter set for the whole image
    padding: str = "zeros"              # low-res 3x3 convs: "zeros", or "reflect" (the authors' --reflection_pad,
                                        # used by their released facades models)

    def __post_init__(self):
        require_choice_kind = {"labels", "image"}
        require(self.input_kind in require_choice_kind,
                f"input_kind must be one of {sorted(require_choice_kind)}, got {self.input_kind!r}")
        require(isinstance(self.num_classes, int) and self.num_classes >= 1,
                f"num_classes must be a positive integer, got {self.num_classes!r}")
        require_power_of_two("downsampling (S)", self.downsampling, minimum=2)
        require_power_of_two("learned_downsampling (S2)", self.learned_downsampling, minimum=1)
        require(self.input_kind == "labels" or not (self.dontcare or self.instance_edge),
                "dontcare and instance_edge apply to label maps only (input_kind='labels')")
        require(not self.lowres_only_last_channel or self.in_channels >= 2,
                "lowres_only_last_channel needs at least 2 input channels")
        for name in ("lr_width", "lr_max_width", "mlp_width", "mlp_depth", "out_channels"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        require(isinstance(self.lr_depth, int) and self.lr_depth >= 0,
                f"lr_depth must be a non-negative integer, got {self.lr_depth!r}")
        require(self.padding in PADDINGS,
                f"padding must be one of {list(PADDINGS)}, got {self.padding!r} ('reflect' puts a "
                "reflection pad of 1 before each 3x3 conv of the low-res stream, as the authors' --reflection_pad)")

    # -- derived sizes --------------------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        """Channels of the encoded input (one-hot classes + don't-care + instance edge)."""
        return self.num_classes + int(self.dontcare) + int(self.instance_edge)

    @property
    def s2(self) -> int:
        """Learned downsampling (strided convs); less than 16 only when S itself is smaller."""
        return min(self.learned_downsampling, self.downsampling)

    @property
    def s1(self) -> int:
        """Fixed tent-filter downsampling before the conv net."""
        return self.downsampling // self.s2

    @property
    def hr_in_channels(self) -> int:
        return self.in_channels - int(self.lowres_only_last_channel)

    @property
    def mlp_channels(self) -> list[int]:
        """E.g. facades 512x512, S=32, 13 labels: [13 + 4*5, 64, 64, 64, 64, 3] = [33, 64, ...]."""
        enc = 4 * int(math.log2(self.downsampling)) if self.positional_encoding else 0
        return mlp_channels(self.hr_in_channels + enc, self.mlp_width, self.mlp_depth, self.out_channels)

    @property
    def num_params(self) -> int:
        """P: MLP parameters predicted per tile."""
        return num_mlp_params(self.mlp_channels)

    def check_size(self, height: int, width: int) -> None:
        if height % self.downsampling or width % self.downsampling:
            raise ConfigError(f"image size {height}x{width} must have both sides divisible by "
                              f"S={self.downsampling}; e.g. {height - height % self.downsampling or self.downsampling}"
                              f"x{width - width % self.downsampling or self.downsampling}")
        # a reflection pad of 1 needs 2 pixels to mirror: the conv blocks run on the (H/S, W/S) grid
        if self.padding == "reflect" and self.lr_depth and min(height, width) < 2 * self.downsampling:
            raise ConfigError(f"image size {height}x{width} gives a {height // self.downsampling}x"
                              f"{width // self.downsampling} parameter grid at S={self.downsampling}; "
                              "padding='reflect' needs at least 2x2 (both sides >= 2*S)")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Low-res stream
# ----------------------------------------------------------------------------------------------

def tent_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Separable tent (bilinear) filter + stride (Sec. 3.2: "bilinearly downsampling x by S1").

    The kernel [1, 3, ..., 2f-1, 2f-1, ..., 3, 1] / (2 f^2) over 2f taps with reflection padding f/2,
    as in the authors' code, gives exactly H/f x W/f outputs.
    """
    if factor == 1:
        return x
    C = x.shape[1]
    ramp = torch.arange(1, 2 * factor + 1, 2, dtype=x.dtype, device=x.device)
    kernel = torch.cat([ramp, ramp.flip(0)])
    kernel = kernel / kernel.sum()
    x = F.pad(x, [factor // 2] * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1), stride=(1, factor), groups=C)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1), stride=(factor, 1), groups=C)


def conv_in(in_ch: int, out_ch: int, stride: int = 1, padding: str = "zeros") -> list[nn.Module]:
    """3x3 conv (no bias: the norm cancels it) + affine InstanceNorm as one Sequential (keys `0.weight`,
    `1.weight/bias`), preceded by a ReflectionPad2d(1) module when ``padding == "reflect"``.

    The pad is a module of its own, not ``Conv2d(padding_mode="reflect")``, because that is how the
    authors' --reflection_pad layout numbers its modules: their state dict then loads unrenamed."""
    reflect = padding == "reflect"
    conv = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=0 if reflect else 1, bias=False),
                         nn.InstanceNorm2d(out_ch, affine=True))
    return [nn.ReflectionPad2d(1), conv] if reflect else [conv]


class ConvBlock(nn.Module):
    """One of the seven 1024-wide blocks: conv + InstanceNorm + ReLU (no skip, as the authors' code)."""

    def __init__(self, width: int, padding: str = "zeros"):
        super().__init__()
        self.conv_block = nn.Sequential(*conv_in(width, width, padding=padding), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.conv_block(x)


class LowResStream(nn.Module):
    """G of Sec. 3.2: low-res input -> (B, P, H/S, W/S) grid of MLP parameters.

    Module indices of ``model`` (the authors' layout): zero padding  [conv, relu] per 3x3 conv, so the
    convs sit at 0, 2, 4, ... and a block's conv at ``conv_block.0``; reflect padding [pad, conv, relu],
    so 1, 4, 7, ... and ``conv_block.1``. Then the blocks, one index each, and the final 1x1 conv.
    """

    def __init__(self, config: ASAPNetConfig):
        super().__init__()
        c = config
        n_strided = int(math.log2(c.s2))
        layers: list[nn.Module] = [*conv_in(c.in_channels, c.lr_width, padding=c.padding), nn.ReLU(inplace=True)]
        width = c.lr_width
        for i in range(n_strided):  # S2 = 2^n_strided by stride-2 convs; the last one widens to 1024
            out = c.lr_max_width if i == n_strided - 1 else width
            layers += [*conv_in(width, out, stride=2, padding=c.padding), nn.ReLU(inplace=True)]
            width = out
        layers += [ConvBlock(width, c.padding) for _ in range(c.lr_depth)]
        layers += [nn.Conv2d(width, c.num_params, 1)]  # 1x1 conv to the P per-tile parameters
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        *body, last = self.model
        for layer in body:
            x = layer(x)
        if x.device.type == "cpu":
            # the final 1x1 conv then writes each tile's P parameters contiguously, which the pixelwise
            # MLP reads in place as its weights; from NCHW it would gather them with a stride of
            # (H/S)(W/S) floats (that transpose took 4/5 of the MLP's time at S = 8). Same function;
            # CUDA keeps NCHW (the fast path sets its own layout there)
            x = x.contiguous(memory_format=torch.channels_last)
        return last(x)


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------

FUSED_MLP_ENV = "ASAP_FUSED_MLP"


def fused_mlp_default() -> bool | str:
    """``ASAPNetGenerator.fused_mlp`` of a new generator: $ASAP_FUSED_MLP as 0 / 1 / auto (default auto)."""
    return env_switch(FUSED_MLP_ENV, "the fused Triton kernel for the pixelwise MLP: never, always, on CUDA "
                                     "when it supports the MLP")


class ASAPNetGenerator(nn.Module):
    """Label map (or image) -> image in [-1, 1]."""

    def __init__(self, config: ASAPNetConfig):
        super().__init__()
        self.config = config
        self.lowres_stream = LowResStream(config)
        # How the pixelwise MLP runs (not part of the config or the checkpoint: same function either
        # way): "auto" = the fused Triton kernel (asap.models.pixelwise_fused, forward and backward) on
        # CUDA tensors when it supports the MLP, the reference pixelwise_mlp otherwise; True = the
        # kernel or an error (also on the CPU under TRITON_INTERPRET=1, as the tests run it); False =
        # always the reference. The environment variable ASAP_FUSED_MLP=0 / 1 / auto sets the default.
        self.fused_mlp: bool | str = fused_mlp_default()
        self.reset_parameters()

    def reset_parameters(self, gain: float = 0.02):
        """Xavier-normal convs with a small gain and N(1, 0.02) norm scales (SPADE's initialisation)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.InstanceNorm2d) and m.affine:
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """Class indices (B, H, W) or an already encoded (B, C, H, W) float tensor -> (B, C, H, W)."""
        return encode_input(x, self.config, edges)

    def tile_params(self, x: torch.Tensor) -> torch.Tensor:
        """Low-res stream: encoded input -> (B, P, H/S, W/S), or (B, P, 1, 1) if spatially uniform."""
        c = self.config
        params = self.lowres_stream(tent_downsample(x, c.s1))
        if c.spatially_uniform:  # Fig. 9c: the same MLP everywhere (still input-adaptive)
            params = params.mean(dim=(2, 3), keepdim=True)
        return params

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        x = self.encode(x, edges)
        c.check_size(x.shape[2], x.shape[3])
        params = self.tile_params(x)
        hr = x[:, :c.hr_in_channels]
        if self.uses_fused_mlp(hr):
            from asap.models.pixelwise_fused import fused_pixelwise_mlp

            # TF32 for fp32 parameters exactly when torch's own matmuls may use it
            precision = "tf32" if params.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
            return fused_pixelwise_mlp(hr, params, c.mlp_channels, c.downsampling, c.positional_encoding,
                                       input_precision=precision)
        return pixelwise_mlp(hr, params, c.mlp_channels, c.downsampling, c.positional_encoding)

    def uses_fused_mlp(self, hr: torch.Tensor) -> bool:
        """Whether this forward runs the pixelwise MLP in the fused kernel (see ``fused_mlp``)."""
        if self.fused_mlp is False:
            return False
        if self.fused_mlp not in (True, "auto"):
            raise ValueError(f"fused_mlp must be True, False or 'auto', got {self.fused_mlp!r}")
        if self.fused_mlp == "auto" and (not hr.is_cuda or torch.compiler.is_compiling()
                                         or torch.jit.is_tracing()):
            return False
        from asap.models import pixelwise_fused

        reason = pixelwise_fused.unsupported_reason(self.config.mlp_channels, self.config.downsampling)
        if reason is None and hr.requires_grad and torch.is_grad_enabled():
            reason = "the input requires a gradient (the kernel differentiates the parameters only)"
        if reason and self.fused_mlp is True:
            raise ValueError(f"fused_mlp=True, but the fused kernel cannot run this generator: {reason}")
        return reason is None


def asapnet(num_classes: int, height: int, width: int, **overrides) -> ASAPNetGenerator:
    """Build the paper's generator for an image size, with S derived as in Sec. 3.2 unless given."""
    overrides.setdefault("downsampling", default_downsampling(height, width))
    config = ASAPNetConfig(num_classes=num_classes, **overrides)
    config.check_size(height, width)
    return ASAPNetGenerator(config)
