"""GAN losses against hand-worked values and hand loops; the perceptual loss's layer weights against
a manual sum over the network's features."""

import pytest
import torch

from asap.config import ConfigError
from asap.losses import (GANLossConfig, PerceptualLoss, build_perceptual_loss, feature_matching_loss,
                         hinge_d_loss, hinge_g_loss)
from asap.weights import load_hed_vgg16_features


def d_output(*logits):
    """A fake multi-scale D output: one [feature, logits] list per scale."""
    return [[torch.zeros(1, 2, 2, 2), torch.tensor(v, dtype=torch.float32).view(1, 1, 1, -1)] for v in logits]


def test_hinge_d_loss_hand_worked():
    real = d_output([2.0, 0.5, -1.0], [1.0, 0.0, 3.0, -0.5])
    fake = d_output([-2.0, 0.0, 1.0], [-1.5, -1.0, 0.5, 2.0])
    # scale 0: relu(1 - real) = [0, .5, 2] -> 5/6;  relu(1 + fake) = [0, 1, 2] -> 1
    # scale 1: relu(1 - real) = [0, 1, 0, 1.5] -> 5/8; relu(1 + fake) = [0, 0, 1.5, 3] -> 9/8
    expected = ((5 / 6 + 1) + (5 / 8 + 9 / 8)) / 2
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)


def test_hinge_g_loss_hand_worked():
    fake = d_output([-2.0, 0.0, 1.0], [-1.5, -1.0, 0.5, 2.0])
    expected = (1 / 3 + 0.0) / 2  # -mean per scale: 1/3 and 0, averaged over scales
    assert hinge_g_loss(fake).item() == pytest.approx(expected)
    assert hinge_g_loss(torch.tensor([[1.0, 3.0]])).item() == pytest.approx(-2.0)  # a bare logit tensor


def test_feature_matching_matches_hand_loop():
    torch.manual_seed(0)
    shapes = [[(2, 4, 8, 8), (2, 8, 4, 4), (2, 1, 5, 5)], [(2, 4, 4, 4), (2, 8, 2, 2), (2, 1, 3, 3)]]
    fake = [[torch.randn(s, requires_grad=True) for s in scale] for scale in shapes]
    real = [[torch.randn(s, requires_grad=True) for s in scale] for scale in shapes]
    expected = 0.0
    for fs, rs in zip(fake, real):
        for f, r in list(zip(fs, rs))[:-1]:  # every layer but the logits
            diff = (f - r).detach().abs()
            expected += diff.sum().item() / diff.numel()
    expected = 10.0 * expected / 2
    loss = feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert feature_matching_loss(fake, real, weight=2.5).item() == pytest.approx(expected / 4, rel=1e-5)
    loss.backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None  # real features are targets
    assert fake[0][-1].grad is None  # the logits do not take part


@pytest.fixture(scope="module")
def hed():
    return load_hed_vgg16_features()


def test_perceptual_loss_layer_weights(hed):
    torch.manual_seed(0)
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    fake = (real + 0.2 * torch.randn_like(real)).clamp(-1, 1)
    weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    with torch.no_grad():
        manual = 10.0 * sum(w * (f - r).abs().mean() for w, f, r in zip(weights, hed(fake), hed(real)))
        loss = PerceptualLoss(hed)(fake, real)
        only_last = PerceptualLoss(hed, layer_weights=(0, 0, 0, 0, 1), weight=1.0)(fake, real)
        last = (hed(fake)[4] - hed(real)[4]).abs().mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert only_last.item() == pytest.approx(last.item(), rel=1e-5)
    assert PerceptualLoss(hed)(real, real).item() == 0.0
    assert loss.item() > 0


def test_perceptual_gradient_reaches_fake_only(hed):
    real = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    fake = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    PerceptualLoss(hed)(fake, real).backward()
    assert fake.grad.abs().sum() > 0 and real.grad is None


def test_config_defaults_and_validation():
    config = GANLossConfig()
    assert (config.lambda_feat, config.lambda_vgg, config.perceptual) == (10.0, 10.0, "auto")
    assert config.vgg_layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert GANLossConfig(**config.to_dict()) == config
    with pytest.raises(ConfigError, match="'vgg16'"):
        GANLossConfig(perceptual="vgg16")
    with pytest.raises(ConfigError, match="lambda_feat"):
        GANLossConfig(lambda_feat=-1)
    with pytest.raises(ConfigError, match="5 numbers"):
        GANLossConfig(vgg_layer_weights=(1, 1))
    assert build_perceptual_loss(GANLossConfig(perceptual="off")) is None
    assert build_perceptual_loss(GANLossConfig(lambda_vgg=0)) is None
    loss = build_perceptual_loss(GANLossConfig(perceptual="hed-vgg16", lambda_vgg=3.0))
    assert loss.weight == 3.0 and loss.network.name == "hed-vgg16"
