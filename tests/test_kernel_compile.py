"""benchmarks/kernel_compile.py builds the fused kernels for Hopper (sm_90) on this GPU-less machine with
the pinned triton: the PTX it produced is read back for its target, the SASS binary must be there, and
a change of the kernels' constexpr parameters is reported by name instead of compiling something else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from project_helpers import REPO

pytest.importorskip("triton")


def test_forward_and_backward_variants_compile_for_sm90(tmp_path):
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # a real compile, not a cache hit
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_compile", "--only", "C5 S8", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = {r["name"]: r for r in record["rows"]}
    # fp32 / bf16 / fp16 of the 5-class S=8 MLP, and the one without the positional encoding; each
    # forward and backward (the backward's fp32 dots as tf32x3, bf16 / fp16 ones on TF32 tensor cores);
    # two of the stashing backward; and bf16's native 16-bit dots
    names = {"index fp32 C5 S8", "index bf16 C5 S8", "index fp16 C5 S8", "index fp32 C5 S8 no-encoding"}
    stash = {"mlp-grad-stash index fp32 C5 S8", "mlp-grad-stash dense x fp32 bf16 C5 S8"}
    native = {"mlp index bf16 dot16 native C5 S8", "mlp-grad index bf16 dot16 native C5 S8"}  # phase 1's diagnostics
    assert set(rows) == {f"mlp {n}" for n in names} | {f"mlp-grad {n}" for n in names} | stash | native
    for row in rows.values():
        assert row["ok"] and row["ptx_target"].startswith("sm_90") and row["cubin_bytes"] > 1000, row
        # the register report, where triton's cuobjdump is there (it ships in the NVIDIA backend)
        assert "registers" not in row or 0 < row["registers"] <= 255
    assert "12 compiled, 0 failed" in done.stdout


def test_a_changed_constexpr_set_is_named():
    from benchmarks.kernel_compile import _signature

    fake = SimpleNamespace(__name__="_k", arg_names=["x_ptr", "n", "A", "B"],
                           params=[SimpleNamespace(name=n, is_constexpr=n in ("A", "B")) for n in ("x_ptr", "n", "A", "B")])
    assert _signature(fake, {"x_ptr": "*fp32"}, {"A": 1, "B": 2}) == {"x_ptr": "*fp32", "n": "i32",
                                                                      "A": "constexpr", "B": "constexpr"}
    with pytest.raises(SystemExit) as err:
        _signature(fake, {"x_ptr": "*fp32"}, {"A": 1, "C": 3})
    assert "['B']" in str(err.value) and "['C']" in str(err.value) and "_k" in str(err.value)


def test_norm_kernels_compile_for_sm90_without_spills(tmp_path):
    """The fast path's InstanceNorm + ReLU kernels (asap/models/lowres_fused.py), every variant the
    campaign builds; they are small: 32 B of stack at most (the 256-chunk stats kernel has 8)."""
    from benchmarks.kernel_compile import campaign_variants

    out = tmp_path / "norm.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_compile", "--only", "norm-", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    expected = {v.name for v in campaign_variants() if v.name.startswith("norm-")}
    assert {r["name"] for r in rows} == expected and len(expected) >= 12
    assert {r["name"].split()[0] for r in rows} == {"norm-stats", "norm-apply"}
    for row in rows:
        assert row["ok"] and row["ptx_target"].startswith("sm_90"), row
        assert "stack_bytes" not in row or row["stack_bytes"] <= 32, row
