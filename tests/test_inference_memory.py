"""CPU memory of the reference pixelwise MLP: it keeps the parameters at grid resolution, so its peak
allocation follows the activations (B * H * W * 64 floats) and the grid, never the H * W * P of
nearest-upsampled parameters (the naive upsample-then-multiply reading of Eq. 2).

The measure is the CPU allocator's own accounting as torch.profiler records it (deterministic); the
naive implementation is measured too, to show the measure sees a full-resolution parameter tensor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is not an installed package
from benchmarks.inference import main as benchmark_main  # noqa: E402
from benchmarks.inference import naive_pixelwise_mlp, peak_cpu_bytes  # noqa: E402

from asap.models.pixelwise import mlp_channels, num_mlp_params, pixelwise_mlp  # noqa: E402


def case(H, W, S=16, C=4, B=1):
    torch.manual_seed(0)
    channels = mlp_channels(C + 16, 64, 5, 3)  # S = 16: 4 log2 S = 16 encoding channels
    P = num_mlp_params(channels)
    x = torch.rand(B, C, H, W)
    params = torch.randn(B, P, H // S, W // S) * 0.05
    return x, params, channels, S, P


def test_reference_peak_follows_activations_not_full_resolution_params():
    x, params, channels, S, P = case(32, 48)
    B, _, H, W = x.shape
    full_res_params = B * P * H * W * 4
    activation = B * H * W * 64 * 4                       # one 64-wide fp32 layer output
    grid = params.numel() * 4

    naive = peak_cpu_bytes(lambda: naive_pixelwise_mlp(x, params, channels, S))
    reference = peak_cpu_bytes(lambda: pixelwise_mlp(x, params, channels, S))
    # sanity: the measure sees the naive version's (B, P, H, W) tensor (86 MB here)
    assert naive >= full_res_params
    # the reference: the grid-resolution parameters plus a few live activations, ~100x less
    assert reference <= 2 * grid + 6 * activation, (reference, grid, activation)
    assert reference * 20 < full_res_params


def test_reference_peak_grows_with_pixels_like_the_activations():
    """4x the pixels at the same S (4x the grid too): the peak grows ~4x, as both do; P is fixed, so a
    tensor of H * W * P would have added ~16x the activation growth instead."""
    small = case(32, 32)
    large = case(64, 64)
    peak_small = peak_cpu_bytes(lambda: pixelwise_mlp(*small[:4]))
    peak_large = peak_cpu_bytes(lambda: pixelwise_mlp(*large[:4]))
    P = large[4]
    growth = peak_large - peak_small
    assert 2.5 * peak_small <= peak_large <= 5 * peak_small, (peak_small, peak_large)
    assert growth < (64 * 64 - 32 * 32) * P * 4 / 20


def test_naive_baseline_computes_the_same_function():
    """The benchmark's naive baseline must be a fair one: same outputs as the reference."""
    x, params, channels, S, _ = case(16, 32)
    torch.testing.assert_close(naive_pixelwise_mlp(x, params, channels, S), pixelwise_mlp(x, params, channels, S),
                               atol=1e-5, rtol=1e-5)


def test_benchmark_command_writes_both_paths(tmp_path):
    """`python -m benchmarks.inference` end to end on a tiny CPU setting: one row per path, the
    device recorded, the memory comparison present."""
    out = tmp_path / "inference-cpu.json"
    assert benchmark_main(["--out", str(out), "--device", "cpu", "--sizes", "32x64", "--iters", "2",
                           "--batch", "2", "--lr-max-width", "16", "--num-classes", "5"]) == 0
    result = json.loads(out.read_text())
    assert result["device"]["type"] == "cpu"
    rows = {(r["path"], r["precision"]): r for r in result["rows"]}
    assert set(rows) == {("reference", "fp32"), ("fast", "fp32")}
    for row in rows.values():
        assert row["size"] == "32x64" and row["batch1_ms"]["n"] == 2 and row["batch2_images_per_s"] > 0
    assert rows[("fast", "fp32")]["max_abs_diff_vs_reference"] < 1e-5
    memory = result["memory_cpu"][0]
    assert memory["naive_peak_bytes"] >= memory["full_res_params_bytes"] > 10 * memory["reference_peak_bytes"]
