"""benchmarks/edit_locality.py against an independent computation on small random generators: the band
and far-region means recomputed with numpy slicing and a per-pixel distance loop, the per-pixel MLP's
zero change outside the band, and clear errors for a bad band or class."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from asap.models.asapnet import asapnet
from asap.models.baselines import SPADEConfig, SPADEGenerator
from asap.models.checkpoint import save_generator
from benchmarks import edit_locality

H = W = 64
CLASSES = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("locality")
    rng = np.random.default_rng(0)
    labels = root / "labels"
    labels.mkdir()
    maps = []
    for i in range(3):  # blocky maps, as label maps are
        m = np.kron(rng.integers(0, CLASSES, (8, 8)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        Image.fromarray(m).save(labels / f"m{i}.png")
        maps.append(m.astype(np.int64))
    torch.manual_seed(0)
    g = asapnet(CLASSES, H, W, downsampling=16, lr_width=8, lr_max_width=16, lr_depth=1)
    g.reset_parameters(gain=1.0)  # a random function that moves visibly, not the near-constant init
    asap_path = save_generator(root / "asap.pt", g, {"steps": 0})
    spade = SPADEGenerator(SPADEConfig(num_classes=CLASSES, width_mult=0.0625))
    spade_path = save_generator(root / "spade.pt", spade, {"steps": 0})
    return {"root": root, "labels": labels, "maps": maps, "asap": asap_path, "spade": spade_path, "g": g}


def naive(model, maps, cls, top, bottom, left, right, far):
    """The two means with explicit slicing and a per-pixel distance loop."""
    far_mask = np.zeros((H, W), dtype=bool)
    for i in range(H):
        for j in range(W):
            di = top - i if i < top else (i - (bottom - 1) if i >= bottom else 0)
            dj = left - j if j < left else (j - (right - 1) if j >= right else 0)
            far_mask[i, j] = max(di, dj) >= far
    inside, outside = [], []
    with torch.no_grad():
        for m in maps:
            edited = m.copy()
            edited[top:bottom, left:right] = cls
            a = model(torch.from_numpy(m)[None]).numpy()[0]
            b = model(torch.from_numpy(edited)[None]).numpy()[0]
            d = np.abs(a - b).mean(axis=0) * 127.5
            inside.append(d[top:bottom, left:right].mean())
            outside.append(d[far_mask].mean())
    return float(np.mean(inside)), float(np.mean(outside))


def test_means_match_a_naive_computation_and_the_mlp_is_per_pixel(setup, capsys):
    out = setup["root"] / "result.json"
    rc = edit_locality.main([str(setup["asap"]), str(setup["spade"]), "--labels", str(setup["labels"]),
                             "--class", "3", "--band", "16:24,8:56", "--far", "16", "--out", str(out)])
    assert rc == 0
    assert torch.is_grad_enabled()  # the CLI leaves the process as it found it (other tests train after it)
    result = json.loads(out.read_text())
    assert result["band"] == [16, 24, 8, 56] and result["maps"] == 3
    asap_row, spade_row = result["rows"]
    inside, far = naive(setup["g"].eval(), setup["maps"], 3, 16, 24, 8, 56, 16)
    assert asap_row["inside"] == pytest.approx(inside, rel=1e-5) and asap_row["far"] == pytest.approx(far, rel=1e-5)
    assert asap_row["labels_only_far"] == 0.0  # the MLP reads one pixel's labels: nothing moves outside
    assert asap_row["labels_only_inside"] > 0 and asap_row["params_only_far"] > 0
    # with both streams' changes applied the far change is the parameters' alone
    assert asap_row["params_only_far"] == pytest.approx(asap_row["far"], rel=1e-5)
    assert "labels_only_inside" not in spade_row and spade_row["inside"] > 0
    assert "labels only" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--band", "16:80,0:8"], ["--band 16:80,0:8", "64x64"]),
    (["--band", "a:b"], ["top:bottom,left:right", "'a:b'"]),
    (["--class", "7"], ["--class 7", "5 classes"]),
])
def test_bad_band_or_class_is_one_line(setup, capsys, args, words):
    rc = edit_locality.main([str(setup["asap"]), "--labels", str(setup["labels"]), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and all(w in err for w in words), err
