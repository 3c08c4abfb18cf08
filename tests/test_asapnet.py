"""ASAP-Net generator: the tiled MLP against a naive per-pixel loop, hand-worked sizes, the paper's
positional encoding, shapes, gradients and ablation switches."""

import math

import pytest
import torch
import torch.nn.functional as F

from asap.config import ConfigError
from asap.models.asapnet import ASAPNetConfig, ASAPNetGenerator, asapnet, default_downsampling
from asap.models.pixelwise import pixelwise_mlp, positional_encoding

SMALL = dict(lr_width=8, lr_max_width=16, lr_depth=2, mlp_width=8)


def paper_encoding(px: int, py: int, S: int) -> list[float]:
    """Sec. 3.3 written out for one pixel: sin/cos(2 pi p / 2^k), k = log2 S .. 1 (the authors' order:
    per period [cos x, sin x, cos y, sin y])."""
    out = []
    for k in range(int(math.log2(S)), 0, -1):
        f = 2 ** k
        out += [math.cos(2 * math.pi * px / f), math.sin(2 * math.pi * px / f),
                math.cos(2 * math.pi * py / f), math.sin(2 * math.pi * py / f)]
    return out


def naive_pixelwise(x, params, channels, S, positional):
    """Per-pixel loop over explicitly nearest-upsampled parameters (Eq. 2), walking the P channels
    layer by layer as [bias, weight(nci x nco)]."""
    B, C, H, W = x.shape
    if params.shape[2:] == (1, 1):  # spatially uniform: the same set everywhere
        params = params.expand(B, params.shape[1], H // S, W // S)
    full = params.repeat_interleave(S, dim=2).repeat_interleave(S, dim=3)  # (B, P, H, W): phi_p
    out = torch.empty(B, channels[-1], H, W, dtype=torch.float64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                v = x[b, :, i, j].double()
                if positional:
                    v = torch.cat([v, torch.tensor(paper_encoding(j, i, S), dtype=torch.float64)])
                phi, off = full[b, :, i, j].double(), 0
                for layer, (nci, nco) in enumerate(zip(channels[:-1], channels[1:])):
                    bias = phi[off:off + nco]
                    off += nco
                    weight = phi[off:off + nci * nco].reshape(nci, nco)
                    off += nci * nco
                    v = v @ weight + bias
                    v = F.leaky_relu(v, 0.01) if layer < len(channels) - 2 else torch.tanh(v)
                out[b, :, i, j] = v
    return out


@pytest.mark.parametrize("S,positional", [(4, True), (8, True), (4, False)])
def test_tiled_mlp_equals_naive_per_pixel_loop(S, positional):
    torch.manual_seed(0)
    B, C, H, W = 2, 5, 2 * S, 3 * S
    channels = [C + (4 * int(math.log2(S)) if positional else 0), 6, 6, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    x = torch.randn(B, C, H, W)
    params = torch.randn(B, P, H // S, W // S) * 0.5
    got = pixelwise_mlp(x, params, channels, S, positional)
    want = naive_pixelwise(x, params, channels, S, positional)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_spatially_uniform_params_broadcast_like_naive_loop():
    torch.manual_seed(1)
    S, channels = 4, [3 + 8, 5, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    x, params = torch.randn(1, 3, 8, 12), torch.randn(1, P, 1, 1)
    torch.testing.assert_close(pixelwise_mlp(x, params, channels, S).double(),
                               naive_pixelwise(x, params, channels, S, True), atol=1e-5, rtol=1e-5)


def _mlp_case(seed, S=4, C=3, channels_tail=(6, 6, 3), B=2, H=None, W=None):
    torch.manual_seed(seed)
    channels = [C + 4 * int(math.log2(S)), *channels_tail]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    H, W = H or 2 * S, W or 3 * S
    return torch.randn(B, C, H, W), torch.randn(B, P, H // S, W // S) * 0.5, channels


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_inference_chunks_and_parameter_layouts_equal_naive_loop(monkeypatch, layout):
    """Under no_grad the tiles go through the MLP a chunk at a time with in-place activations:
    a chunk of 5 tiles (12 tiles per image, 24 in all: the last chunk partial) gives the naive
    loop's numbers for every memory layout of the parameter grid."""
    import asap.models.pixelwise as pw

    x, params, channels = _mlp_case(2)
    want = naive_pixelwise(x, params, channels, 4, True)
    if layout == "channels_last":
        params = params.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other channel of a channels-last grid twice as wide
        wide = torch.zeros(params.shape[0], 2 * params.shape[1], *params.shape[2:]).contiguous(
            memory_format=torch.channels_last)
        wide[:, ::2] = params
        params = wide[:, ::2]
    rows_bytes = 4 * 4 * max(channels) * 4  # one tile's widest activation: S*S rows, fp32
    monkeypatch.setattr(pw, "CHUNK_BYTES", 5 * rows_bytes)
    with torch.no_grad():
        got = pixelwise_mlp(x, params, channels, 4)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        uniform = params[:, :, :1, :1]
        got = pixelwise_mlp(x, uniform, channels, 4)
    torch.testing.assert_close(got.double(), naive_pixelwise(x, uniform, channels, 4, True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("uniform", [False, True])
def test_parameter_gradient_equals_the_naive_loops(uniform):
    """The batched products' backward against autograd through the per-pixel loop (float64)."""
    x, params, channels = _mlp_case(3)
    if uniform:
        params = params[:, :, :1, :1].contiguous()
    weights = torch.randn(2, 3, 8, 12, dtype=torch.float64)  # a loss that weighs every output
    p1 = params.double().requires_grad_()
    (pixelwise_mlp(x.double(), p1, channels, 4) * weights).sum().backward()
    p2 = params.double().requires_grad_()
    (naive_pixelwise(x.double(), p2, channels, 4, True) * weights).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-9, rtol=1e-7)


def test_cpu_low_res_stream_writes_channels_last_parameters():
    """On the CPU the parameter grid comes out channels-last (what the MLP reads in place), with
    the numbers of the plain NCHW stream run layer by layer."""
    torch.manual_seed(0)
    model = asapnet(6, 64, 64, **SMALL, downsampling=8).eval()
    x = model.encode(torch.randint(0, 6, (1, 64, 64)))
    with torch.no_grad():
        params = model.tile_params(x)
        want = x
        for layer in model.lowres_stream.model:
            want = layer(want.contiguous())
    assert params.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(params, want)


@pytest.mark.parametrize("H,W,classes,S,first,P", [
    # facades 512x512, S = 32, 13 labels: 13 + 4*5 = 33 inputs;
    # P = (33*64 + 64) + 3*(64*64 + 64) + (64*3 + 3) = 2176 + 12480 + 195
    (512, 512, 13, 32, 33, 14851),
    # facades 1024x1024, S = 64: 13 + 24 = 37; P = 37*64 + 64 + 12480 + 195
    (1024, 1024, 13, 64, 37, 15107),
    # cityscapes 256x512 (35 labelIds + instance edge), S = 16: 36 + 16 = 52; 52*64 + 64 + 12675
    (256, 512, 35, 16, 52, 16067),
])
def test_num_params_hand_worked(H, W, classes, S, first, P):
    assert default_downsampling(H, W) == S
    cfg = ASAPNetConfig(num_classes=classes, downsampling=S, instance_edge=(classes == 35))
    assert cfg.mlp_channels == [first, 64, 64, 64, 64, 3]
    assert cfg.num_params == P
    model = ASAPNetGenerator(cfg)
    assert model.lowres_stream.model[-1].out_channels == P


def test_positional_encoding_matches_paper_formula_at_hand_picked_pixels():
    S = 8
    enc = positional_encoding(16, 24, S)  # (4 log2 S, H, W)
    assert enc.shape == (12, 16, 24)
    # pixel x=3, y=5, period 8: cos(3pi/4) = -sqrt(2)/2, sin(3pi/4) = sqrt(2)/2, cos(5pi/4) = sin(5pi/4) = -sqrt(2)/2
    r = math.sqrt(2) / 2
    torch.testing.assert_close(enc[:4, 5, 3], torch.tensor([-r, r, -r, -r]), atol=1e-6, rtol=0)
    # period 2 at x=3 (odd): cos(pi) = -1, sin(pi) = 0; at y=5: the same
    torch.testing.assert_close(enc[8:, 5, 3], torch.tensor([-1.0, 0.0, -1.0, 0.0]), atol=1e-6, rtol=0)
    for (y, x) in [(0, 0), (7, 13), (15, 23)]:
        torch.testing.assert_close(enc[:, y, x], torch.tensor(paper_encoding(x, y, S)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("H,W", [(256, 512), (512, 1024), (512, 512), (1024, 1024)])
def test_output_shape_and_range_at_paper_sizes(H, W):
    torch.manual_seed(0)
    model = asapnet(13, H, W, **SMALL)
    with torch.no_grad():
        y = model(torch.randint(1, 13, (1, H, W)))
    assert y.shape == (1, 3, H, W)
    assert y.abs().max() <= 1.0 and torch.isfinite(y).all()
    assert model.config.downsampling == min(H, W) // 16


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = asapnet(6, 64, 128, **SMALL, downsampling=8)
    model.lowres_stream.model[-1].weight.data.normal_(0, 0.3)  # leave the small init regime
    model(torch.randint(0, 6, (2, 64, 128))).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_index_and_one_hot_inputs_agree_and_bad_labels_error():
    torch.manual_seed(0)
    model = asapnet(5, 32, 32, **SMALL, downsampling=8)
    labels = torch.randint(0, 5, (2, 32, 32))
    one_hot = F.one_hot(labels, 5).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(model(labels), model(one_hot))
    with pytest.raises(ValueError, match=r"\[7\].*outside the 5 classes"):
        model(torch.full((1, 32, 32), 7))


def test_dontcare_and_instance_edge_channels():
    cfg = ASAPNetConfig(num_classes=4, downsampling=8, dontcare=True, instance_edge=True,
                        lowres_only_last_channel=True, **SMALL)
    assert cfg.in_channels == 6 and cfg.hr_in_channels == 5
    model = ASAPNetGenerator(cfg)
    labels = torch.randint(0, 4, (1, 32, 32))
    labels[0, :4, :4] = 255  # don't care
    edges = torch.zeros(1, 1, 32, 32)
    y = model(labels, edges)
    assert y.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="instance_edge"):
        model(labels)


def test_ablation_no_positional_encoding_is_constant_within_uniform_tiles():
    torch.manual_seed(0)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    for pe in (True, False):
        model = asapnet(3, 32, 32, **SMALL, downsampling=8, positional_encoding=pe)
        model.lowres_stream.model[-1].weight.data.normal_(0, 0.5)
        y = model(labels)[0, :, :8, :8]  # one tile of constant label
        spread = (y - y[:, :1, :1]).abs().max().item()
        if pe:
            assert model.config.mlp_channels[0] == 3 + 12 and spread > 1e-3
        else:
            assert model.config.mlp_channels[0] == 3 and spread < 1e-6


def test_ablation_spatially_uniform_uses_one_parameter_set():
    torch.manual_seed(0)
    model = asapnet(3, 32, 64, **SMALL, downsampling=8, spatially_uniform=True)
    model.lowres_stream.model[-1].weight.data.normal_(0, 0.5)
    labels = torch.randint(0, 3, (1, 32, 64))
    labels[:, :8, :8] = labels[:, 16:24, 40:48]  # the same content in two tiles far apart
    assert model.tile_params(model.encode(labels)).shape[2:] == (1, 1)
    y = model(labels)
    torch.testing.assert_close(y[..., :8, :8], y[..., 16:24, 40:48])
    # the full model generally differs between those tiles
    full = asapnet(3, 32, 64, **SMALL, downsampling=8)
    full.lowres_stream.model[-1].weight.data.normal_(0, 0.5)
    yf = full(labels)
    assert (yf[..., :8, :8] - yf[..., 16:24, 40:48]).abs().max() > 1e-4


def test_ablation_other_S_changes_the_grid_and_the_strided_convs():
    for S, grid, n_strided in [(4, 16, 2), (16, 4, 4), (32, 2, 4)]:
        model = asapnet(3, 64, 64, **SMALL, downsampling=S)
        assert model.tile_params(model.encode(torch.zeros(1, 64, 64, dtype=torch.long))).shape[2:] == (grid, grid)
        strided = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
        assert len(strided) == n_strided
        assert model.config.s1 * model.config.s2 == S


def test_tent_downsample_against_explicit_filter():
    from asap.models.asapnet import tent_downsample
    x = torch.randn(1, 2, 16, 16)
    got = tent_downsample(x, 2)
    # factor 2: taps [1, 3, 3, 1] / 8, reflection pad 1, stride 2 -> out[i] = sum_t k[t] xpad[2i + t]
    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    xp = F.pad(x, [1, 1, 1, 1], mode="reflect")
    want = torch.zeros(1, 2, 8, 8)
    for i in range(8):
        for j in range(8):
            patch = xp[:, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
            want[:, :, i, j] = (patch * k[:, None] * k[None, :]).sum((-1, -2))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (dict(downsampling=3), "power of two"),
    (dict(downsampling=1), "power of two"),
    (dict(downsampling=8, input_kind="video"), "input_kind"),
    (dict(downsampling=8, num_classes=0), "num_classes"),
    (dict(downsampling=8, padding="replicate"), r"padding must be one of \['zeros', 'reflect'\], got 'replicate'"),
])
def test_config_errors_name_the_value(bad, match):
    kwargs = dict(num_classes=3)
    kwargs.update(bad)
    with pytest.raises(ConfigError, match=match):
        ASAPNetConfig(**kwargs)


def test_size_not_divisible_by_S_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"100x128.*S=32"):
        asapnet(3, 100, 128, downsampling=32)


def test_reflect_padding_pads_every_3x3_conv_with_the_authors_module_indices():
    """padding='reflect': a ReflectionPad2d(1) right before each 3x3 conv (none before the 1x1), the
    convs themselves unpadded; the keys shift as in the authors' --reflection_pad layout."""
    model = asapnet(3, 64, 64, **SMALL, downsampling=16, padding="reflect")
    order = [m for m in model.lowres_stream.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ReflectionPad2d, torch.nn.ZeroPad2d))]
    kinds = ["pad" if isinstance(m, torch.nn.ReflectionPad2d) else f"conv{m.kernel_size[0]}" for m in order]
    assert kinds == ["pad", "conv3"] * (1 + 4 + SMALL["lr_depth"]) + ["conv1"]
    assert all(m.padding == (0, 0) for m in order if isinstance(m, torch.nn.Conv2d))
    keys = set(model.state_dict())
    assert {"lowres_stream.model.1.0.weight", "lowres_stream.model.4.0.weight",
            "lowres_stream.model.15.conv_block.1.0.weight", "lowres_stream.model.17.weight"} <= keys
    zeros = asapnet(3, 64, 64, **SMALL, downsampling=16)
    assert {"lowres_stream.model.0.0.weight", "lowres_stream.model.10.conv_block.0.0.weight",
            "lowres_stream.model.12.weight"} <= set(zeros.state_dict())


def test_reflect_padding_needs_a_grid_of_at_least_2x2():
    asapnet(3, 64, 64, **SMALL, downsampling=32, padding="reflect")  # 2x2: fine
    with pytest.raises(ConfigError, match=r"32x64 gives a 1x2 parameter grid at S=32; padding='reflect' needs "
                                          r"at least 2x2"):
        asapnet(3, 32, 64, **SMALL, downsampling=32, padding="reflect")
    asapnet(3, 32, 64, **SMALL, downsampling=32)  # zero padding runs on a 1x2 grid
