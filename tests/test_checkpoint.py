"""Checkpoints as data: ours round-trip; the authors' ASAPNetsGenerator state dict loads and gives the
output of their forward pass, written out independently here from their documented layout."""

import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from asap.convert import convert_authors
from asap.models.asapnet import asapnet
from asap.models.checkpoint import CheckpointError, config_from_authors_state, load_generator, save_generator
from test_asapnet import naive_pixelwise


def authors_state(lr_in, P, lr_width=64, max_width=1024, n_strided=4, depth=7, empty=False):
    """A state dict with the authors' key names and shapes (ASAPNetsLRStream, norm_G='instanceaffine':
    convs without bias wrapped as Sequential(conv, InstanceNorm2d(affine)), ReLUs at odd indices,
    ASAPNetsBlock(conv_block = Sequential(Sequential(conv, IN), ReLU)), a final 1x1 conv with bias)."""
    make = torch.empty if empty else (lambda *s: torch.randn(*s) * 0.1)
    sd, i = OrderedDict(), 0

    def conv_norm(prefix, cin, cout):
        sd[f"{prefix}.0.weight"] = make(cout, cin, 3, 3)
        sd[f"{prefix}.1.weight"] = 1 + make(cout)
        sd[f"{prefix}.1.bias"] = make(cout)

    conv_norm("lowres_stream.model.0", lr_in, lr_width)
    width, i = lr_width, 2
    for k in range(n_strided):
        out = max_width if k == n_strided - 1 else width
        conv_norm(f"lowres_stream.model.{i}", width, out)
        width, i = out, i + 2
    for _ in range(depth):
        conv_norm(f"lowres_stream.model.{i}.conv_block.0", width, width)
        i += 1
    sd[f"lowres_stream.model.{i}.weight"] = make(P, width, 1, 1)
    sd[f"lowres_stream.model.{i}.bias"] = make(P)
    return sd


def authors_forward(sd, x, S, s2, n_strided, depth, hr_in, channels):
    """Their ASAPNetsGenerator.forward, step by step from the keys: tent downsample by S/S2, the conv
    stack with affine instance norm, then the MLP per tile (naive per-pixel loop)."""
    s1 = S // s2
    lr = x
    if s1 > 1:
        k = torch.arange(1, 2 * s1 + 1, 2, dtype=torch.float32)
        k = torch.cat([k, k.flip(0)])
        k = k / k.sum()
        C = x.shape[1]
        lr = F.pad(lr, [s1 // 2] * 4, mode="reflect")
        lr = F.conv2d(lr, k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), stride=(1, s1), groups=C)
        lr = F.conv2d(lr, k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), stride=(s1, 1), groups=C)

    def cn(h, prefix, stride):
        h = F.conv2d(h, sd[f"{prefix}.0.weight"], stride=stride, padding=1)
        return F.relu(F.instance_norm(h, weight=sd[f"{prefix}.1.weight"], bias=sd[f"{prefix}.1.bias"], eps=1e-5))

    h, i = cn(lr, "lowres_stream.model.0", 1), 2
    for _ in range(n_strided):
        h, i = cn(h, f"lowres_stream.model.{i}", 2), i + 2
    for _ in range(depth):
        h, i = cn(h, f"lowres_stream.model.{i}.conv_block.0", 1), i + 1
    params = F.conv2d(h, sd[f"lowres_stream.model.{i}.weight"], sd[f"lowres_stream.model.{i}.bias"])
    return naive_pixelwise(x[:, :hr_in], params, channels, S, True)


@pytest.mark.parametrize("label_nc,lr_instance", [(13, False), (6, True)])
def test_authors_checkpoint_gives_their_output(tmp_path, label_nc, lr_instance):
    torch.manual_seed(0)
    S, s2, n_strided, depth, width = 32, 16, 4, 2, 16
    hr_in = label_nc - int(lr_instance)
    channels = [hr_in + 4 * 5, 64, 64, 64, 64, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    sd = authors_state(label_nc, P, lr_width=8, max_width=width, n_strided=n_strided, depth=depth)
    path = tmp_path / "latest_net_G.pth"
    torch.save(sd, path)

    model, meta = load_generator(path)
    c = model.config
    assert (c.downsampling, c.s2, c.lr_depth, c.lowres_only_last_channel) == (S, s2, depth, lr_instance)
    assert "tamarott" in meta["converted_from"]

    x = F.one_hot(torch.randint(0, label_nc, (1, 64, 64)), label_nc).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        got = model(x)
    want = authors_forward(sd, x, S, s2, n_strided, depth, hr_in, channels)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)

    # convert to our format and round-trip: same output, loads as data
    ours = tmp_path / "generator.pt"
    convert_authors(path, ours)
    again, meta2 = load_generator(ours)
    torch.testing.assert_close(again(x), got)
    assert meta2["source"] == "tamarott/ASAPNet"
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_authors(path, ours)


def test_paper_config_recovered_from_full_size_authors_checkpoint():
    # facades 1024x1024 (their defaults): 13 labels, S = 64 -> MLP input 13 + 24 = 37
    P = (37 * 64 + 64) + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    c = config_from_authors_state(authors_state(13, P, empty=True))
    assert (c.num_classes, c.downsampling, c.lr_width, c.lr_max_width, c.lr_depth) == (13, 64, 64, 1024, 7)
    assert c.mlp_channels == [37, 64, 64, 64, 64, 3]
    # cityscapes 512x1024: 35 labels + don't care + instance edge, lr_instance -> HR sees 36, S = 32
    P = (36 + 20) * 64 + 64 + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    c = config_from_authors_state(authors_state(37, P, empty=True), num_classes=35, dontcare=True,
                                  instance_edge=True)
    assert (c.downsampling, c.lowres_only_last_channel, c.hr_in_channels) == (32, True, 36)
    with pytest.raises(CheckpointError, match="gives 36"):
        config_from_authors_state(authors_state(37, P, empty=True), num_classes=35, dontcare=True)


def test_our_checkpoint_round_trip_and_meta(tmp_path):
    torch.manual_seed(0)
    model = asapnet(5, 32, 32, downsampling=8, lr_width=8, lr_max_width=16, lr_depth=1)
    path = save_generator(tmp_path / "g.pt", model, meta={"steps": 3, "dataset": "facades-32x32"})
    data = torch.load(path, weights_only=True)  # plain data, no code
    assert data["arch"] == "asapnet" and data["config"]["downsampling"] == 8
    loaded, meta = load_generator(path)
    assert meta == {"steps": 3, "dataset": "facades-32x32"}
    x = torch.randint(0, 5, (1, 32, 32))
    torch.testing.assert_close(loaded(x), model.eval()(x))


class NotData:
    pass


@pytest.mark.parametrize("content,match", [
    (b"hello, I am a text file\n", "not a generator checkpoint readable as data"),
    ("pickle", "not a generator checkpoint readable as data"),
    ("tensors", "is not a generator checkpoint: expected"),
])
def test_files_that_are_not_generator_checkpoints_get_clear_errors(tmp_path, content, match):
    path = tmp_path / "thing.pt"
    if content == "pickle":  # a pickled object is never unpickled as code
        path.write_bytes(pickle.dumps(NotData()))
    elif content == "tensors":
        torch.save({"encoder.weight": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_generator(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "nope.pt")


def test_convert_cli(tmp_path, capsys):
    from asap.cli import main
    P = (13 + 20) * 64 + 64 + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    torch.save(authors_state(13, P, lr_width=8, max_width=16, depth=1), tmp_path / "G.pth")
    assert main(["convert-authors", str(tmp_path / "G.pth"), str(tmp_path / "out.pt")]) == 0
    assert "S=32" in capsys.readouterr().out
    assert main(["convert-authors", str(tmp_path / "G.pth"), str(tmp_path / "out.pt")]) == 2
    assert "exists" in capsys.readouterr().err
