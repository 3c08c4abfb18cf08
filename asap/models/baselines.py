"""Baseline generators the paper compares against (Sec. 4, Fig. 1, 6, 8), written from their papers.

pix2pixHD (Wang et al., CVPR 2018), the global generator G1 (Sec. 3.2 there, after Johnson et al.
2016): c7s1-64, d128, d256, d512, d1024, 9 x R1024, u512, u256, u128, u64, c7s1-3, where c7s1-k is a
reflection-padded 7x7 conv with k filters, stride 1; dk a 3x3 stride-2 conv; Rk a residual block of
two reflection-padded 3x3 convs; uk a 3x3 stride-2 transposed conv. InstanceNorm + ReLU after every
conv but the last, tanh at the end.

SPADE (Park et al., CVPR 2019), Fig. 4 and appendix A there: the label map resized to (H/2^5, W/2^5),
a 3x3 conv to 16 nf channels, then SPADE residual blocks with 2x nearest upsampling between them
(16nf, 16nf, 16nf, 8nf, 4nf, 2nf, nf; "normal" = 5 upsamplings), LeakyReLU(0.2), a 3x3 conv to 3,
tanh. A SPADE block normalises with parameter-free InstanceNorm and modulates with gamma, beta
predicted from the label map (resized to the feature size) by a 128-channel 3x3 conv + ReLU and two 3x3
convs: out = norm(x) * (1 + gamma) + beta. Residual blocks use spectral norm on their convs and a
learned 1x1 shortcut when the widths differ.

``width_mult`` scales every channel count (round to nearest, at least 1): the "slimmer" variants of
Fig. 8 ("gradually decreasing the number of channels ... until reaching the execution time of our
ASAP network"). For SPADE it also scales the 128-channel modulation convs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from asap.config import ConfigError, require, require_choice
from asap.models.inputs import encode_input


def scaled(channels: int, width_mult: float) -> int:
    """A channel count scaled by ``width_mult``, rounded to nearest, at least 1."""
    return max(1, int(round(channels * width_mult)))


def _validate_common(config) -> None:
    require_choice("input_kind", config.input_kind, {"labels", "image"})
    require(isinstance(config.num_classes, int) and config.num_classes >= 1,
            f"num_classes must be a positive integer, got {config.num_classes!r}")
    require(config.input_kind == "labels" or not (config.dontcare or config.instance_edge),
            "dontcare and instance_edge apply to label maps only (input_kind='labels')")
    require(isinstance(config.out_channels, int) and config.out_channels >= 1,
            f"out_channels must be a positive integer, got {config.out_channels!r}")
    require(isinstance(config.width_mult, (int, float)) and not isinstance(config.width_mult, bool)
            and config.width_mult > 0, f"width_mult must be a number > 0, got {config.width_mult!r}")


def _init_weights(module: nn.Module, init: str, gain: float = 0.02) -> None:
    """"normal": N(0, 0.02) (pix2pix / pix2pixHD, after DCGAN); "xavier": Xavier-normal with gain 0.02
    (SPADE, as our ASAP-Net generator). Biases start at zero. Spectral-normed convs are skipped: they
    were initialised before spectral norm was attached (see ``_sn_conv``)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not parametrize.is_parametrized(m):
            if init == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            else:
                nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _sn_conv(*args, **kwargs) -> nn.Conv2d:
    """A spectral-normed conv, initialised first so that spectral norm's power iteration starts from
    the final weights (re-initialising afterwards would leave its singular vectors stale)."""
    conv = nn.Conv2d(*args, **kwargs)
    _init_weights(conv, "xavier")
    return spectral_norm(conv)


def _check_size(x: torch.Tensor, divisor: int, arch: str) -> None:
    H, W = x.shape[-2:]
    if H % divisor or W % divisor:
        raise ConfigError(f"{arch} needs image sides divisible by {divisor}, got {H}x{W}; "
                          f"e.g. {max(divisor, H - H % divisor)}x{max(divisor, W - W % divisor)}")


# ----------------------------------------------------------------------------------------------
# pix2pixHD global generator
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pix2PixHDConfig:
    """pix2pixHD's global generator G1; defaults are the paper's."""
    num_classes: int                 # one-hot label classes, or image channels when input_kind == "image"
    input_kind: str = "labels"       # "labels" or "image"
    dontcare: bool = False           # one extra one-hot channel for the "don't care" label
    instance_edge: bool = False      # one extra channel: instance boundary map
    out_channels: int = 3
    width_mult: float = 1.0          # Fig. 8 slimmer variants: scales every channel count
    ngf: int = 64                    # c7s1-64
    n_downsampling: int = 4          # d128 .. d1024 (then 4 matching upsamplings)
    n_blocks: int = 9                # R1024 x 9

    def __post_init__(self):
        _validate_common(self)
        for name in ("ngf", "n_downsampling", "n_blocks"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= (1 if name == "ngf" else 0),
                    f"pix2pixHD {name} must be a {'positive' if name == 'ngf' else 'non-negative'} integer, "
                    f"got {value!r}")

    @property
    def in_channels(self) -> int:
        return self.num_classes + int(self.dontcare) + int(self.instance_edge)

    @property
    def size_divisor(self) -> int:
        return 2 ** self.n_downsampling

    def to_dict(self) -> dict:
        return asdict(self)


class ResnetBlock(nn.Module):
    """Rk: x + IN(conv3x3(ReLU(IN(conv3x3(x))))), reflection padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x):
        return x + self.block(x)


class Pix2PixHDGenerator(nn.Module):
    """``forward(x, edges=None)``: labels (B, H, W) or encoded (B, C, H, W) -> (B, 3, H, W) in [-1, 1];
    sides divisible by 2^n_downsampling (16)."""

    def __init__(self, config: Pix2PixHDConfig):
        super().__init__()
        self.config = config
        w = [scaled(config.ngf * 2 ** i, config.width_mult) for i in range(config.n_downsampling + 1)]
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(config.in_channels, w[0], 7),  # c7s1-64
                  nn.InstanceNorm2d(w[0]), nn.ReLU()]
        for i in range(config.n_downsampling):  # d128, d256, d512, d1024
            layers += [nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), nn.InstanceNorm2d(w[i + 1]), nn.ReLU()]
        layers += [ResnetBlock(w[-1]) for _ in range(config.n_blocks)]  # R1024 x 9
        for i in range(config.n_downsampling, 0, -1):  # u512, u256, u128, u64
            layers += [nn.ConvTranspose2d(w[i], w[i - 1], 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(w[i - 1]), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w[0], config.out_channels, 7), nn.Tanh()]  # c7s1-3
        self.model = nn.Sequential(*layers)
        _init_weights(self, "normal")

    def encode(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """Class indices (B, H, W) or an already encoded (B, C, H, W) float tensor -> (B, C, H, W)."""
        return encode_input(x, self.config, edges)

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        x = self.encode(x, edges)
        d = self.config.size_divisor
        _check_size(x, d, "pix2pixHD")
        if min(x.shape[-2:]) < 2 * d:  # the residual blocks reflection-pad 1 px at 1/d resolution
            raise ConfigError(f"pix2pixHD input {tuple(x.shape[-2:])} is too small: both sides must be "
                              f">= {2 * d} (2 pixels at the 1/{d} bottleneck)")
        return self.model(x)


# ----------------------------------------------------------------------------------------------
# SPADE generator
# ----------------------------------------------------------------------------------------------

SPADE_UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}  # SPADE's num_upsampling_layers


@dataclass(frozen=True)
class SPADEConfig:
    """SPADE's generator; defaults are the paper's ("normal": 5 upsamplings, nf 64, 128-wide SPADE)."""
    num_classes: int                 # one-hot label classes, or image channels when input_kind == "image"
    input_kind: str = "labels"       # "labels" or "image" (SPADE is made for label maps: Fig. 10)
    dontcare: bool = False
    instance_edge: bool = False
    out_channels: int = 3
    width_mult: float = 1.0          # Fig. 8 slimmer variants: scales every channel count
    nf: int = 64                     # width of the last residual block; the first is 16 nf
    spade_hidden: int = 128          # width of the shared conv that predicts gamma, beta
    num_upsampling_layers: str = "normal"  # "normal" (5) | "more" (6) | "most" (7)

    def __post_init__(self):
        _validate_common(self)
        require_choice("SPADE num_upsampling_layers", self.num_upsampling_layers, set(SPADE_UPSAMPLINGS))
        for name in ("nf", "spade_hidden"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"SPADE {name} must be a positive integer, got {value!r}")

    @property
    def in_channels(self) -> int:
        return self.num_classes + int(self.dontcare) + int(self.instance_edge)

    @property
    def size_divisor(self) -> int:
        return 2 ** SPADE_UPSAMPLINGS[self.num_upsampling_layers]

    def to_dict(self) -> dict:
        return asdict(self)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: IN(x) * (1 + gamma(m)) + beta(m), m the resized label map."""

    def __init__(self, channels: int, label_channels: int, hidden: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        segmap = F.interpolate(segmap, size=x.shape[-2:], mode="nearest")
        h = self.shared(segmap)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """SPADE ResBlk(fin -> fout): two SPADE-LReLU-conv3x3 steps through min(fin, fout) channels,
    plus a shortcut (SPADE + 1x1 conv when fin != fout, identity otherwise)."""

    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int):
        super().__init__()
        fmid = min(fin, fout)
        self.norm_0 = SPADE(fin, label_channels, hidden)
        self.conv_0 = _sn_conv(fin, fmid, 3, padding=1)
        self.norm_1 = SPADE(fmid, label_channels, hidden)
        self.conv_1 = _sn_conv(fmid, fout, 3, padding=1)
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_channels, hidden)
            self.conv_s = _sn_conv(fin, fout, 1, bias=False)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, segmap)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, segmap), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, segmap), 0.2))
        return shortcut + dx


class SPADEGenerator(nn.Module):
    """``forward(x, edges=None)``: labels (B, H, W) or encoded (B, C, H, W) -> (B, 3, H, W) in [-1, 1];
    sides divisible by 2^5 = 32 ("normal")."""

    def __init__(self, config: SPADEConfig):
        super().__init__()
        self.config = config
        nf = lambda k: scaled(config.nf * k, config.width_mult)  # noqa: E731
        hidden = scaled(config.spade_hidden, config.width_mult)
        c = config.in_channels
        self.fc = nn.Conv2d(c, nf(16), 3, padding=1)
        self.head_0 = SPADEResBlock(nf(16), nf(16), c, hidden)
        self.G_middle_0 = SPADEResBlock(nf(16), nf(16), c, hidden)
        self.G_middle_1 = SPADEResBlock(nf(16), nf(16), c, hidden)
        self.up_0 = SPADEResBlock(nf(16), nf(8), c, hidden)
        self.up_1 = SPADEResBlock(nf(8), nf(4), c, hidden)
        self.up_2 = SPADEResBlock(nf(4), nf(2), c, hidden)
        self.up_3 = SPADEResBlock(nf(2), nf(1), c, hidden)
        final = nf(1)
        if config.num_upsampling_layers == "most":
            self.up_4 = SPADEResBlock(nf(1), scaled(config.nf // 2, config.width_mult), c, hidden)
            final = scaled(config.nf // 2, config.width_mult)
        self.conv_img = nn.Conv2d(final, config.out_channels, 3, padding=1)
        _init_weights(self, "xavier")

    def encode(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        """Class indices (B, H, W) or an already encoded (B, C, H, W) float tensor -> (B, C, H, W)."""
        return encode_input(x, self.config, edges)

    def forward(self, x: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
        segmap = self.encode(x, edges)  # (B, C, H, W)
        d = self.config.size_divisor
        _check_size(segmap, d, "SPADE")
        H, W = segmap.shape[-2:]
        if (H // d) * (W // d) < 2:  # InstanceNorm of a single pixel is undefined
            raise ConfigError(f"SPADE input {H}x{W} is too small: the 1/{d} grid needs at least 2 cells "
                              f"(e.g. {d}x{2 * d})")
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        x = self.fc(F.interpolate(segmap, size=(H // d, W // d), mode="nearest"))  # (B, 16nf, H/32, W/32)
        x = up(self.head_0(x, segmap))
        x = self.G_middle_0(x, segmap)
        if self.config.num_upsampling_layers in ("more", "most"):
            x = up(x)
        x = up(self.G_middle_1(x, segmap))
        x = up(self.up_0(x, segmap))
        x = up(self.up_1(x, segmap))
        x = up(self.up_2(x, segmap))
        x = self.up_3(x, segmap)  # (B, nf, H, W) for "normal"
        if self.config.num_upsampling_layers == "most":
            x = self.up_4(up(x), segmap)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
