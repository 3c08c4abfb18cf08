"""Checkpoints as data: ours round-trip; the authors' ASAPNetsGenerator state dict loads and gives the
output of their forward pass, written out independently here from their documented layout."""

import copy
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from asap.convert import convert_authors
from asap.models.asapnet import ASAPNetConfig, ASAPNetGenerator, asapnet
from asap.models.checkpoint import (CheckpointError, config_from_authors_state, load_authors_state, load_generator,
                                   save_generator)
from test_asapnet import naive_pixelwise


def authors_modules(n_strided, depth, padding="zeros"):
    """The authors' ASAPNetsLRStream as the list of its modules in order, by kind: each 3x3 conv is
    [conv+norm, relu], preceded by a reflection pad module with their --reflection_pad; each conv block
    is one module; the last is the 1x1 conv."""
    pad = ["pad"] if padding == "reflect" else []
    return (pad + ["conv_norm", "relu"]) * (1 + n_strided) + ["block"] * depth + ["final"]


def authors_state(lr_in, P, lr_width=64, max_width=1024, n_strided=4, depth=7, empty=False, padding="zeros"):
    """A state dict with the authors' key names and shapes (ASAPNetsLRStream, norm_G='instanceaffine':
    convs without bias wrapped as Sequential(conv, InstanceNorm2d(affine)), ASAPNetsBlock(conv_block =
    Sequential([pad,] Sequential(conv, IN), ReLU)), a final 1x1 conv with bias), numbered by module
    position as nn.Sequential does."""
    make = torch.empty if empty else (lambda *s: torch.randn(*s) * 0.1)
    sd = OrderedDict()

    def conv_norm(prefix, cin, cout):
        sd[f"{prefix}.0.weight"] = make(cout, cin, 3, 3)
        sd[f"{prefix}.1.weight"] = 1 + make(cout)
        sd[f"{prefix}.1.bias"] = make(cout)

    cin, convs = lr_in, 0
    block_conv = 1 if padding == "reflect" else 0  # inside a block, the pad comes first too
    for i, kind in enumerate(authors_modules(n_strided, depth, padding)):
        if kind == "conv_norm":  # the first conv and all strided ones but the last: lr_width
            cout = max_width if convs == n_strided else lr_width
            conv_norm(f"lowres_stream.model.{i}", cin, cout)
            cin, convs = cout, convs + 1
        elif kind == "block":
            conv_norm(f"lowres_stream.model.{i}.conv_block.{block_conv}", cin, cin)
        elif kind == "final":
            sd[f"lowres_stream.model.{i}.weight"] = make(P, cin, 1, 1)
            sd[f"lowres_stream.model.{i}.bias"] = make(P)
    return sd


def double(sd: dict) -> dict:
    return {k: v.double() for k, v in sd.items()}


def assert_matches_authors(exact: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> None:
    """Our generator against their forward written out (``want``, float64): in float64 (``exact``) the
    same function to rounding; in float32 (``got``) within float32's error through this stack (the
    instance norms over 2x2 grids and five MLP layers magnify the 1x1 conv's rounding to ~1.6e-4, in
    their float32 forward as in ours: comparing two float32 runs at 2e-5 held only while both summed
    in the same order)."""
    torch.testing.assert_close(exact, want, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got.double(), want, atol=5e-4, rtol=1e-3)


def authors_forward(sd, x, S, s2, n_strided, depth, hr_in, channels, padding="zeros"):
    """Their ASAPNetsGenerator.forward, step by step from the keys: tent downsample by S/S2, the conv
    stack with affine instance norm (each 3x3 conv padded by 1 with zeros, or by reflection with their
    --reflection_pad), then the MLP per tile (naive per-pixel loop)."""
    s1 = S // s2
    lr = x
    if s1 > 1:
        k = torch.arange(1, 2 * s1 + 1, 2, dtype=x.dtype)
        k = torch.cat([k, k.flip(0)])
        k = k / k.sum()
        C = x.shape[1]
        lr = F.pad(lr, [s1 // 2] * 4, mode="reflect")
        lr = F.conv2d(lr, k.view(1, 1, 1, -1).repeat(C, 1, 1, 1), stride=(1, s1), groups=C)
        lr = F.conv2d(lr, k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), stride=(s1, 1), groups=C)

    def cn(h, prefix, stride):
        if padding == "reflect":
            h = F.conv2d(F.pad(h, [1, 1, 1, 1], mode="reflect"), sd[f"{prefix}.0.weight"], stride=stride)
        else:
            h = F.conv2d(h, sd[f"{prefix}.0.weight"], stride=stride, padding=1)
        return F.relu(F.instance_norm(h, weight=sd[f"{prefix}.1.weight"], bias=sd[f"{prefix}.1.bias"], eps=1e-5))

    h, convs = lr, 0
    block_conv = 1 if padding == "reflect" else 0
    for i, kind in enumerate(authors_modules(n_strided, depth, padding)):
        if kind == "conv_norm":  # (its relu is applied in cn; the pad in cn too)
            h, convs = cn(h, f"lowres_stream.model.{i}", 1 if convs == 0 else 2), convs + 1
        elif kind == "block":
            h = cn(h, f"lowres_stream.model.{i}.conv_block.{block_conv}", 1)
        elif kind == "final":
            params = F.conv2d(h, sd[f"lowres_stream.model.{i}.weight"], sd[f"lowres_stream.model.{i}.bias"])
    return naive_pixelwise(x[:, :hr_in], params, channels, S, True)


@pytest.mark.parametrize("label_nc,lr_instance,padding", [(13, False, "zeros"), (6, True, "zeros"),
                                                          (13, False, "reflect"), (6, True, "reflect")])
def test_authors_checkpoint_gives_their_output(tmp_path, label_nc, lr_instance, padding):
    torch.manual_seed(0)
    S, s2, n_strided, depth, width = 32, 16, 4, 2, 16
    hr_in = label_nc - int(lr_instance)
    channels = [hr_in + 4 * 5, 64, 64, 64, 64, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    sd = authors_state(label_nc, P, lr_width=8, max_width=width, n_strided=n_strided, depth=depth, padding=padding)
    path = tmp_path / "latest_net_G.pth"
    torch.save(sd, path)

    model, meta = load_generator(path)
    c = model.config
    assert (c.downsampling, c.s2, c.lr_depth, c.lowres_only_last_channel) == (S, s2, depth, lr_instance)
    assert c.padding == padding
    assert "tamarott" in meta["converted_from"]

    x = F.one_hot(torch.randint(0, label_nc, (1, 64, 64)), label_nc).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        got = model(x)
        exact = copy.deepcopy(model).double()(x.double())
    want = authors_forward(double(sd), x.double(), S, s2, n_strided, depth, hr_in, channels, padding)
    assert want.std() > 0.05, "degenerate test: the authors' output is nearly constant"
    assert_matches_authors(exact, got, want)

    # convert to our format and round-trip: same output, loads as data
    ours = tmp_path / "generator.pt"
    convert_authors(path, ours)
    again, meta2 = load_generator(ours)
    assert again.config.padding == padding
    torch.testing.assert_close(again(x), got)
    assert meta2["source"] == "tamarott/ASAPNet"
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_authors(path, ours)


def test_reflect_padding_changes_the_function():
    """The same weights run with the other padding give another output (so the tests above can fail):
    the low-res grid is only 2x2 tiles here, every conv sees the border."""
    torch.manual_seed(0)
    S, channels = 32, [13 + 20, 64, 64, 64, 64, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    sd = authors_state(13, P, lr_width=8, max_width=16, depth=2, padding="reflect")
    x = F.one_hot(torch.randint(0, 13, (1, 64, 64)), 13).permute(0, 3, 1, 2).float()
    want = authors_forward(double(sd), x.double(), S, 16, 4, 2, 13, channels, "reflect")
    reflect = load_authors_state(sd).eval()
    zeros = asapnet(13, 64, 64, downsampling=S, lr_width=8, lr_max_width=16, lr_depth=2).eval()  # zero padding
    renamed = {k: v for k, v in zip(zeros.state_dict(), sd.values())}  # same order: conv, norm, ..., final
    zeros.load_state_dict(renamed, strict=True)
    with torch.no_grad():
        assert_matches_authors(copy.deepcopy(reflect).double()(x.double()), reflect(x), want)
        assert (zeros(x).double() - want).abs().max() > 0.05


@pytest.mark.parametrize("garble,match", [
    # no conv where either layout puts the first one
    ("shift", r"unknown layout .* expected the first 3x3 conv at 'lowres_stream\.model\.0\.0\.weight' \(zero "
              r"padding\) or 'lowres_stream\.model\.1\.0\.weight' \(their --reflection_pad\); found \d+ key\(s\): "
              r"lowres_stream\.model\.2\.\{0\.weight \(8, 13, 3, 3\)"),
    # zero-padded keys for the convs but the blocks in the reflect layout: no block is found, so the
    # key after the strided convs is not the 1x1 conv
    ("mixed", r"after the first 3x3 conv, 4 strided conv\(s\) \(at least 1 needed\) and 0 conv block\(s\) "
              r"\('lowres_stream\.model\.N\.conv_block\.0\.0\.weight'\), the final 1x1 conv "
              r"'lowres_stream\.model\.10\.weight' is missing; found: .*"
              r"lowres_stream\.model\.10\.\{conv_block\.1\.0\.weight \(16, 16, 3, 3\)"),
    # a conv block whose norm has another width
    ("shape", r"1 with another shape: lowres_stream\.model\.10\.conv_block\.0\.1\.weight \(7,\) \(expected \(16,\)\)"),
    # an extra tensor the model does not have
    ("extra", r"1 unexpected: lowres_stream\.model\.10\.conv_block\.0\.0\.bias \(16,\)"),
    # the first conv is not a 3x3 conv
    ("not_3x3", r"'lowres_stream\.model\.0\.0\.weight' should be a 3x3 conv weight \(out, in, 3, 3\), found \(8, 13\)"),
])
def test_unknown_layouts_get_a_checkpoint_error_naming_what_was_found(tmp_path, garble, match):
    channels = [13 + 20, 64, 64, 64, 64, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    sd = authors_state(13, P, lr_width=8, max_width=16, depth=2)
    if garble == "shift":  # every index + 2
        sd = OrderedDict((k.replace(f"model.{k.split('.')[2]}.", f"model.{int(k.split('.')[2]) + 2}.", 1), v)
                         for k, v in sd.items())
    elif garble == "mixed":
        sd = OrderedDict((k.replace("conv_block.0.", "conv_block.1."), v) for k, v in sd.items())
    elif garble == "shape":
        sd["lowres_stream.model.10.conv_block.0.1.weight"] = torch.ones(7)
    elif garble == "extra":
        sd["lowres_stream.model.10.conv_block.0.0.bias"] = torch.zeros(16)
    elif garble == "not_3x3":
        sd["lowres_stream.model.0.0.weight"] = torch.zeros(8, 13)
    path = tmp_path / "latest_net_G.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=match) as err:
        load_generator(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match=match):
        convert_authors(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_paper_config_recovered_from_full_size_authors_checkpoint():
    # facades 1024x1024 (their defaults): 13 labels, S = 64 -> MLP input 13 + 24 = 37
    P = (37 * 64 + 64) + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    c = config_from_authors_state(authors_state(13, P, empty=True))
    assert (c.num_classes, c.downsampling, c.lr_width, c.lr_max_width, c.lr_depth) == (13, 64, 64, 1024, 7)
    assert c.mlp_channels == [37, 64, 64, 64, 64, 3] and c.padding == "zeros"
    # facades 512x512 as their test script runs it (--reflection_pad): S = 32 -> 13 + 20 = 33
    P = (33 * 64 + 64) + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    c = config_from_authors_state(authors_state(13, P, empty=True, padding="reflect"))
    assert (c.downsampling, c.lr_max_width, c.lr_depth, c.padding) == (32, 1024, 7, "reflect")


def test_cityscapes_channels_default_and_dontcare_option():
    # their cityscapes options: 35 labels + the instance edge = 36 inputs (no --contain_dontcare_label);
    # lr_instance routes the edge to the low-res stream only -> HR sees 35, S = 32 at 512x1024
    P = (35 + 20) * 64 + 64 + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    c = config_from_authors_state(authors_state(36, P, empty=True), num_classes=35, instance_edge=True)
    assert (c.in_channels, c.downsampling, c.lowres_only_last_channel, c.hr_in_channels) == (36, 32, True, 35)
    assert not c.dontcare
    with pytest.raises(CheckpointError, match="takes 36 input channels, but num_classes=35 \\+ dontcare "
                                              "\\+ instance edge gives 37"):
        config_from_authors_state(authors_state(36, P, empty=True), num_classes=35, dontcare=True,
                                  instance_edge=True)
    # a model trained with --contain_dontcare_label: 37 inputs, HR sees 36
    P = (36 + 20) * 64 + 64 + 3 * (64 * 64 + 64) + (64 * 3 + 3)
    c = config_from_authors_state(authors_state(37, P, empty=True), num_classes=35, dontcare=True,
                                  instance_edge=True)
    assert (c.in_channels, c.downsampling, c.hr_in_channels) == (37, 32, 36)
    with pytest.raises(CheckpointError, match="gives 36"):
        config_from_authors_state(authors_state(37, P, empty=True), num_classes=35, instance_edge=True)


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
    (b"hello, I am a text file\n", "is damaged or not a torch checkpoint"),
    ("pickle", "holds pickled code"),
    ("yaml", r"is damaged or not a torch checkpoint \(not pickled tensors"),  # text a pickle reader half-parses
    ("tensors", "is not a generator checkpoint: expected"),
])
def test_files_that_are_not_generator_checkpoints_get_clear_errors(tmp_path, content, match):
    path = tmp_path / "thing.pt"
    if content == "pickle":  # a pickled object is never unpickled as code
        path.write_bytes(pickle.dumps(NotData()))
    elif content == "yaml":
        path.write_text("dataset: facades-256x256\ntrain:\n  steps: 3\n")
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
    # their --reflection_pad layout converts and says so
    torch.save(authors_state(13, P, lr_width=8, max_width=16, depth=1, padding="reflect"), tmp_path / "R.pth")
    assert main(["convert-authors", str(tmp_path / "R.pth"), str(tmp_path / "r.pt")]) == 0
    assert "reflect padding" in capsys.readouterr().out
    # an unknown layout: one error line naming the file and the keys, no traceback, nothing written
    sd = authors_state(13, P, lr_width=8, max_width=16, depth=1)
    torch.save({k: v for k, v in sd.items() if not k.startswith("lowres_stream.model.0.")},  # no first conv
               tmp_path / "bad.pth")
    assert main(["convert-authors", str(tmp_path / "bad.pth"), str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad.pth'}: unknown layout") and "Traceback" not in err
    assert "lowres_stream.model.2.{0.weight (8, 8, 3, 3)" in err and not (tmp_path / "bad.pt").exists()


class Armed:
    """Unpickling this runs a shell command that would create a marker file."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_an_armed_pickle_is_refused_as_code_without_running(tmp_path, how):
    """A checkpoint that would run a command when unpickled: refused by every loader (generator,
    convert, segmenter) with one message saying the file holds code, never suggesting
    weights_only=False; the command never runs (its marker file stays absent)."""
    from asap.models.segmenter import SegmenterCheckpointError, load_segmenter

    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"state_dict": Armed(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Armed(marker)))
    for load, error in [(load_generator, CheckpointError), (load_segmenter, SegmenterCheckpointError)]:
        with pytest.raises(error) as err:
            load(path)
        message = str(err.value)
        assert message.startswith(f"{path} holds pickled code") and "refused" in message
        assert "weights_only" not in message and "\n" not in message
    if how == "torch.save":
        assert "system" in message  # names what the file would have called
    assert not marker.exists()


def test_weights_that_do_not_match_their_config_are_a_checkpoint_error(tmp_path):
    """A checkpoint of ours whose stored class count disagrees with its weights (edited, or written by
    other code): one CheckpointError naming the file, the class count and the first mismatched tensor
    with both shapes, not load_state_dict's multi-line `size mismatch`; the CLI prints it as one line."""
    from asap.cli import main

    model = ASAPNetGenerator(ASAPNetConfig(num_classes=12, downsampling=8, lr_width=8, lr_max_width=16, lr_depth=1))
    path = save_generator(tmp_path / "g.pt", model)
    blob = torch.load(path, weights_only=True)
    blob["config"]["num_classes"] = 13
    torch.save(blob, path)
    first = model.state_dict()["lowres_stream.model.0.0.weight"].shape  # (8, 12, 3, 3): 12 label channels
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the weights do not match the asapnet config") and "num_classes=13" in message
    assert f"lowres_stream.model.0.0.weight {tuple(first)} (its config builds (8, 13, 3, 3))" in message
    assert "size mismatch" not in message
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(labels / "a.png")
    assert main(["translate", str(path), str(labels), "--out", str(tmp_path / "out")]) == 2
