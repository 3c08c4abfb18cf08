"""pix2pixHD and SPADE generators: shapes and range at 1:1 and 1:2, parameter counts against the
layer descriptions of their papers (and how width_mult shrinks them), checkpoint round trips."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from asap.config import ConfigError
from asap.models.baselines import (Pix2PixHDConfig, Pix2PixHDGenerator, SPADEConfig, SPADEGenerator,
                                   SPADEResBlock)
from asap.models.checkpoint import load_generator, save_generator


def conv(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def r(c, w):
    return max(1, round(c * w))


def pix2pixhd_params(cin, w, ngf=64, n_down=4, n_blocks=9, cout=3):
    """c7s1-64, d128..d1024, 9 x R1024 (two 3x3 convs), u512..u64 (3x3 transposed), c7s1-3."""
    widths = [r(ngf * 2 ** i, w) for i in range(n_down + 1)]
    n = conv(7, cin, widths[0])
    n += sum(conv(3, widths[i], widths[i + 1]) for i in range(n_down))
    n += n_blocks * 2 * conv(3, widths[-1], widths[-1])
    n += sum(conv(3, widths[i], widths[i - 1]) for i in range(n_down, 0, -1))
    return n + conv(7, widths[0], cout)


def spade_params(cin, w, nf=64, hidden=128, cout=3):
    """fc 3x3 -> 16nf; ResBlks 16-16-16-8-4-2-1 nf; conv_img 3x3. A SPADE(c): 3x3 cin->hidden, two 3x3
    hidden->c; a ResBlk: SPADE(fin), conv fin->fmid, SPADE(fmid), conv fmid->fout, and when fin != fout
    SPADE(fin) + 1x1 conv without bias."""
    h = r(hidden, w)

    def spade(c):
        return conv(3, cin, h) + 2 * conv(3, h, c)

    def block(fin, fout):
        fmid = min(fin, fout)
        n = spade(fin) + conv(3, fin, fmid) + spade(fmid) + conv(3, fmid, fout)
        return n + (spade(fin) + conv(1, fin, fout, bias=False) if fin != fout else 0)

    widths = [r(nf * k, w) for k in (16, 16, 16, 16, 8, 4, 2, 1)]
    n = conv(3, cin, widths[0]) + sum(block(a, b) for a, b in zip(widths[:-1], widths[1:]))
    return n + conv(3, widths[-1], cout)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("w", [0.25, 0.0625])
def test_parameter_counts_match_the_papers_layers(w):
    # Cityscapes-like input: 35 labels + instance edge
    assert count(Pix2PixHDGenerator(Pix2PixHDConfig(35, instance_edge=True, width_mult=w))) == pix2pixhd_params(36, w)
    assert count(SPADEGenerator(SPADEConfig(35, instance_edge=True, width_mult=w))) == spade_params(36, w)


def test_width_mult_shrinks_roughly_quadratically():
    for params in (pix2pixhd_params, spade_params):
        full, half, quarter = params(36, 1.0), params(36, 0.5), params(36, 0.25)
        assert 3.8 < full / half < 4.1 and 3.8 < half / quarter < 4.1
    # and the built models follow: width_mult 0.125 -> 0.0625 removes about 3/4 of the parameters
    for cls, cfg in ((Pix2PixHDGenerator, Pix2PixHDConfig), (SPADEGenerator, SPADEConfig)):
        ratio = count(cls(cfg(35, width_mult=0.125))) / count(cls(cfg(35, width_mult=0.0625)))
        assert 3.0 < ratio < 4.1


@pytest.mark.parametrize("arch", ["pix2pixhd", "spade"])
@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_output_shape_and_range(arch, size):
    torch.manual_seed(0)
    model = (Pix2PixHDGenerator(Pix2PixHDConfig(6, instance_edge=True, width_mult=0.0625)) if arch == "pix2pixhd"
             else SPADEGenerator(SPADEConfig(6, instance_edge=True, width_mult=0.0625)))
    labels = torch.randint(0, 6, (2, *size))
    edges = (torch.rand(2, 1, *size) > 0.9).float()
    out = model(labels, edges)
    assert out.shape == (2, 3, *size)
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0
    encoded = torch.cat([F.one_hot(labels, 6).permute(0, 3, 1, 2).float(), edges], 1)
    model.eval()
    torch.testing.assert_close(model(encoded), model(labels, edges))  # indices and one-hot agree


@pytest.mark.parametrize("cls,cfg,divisor", [(Pix2PixHDGenerator, Pix2PixHDConfig, 16),
                                             (SPADEGenerator, SPADEConfig, 32)])
def test_sizes_must_divide(cls, cfg, divisor):
    model = cls(cfg(4, width_mult=0.0625))
    assert model(torch.randint(0, 4, (1, 2 * divisor, 2 * divisor))).shape == (1, 3, 2 * divisor, 2 * divisor)
    with pytest.raises(ConfigError, match=f"divisible by {divisor}"):
        model(torch.randint(0, 4, (1, 2 * divisor + 8, 2 * divisor)))
    with pytest.raises(ConfigError, match="too small"):  # a single pixel at the coarsest grid
        model(torch.randint(0, 4, (1, divisor, divisor)))
    with pytest.raises(ConfigError, match="width_mult"):
        cfg(4, width_mult=0)


def test_image_input_and_gradients():
    """input_kind='image' (e.g. RGB -> depth); every parameter gets a gradient."""
    for model in (Pix2PixHDGenerator(Pix2PixHDConfig(3, input_kind="image", out_channels=1, width_mult=0.0625)),
                  SPADEGenerator(SPADEConfig(3, input_kind="image", out_channels=1, width_mult=0.0625))):
        out = model(torch.rand(1, 3, 32, 64) * 2 - 1)
        assert out.shape == (1, 1, 32, 64)
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_spade_block_structure():
    block = SPADEResBlock(8, 4, label_channels=3, hidden=5)
    assert block.learned_shortcut and not SPADEResBlock(4, 4, 3, 5).learned_shortcut
    for conv in (block.conv_0, block.conv_1, block.conv_s):
        assert parametrize.is_parametrized(conv, "weight")  # spectral norm
    assert block.conv_0.out_channels == 4 and block.conv_s.bias is None
    # param-free InstanceNorm: gamma = beta = 0 gives exactly the normalised input
    for spade in (block.norm_0,):
        for m in (spade.gamma, spade.beta):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
        x = torch.randn(2, 8, 6, 6)
        expected = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
        torch.testing.assert_close(spade(x, torch.rand(2, 3, 12, 12)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls,cfg", [(Pix2PixHDGenerator, Pix2PixHDConfig), (SPADEGenerator, SPADEConfig)])
def test_checkpoint_round_trip(tmp_path, cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg(5, dontcare=True, width_mult=0.0625)).eval()
    labels = torch.randint(0, 5, (1, 32, 64))
    labels[0, :4] = 255  # don't care
    path = save_generator(tmp_path / "g.pt", model, meta={"dataset": "toy"})
    loaded, meta = load_generator(path)
    assert type(loaded) is cls and loaded.config == model.config and meta == {"dataset": "toy"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(labels), model(labels))
