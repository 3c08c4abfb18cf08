"""`asap translate` / asap.infer.translate: a tiny saved generator, label PNGs written here, outputs
compared with the generator's own forward mapped to uint8 by hand; the error cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asap.cli import main as cli_main
from asap.infer import TranslateError, translate
from asap.models.asapnet import asapnet
from asap.models.checkpoint import save_generator

NUM_CLASSES = 4


def tiny_generator(**overrides):
    torch.manual_seed(0)
    model = asapnet(NUM_CLASSES, 32, 64, downsampling=16, lr_width=8, lr_max_width=16, lr_depth=1, **overrides)
    with torch.no_grad():  # the default init is tiny: spread the per-tile MLPs so outputs vary
        last = model.lowres_stream.model[-1]
        last.bias.normal_(0, 0.3)
        last.weight.normal_(0, 0.3)
    return model.eval()


@pytest.fixture()
def checkpoint(tmp_path):
    model = tiny_generator()
    return save_generator(tmp_path / "generator.pt", model), model


def write_palette_png(path, labels):
    """Mode P with colours unrelated to the indices: the reader must take indices, not colours."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
    img.putpalette(palette.flatten().tolist())
    img.save(path)


def expected_image(model, labels: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = model(torch.from_numpy(labels.astype(np.int64))[None])[0]  # (3, H, W) in [-1, 1]
    return np.clip(np.rint((y.numpy().transpose(1, 2, 0) + 1) * 255 / 2), 0, 255).astype(np.uint8)


def assert_same_image(got: np.ndarray, want: np.ndarray):
    diff = got.astype(int) - want.astype(int)
    assert np.abs(diff).max() <= 1                      # float reordering may flip a .5 rounding
    assert (diff != 0).mean() < 1e-3
    assert want.std() > 5, "degenerate test: the generator's output is nearly constant"


def test_translate_folder_and_file(checkpoint, tmp_path):
    path, model = checkpoint
    rng = np.random.default_rng(0)
    a = rng.integers(0, NUM_CLASSES, (32, 64))
    b = rng.integers(0, NUM_CLASSES, (64, 32))
    folder = tmp_path / "labels"
    folder.mkdir()
    write_palette_png(folder / "a.png", a)
    Image.fromarray(b.astype(np.uint8), mode="L").save(tmp_path / "b.png")
    written = translate(path, [folder, tmp_path / "b.png"], tmp_path / "out", device="cpu")
    assert [p.name for p in written] == ["a.png", "b.png"]
    for name, labels in (("a.png", a), ("b.png", b)):
        img = Image.open(tmp_path / "out" / name)
        assert img.mode == "RGB" and img.size == (labels.shape[1], labels.shape[0])
        assert_same_image(np.asarray(img), expected_image(model, labels))


def test_cli_never_overwrites_unless_asked(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    labels = np.random.default_rng(2).integers(0, NUM_CLASSES, (32, 32))
    write_palette_png(tmp_path / "x.png", labels)
    out = tmp_path / "out"
    assert cli_main(["translate", str(path), str(tmp_path / "x.png"), "--out", str(out), "--device", "cpu"]) == 0
    first = (out / "x.png").read_bytes()
    (out / "x.png").write_bytes(b"keep me")
    assert cli_main(["translate", str(path), str(tmp_path / "x.png"), "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err and (out / "x.png").read_bytes() == b"keep me"
    assert cli_main(["translate", str(path), str(tmp_path / "x.png"), "--out", str(out), "--overwrite"]) == 0
    assert (out / "x.png").read_bytes() == first
    assert_same_image(np.asarray(Image.open(out / "x.png")), expected_image(model, labels))


def test_unknown_labels_name_file_and_values_and_write_nothing(checkpoint, tmp_path):
    path, _ = checkpoint
    good = np.zeros((32, 32), dtype=np.uint8)
    bad = good.copy()
    bad[0, :3] = [7, 9, 7]
    write_palette_png(tmp_path / "a_good.png", good)
    write_palette_png(tmp_path / "b_bad.png", bad)
    with pytest.raises(TranslateError, match=r"b_bad\.png: label values 7, 9 .*4 classes, allowed 0\.\.3"):
        translate(path, [tmp_path], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "a_good.png").exists()


def test_size_that_does_not_fit_S_names_a_size_that_does(checkpoint, tmp_path):
    path, _ = checkpoint
    write_palette_png(tmp_path / "odd.png", np.zeros((40, 70), dtype=np.uint8))
    with pytest.raises(TranslateError, match=r"odd\.png: size 40x70 .*S=16.*32x64 \(crop\) or 48x80 \(pad\)"):
        translate(path, [tmp_path / "odd.png"], tmp_path / "out", device="cpu")


def test_colour_images_and_missing_inputs_are_rejected(checkpoint, tmp_path):
    path, _ = checkpoint
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(TranslateError, match=r"rgb\.png is a RGB image"):
        translate(path, [tmp_path / "rgb.png"], tmp_path / "out", device="cpu")
    with pytest.raises(TranslateError, match="does not exist"):
        translate(path, [tmp_path / "nope.png"], tmp_path / "out", device="cpu")


def test_dontcare_label_is_accepted_when_the_generator_has_it(tmp_path):
    model = tiny_generator(dontcare=True)
    path = save_generator(tmp_path / "g.pt", model)
    labels = np.random.default_rng(3).integers(0, NUM_CLASSES, (32, 32))
    labels[:4, :4] = 255
    write_palette_png(tmp_path / "d.png", labels)
    translate(path, tmp_path / "d.png", tmp_path / "out", device="cpu")
    assert_same_image(np.asarray(Image.open(tmp_path / "out" / "d.png")), expected_image(model, labels))


def test_instance_edge_generator_reads_instance_maps(tmp_path):
    from asap.models.inputs import instance_edges

    model = tiny_generator(instance_edge=True)
    path = save_generator(tmp_path / "g.pt", model)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, NUM_CLASSES, (32, 32))
    inst = np.repeat(np.repeat(rng.integers(0, 1000, (4, 4)), 8, 0), 8, 1).astype(np.uint16)  # 8x8 blobs
    (tmp_path / "labels").mkdir()
    (tmp_path / "inst").mkdir()
    write_palette_png(tmp_path / "labels" / "c.png", labels)
    Image.fromarray(inst).save(tmp_path / "inst" / "c.png")  # 16-bit ids, as Cityscapes instanceIds
    with pytest.raises(TranslateError, match="--instances"):
        translate(path, tmp_path / "labels", tmp_path / "out", device="cpu")
    translate(path, tmp_path / "labels", tmp_path / "out", device="cpu", instances=tmp_path / "inst")
    with torch.no_grad():
        edges = instance_edges(torch.from_numpy(inst.astype(np.int64))[None])
        y = model(torch.from_numpy(labels)[None], edges)[0]
    want = np.clip(np.rint((y.numpy().transpose(1, 2, 0) + 1) * 127.5), 0, 255).astype(np.uint8)
    assert_same_image(np.asarray(Image.open(tmp_path / "out" / "c.png")), want)
