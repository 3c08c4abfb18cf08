"""GAN training losses (paper Sec. 3.4: "We follow the optimization procedure of SPADE [32] which
includes an adversarial hinge-loss [47], a perceptual loss [8, 10, 20] and a discriminator feature
matching loss [48]").

The discriminator outputs are ``MultiscaleDiscriminator`` outputs: one list per scale of the layer
outputs with the patch logits last. Every multi-scale term is averaged over the scales, as SPADE does.

    d_loss = hinge_d_loss(D(real), D(fake.detach()))
    g_loss = hinge_g_loss(D(fake)) + feature_matching_loss(D(fake), D(real), lambda_feat)
             + perceptual(fake, real)              # PerceptualLoss, None when switched off
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from asap.config import require, require_choice
from asap.weights import PERCEPTUAL_KINDS, VGGFeatures, load_perceptual_network

# SPADE's VGG loss weights for relu1_1 .. relu5_1 (coarser layers count more).
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


@dataclass(frozen=True)
class GANLossConfig:
    """Loss weights (SPADE's defaults, which ASAP-Net follows)."""
    lambda_feat: float = 10.0                  # feature matching weight (pix2pixHD / SPADE)
    lambda_vgg: float = 10.0                   # perceptual loss weight (SPADE)
    perceptual: str = "auto"                   # "auto" | "vgg19" | "hed-vgg16" | "off" (asap/weights.py)
    vgg_layer_weights: tuple[float, ...] = field(default=VGG_LAYER_WEIGHTS)  # relu1_1 .. relu5_1

    def __post_init__(self):
        if self.perceptual is False:  # YAML reads a bare `off` as false
            object.__setattr__(self, "perceptual", "off")
        require_choice("loss perceptual", self.perceptual, set(PERCEPTUAL_KINDS))
        for name in ("lambda_feat", "lambda_vgg"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                    f"loss {name} must be a number >= 0, got {value!r}")
        weights = tuple(self.vgg_layer_weights)
        require(len(weights) == 5 and all(isinstance(w, (int, float)) and w >= 0 for w in weights),
                f"loss vgg_layer_weights must be 5 numbers >= 0 (relu1_1 .. relu5_1), got {self.vgg_layer_weights!r}")
        object.__setattr__(self, "vgg_layer_weights", tuple(float(w) for w in weights))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vgg_layer_weights"] = list(self.vgg_layer_weights)
        return d


def _logits(outputs) -> list[torch.Tensor]:
    """Per-scale patch logits from D's output (a list of per-scale feature lists), or a bare tensor."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [scale[-1] if isinstance(scale, (list, tuple)) else scale for scale in outputs]


def hinge_d_loss(real_outputs, fake_outputs) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), averaged over scales."""
    real, fake = _logits(real_outputs), _logits(fake_outputs)
    if len(real) != len(fake):
        raise ValueError(f"real and fake discriminator outputs have {len(real)} and {len(fake)} scales")
    total = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake))
    return total / len(real)


def hinge_g_loss(fake_outputs) -> torch.Tensor:
    """Generator hinge loss: -mean(D(fake)), averaged over scales."""
    fake = _logits(fake_outputs)
    return sum(-f.mean() for f in fake) / len(fake)


def feature_matching_loss(fake_outputs, real_outputs, weight: float = 10.0) -> torch.Tensor:
    """pix2pixHD's feature matching: L1 between D's intermediate features of fake and real (real
    detached), summed over all layers but the logits, averaged over scales, times ``weight``."""
    if len(fake_outputs) != len(real_outputs):
        raise ValueError(f"fake and real discriminator outputs have {len(fake_outputs)} and "
                         f"{len(real_outputs)} scales")
    total = 0.0
    for fake_scale, real_scale in zip(fake_outputs, real_outputs):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(f, r.detach())
    return total * weight / len(fake_outputs)


class PerceptualLoss(nn.Module):
    """weight * sum_k w_k * L1(phi_k(fake), phi_k(real)) over the network's five taps (real detached)."""

    def __init__(self, network: VGGFeatures, layer_weights=VGG_LAYER_WEIGHTS, weight: float = 10.0):
        super().__init__()
        self.network = network
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.weight = float(weight)
        if len(self.layer_weights) != len(network.taps):
            raise ValueError(f"{len(self.layer_weights)} layer weights for {len(network.taps)} feature taps")

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_features = self.network(fake)
        with torch.no_grad():
            real_features = self.network(real)
        total = sum(w * F.l1_loss(f, r) for w, f, r in zip(self.layer_weights, fake_features, real_features))
        return total * self.weight


def build_perceptual_loss(config: GANLossConfig) -> PerceptualLoss | None:
    """The perceptual term for ``config``; None when it is switched off (perceptual "off" or lambda_vgg 0)."""
    if config.perceptual == "off" or config.lambda_vgg == 0:
        return None
    network = load_perceptual_network(config.perceptual)
    return PerceptualLoss(network, config.vgg_layer_weights, config.lambda_vgg)
