"""The training benchmark's two steps compute the same thing, and the command writes its JSON."""

import json

import torch

from asap.models.pixelwise import pixelwise_mlp
from benchmarks.training import authors_style_mlp, main


def test_authors_style_mlp_equals_ours():
    torch.manual_seed(0)
    S, channels = 8, [5 + 12, 16, 16, 3]
    P = sum(i * o + o for i, o in zip(channels[:-1], channels[1:]))
    x, params = torch.randn(2, 5, 16, 32), torch.randn(2, P, 2, 4) * 0.3
    torch.testing.assert_close(authors_style_mlp(x, params, channels, S), pixelwise_mlp(x, params, channels, S),
                               atol=1e-5, rtol=1e-5)


def test_training_benchmark_writes_json(tmp_path):
    out = tmp_path / "training.json"
    main(["--sizes", "64x64", "--iters", "1", "--warmup", "0", "--lr-max-width", "16", "--ndf", "8",
          "--perceptual", "off", "--out", str(out)])
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert row["size"] == "64x64" and row["max_abs_output_diff"] < 1e-5
    assert row["ours"]["images_per_s"] > 0 and row["authors_way"]["images_per_s"] > 0
