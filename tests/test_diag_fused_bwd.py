"""benchmarks/diag_fused_bwd.py, the one-call device diagnostic of the fused MLP, run on the CPU in
Triton's interpreter: its checks must run and say where a gradient error sits. The oracle is the
script's own float64 autograd through the reference MLP, itself independent of the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def diag(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.diag_fused_bwd", "--out", str(out), "--jobs", "2",
                           "--checks", "tiny_S2_fp32_w4,tiny_S2_bf16", "--deadline-s", "300"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "diag-fused-bwd.json").read_text()), proc.stdout


def test_checks_run_and_record_where_they_ran(diag):
    record, stdout = diag
    assert record["schema"] == "asap-diag-fused-bwd/1"
    assert record["environment"]["device"] == "cpu" and record["environment"]["torch"]
    assert set(record["checks"]) == {"tiny_S2_fp32_w4", "tiny_S2_bf16"}
    assert stdout.count("[diag] ") == 2


def test_fp32_gradient_matches_float64_and_the_breakdown_covers_every_parameter(diag):
    check = diag[0]["checks"]["tiny_S2_fp32_w4"]
    assert "error" not in check, check
    assert check["kernel_vs_f64"]["max"] < 1e-5 and check["ref32_vs_f64"]["max"] < 1e-5
    # 5 layers; layer 1's rows: 3 classes + 4 encoding channels of a 2x2 tile
    assert len(check["per_layer"]) == 5 and len(check["layer1_rows_max"]) == 3 + 4
    assert check["tiles"] == 8 and check["entries_over_1e-4"] == 0 and check["tiles_over_1e-4"] == 0
    assert max(max(layer["bias_max"], layer["weight_max"]) for layer in check["per_layer"]) \
        == pytest.approx(check["kernel_vs_f64"]["max"])


def test_bf16_gradient_is_within_what_torch_loses_in_bf16(diag):
    check = diag[0]["checks"]["tiny_S2_bf16"]
    assert "error" not in check, check
    # rounding, not a wrong term: the same order as autograd through the reference in bf16
    assert check["kernel_vs_f64"]["max"] < 2 * check["torch_low_vs_f64"]["max"] + 1e-3
    assert check["kernel_vs_f64"]["max"] > 1e-4  # and it did run in bf16
