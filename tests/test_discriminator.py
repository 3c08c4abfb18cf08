"""Multi-scale PatchGAN: per-scale feature shapes from the conv arithmetic, the 3x3 average pool
between scales by a hand loop, and spectral norm on the normalised convs (largest singular value 1)."""

import pytest
import torch
from torch.nn.utils import parametrize

from asap.config import ConfigError
from asap.models.discriminator import DiscriminatorConfig, MultiscaleDiscriminator


def conv_out(n: int, stride: int, kernel: int = 4, pad: int = 2) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def expected_shapes(h: int, w: int, ndf: int, n_layers: int):
    """PatchGAN layer by layer: C64 s2, C128 s2, C256 s2, C512 s1, logits s1 (n_layers = 4)."""
    shapes = []
    for i in range(n_layers + 1):
        stride = 2 if i < n_layers - 1 else 1
        h, w = conv_out(h, stride), conv_out(w, stride)
        channels = min(ndf * 2 ** i, 512) if i < n_layers else 1
        shapes.append((channels, h, w))
    return shapes


def test_feature_shapes_per_scale():
    config = DiscriminatorConfig(in_channels=5 + 3, ndf=8)
    D = MultiscaleDiscriminator(config)
    x = torch.randn(2, 8, 64, 128)
    out = D(x)
    assert len(out) == 2
    for scale, (h, w) in enumerate([(64, 128), (32, 64)]):
        assert [tuple(f.shape[1:]) for f in out[scale]] == expected_shapes(h, w, 8, 4)
        assert all(f.shape[0] == 2 for f in out[scale])


def test_default_config_is_the_papers():
    config = DiscriminatorConfig.for_inputs(label_channels=13)
    assert (config.in_channels, config.ndf, config.n_layers, config.num_scales) == (16, 64, 4, 2)
    widths = [f.shape[1] for f in MultiscaleDiscriminator(config)(torch.randn(1, 16, 32, 32))[0]]
    assert widths == [64, 128, 256, 512, 1]


def test_second_scale_sees_avg_pooled_input():
    """Scale 1 equals scale 0's architecture applied to a 3x3/stride-2 average that skips padding."""
    torch.manual_seed(0)
    D = MultiscaleDiscriminator(DiscriminatorConfig(in_channels=4, ndf=4)).eval()
    x = torch.randn(1, 4, 10, 14)
    pooled = torch.zeros(1, 4, 5, 7)
    for i in range(5):
        for j in range(7):
            rows = [r for r in (2 * i - 1, 2 * i, 2 * i + 1) if 0 <= r < 10]
            cols = [c for c in (2 * j - 1, 2 * j, 2 * j + 1) if 0 <= c < 14]
            pooled[0, :, i, j] = x[0][:, rows][:, :, cols].mean(dim=(1, 2))
    with torch.no_grad():
        expected = D.scales[1](pooled)[-1]
        got = D(x)[1][-1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_spectral_norm_on_normalised_convs():
    torch.manual_seed(0)
    D = MultiscaleDiscriminator(DiscriminatorConfig(in_channels=6, ndf=8))
    for _ in range(20):  # a few power iterations, as training does
        D(torch.randn(1, 6, 32, 32))
    for scale in D.scales:
        convs = [m for m in scale.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 5
        # first layer (no norm) and the logit conv are plain; the three middle ones are spectral-normed
        assert [parametrize.is_parametrized(c, "weight") for c in convs] == [False, True, True, True, False]
        for conv in convs[1:4]:
            sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
            assert abs(sigma.item() - 1.0) < 0.05
        norms = [m for m in scale.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
        assert len(norms) == 3 and not any(n.affine for n in norms)


def test_num_scales_and_input_errors():
    D = MultiscaleDiscriminator(DiscriminatorConfig(in_channels=4, ndf=4, num_scales=3))
    assert len(D(torch.randn(1, 4, 32, 32))) == 3
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\) = concat"):
        D(torch.randn(1, 5, 32, 32))
    with pytest.raises(ConfigError, match="ndf"):
        DiscriminatorConfig(in_channels=4, ndf=0)
