"""The GPU campaign (benchmarks/gpu_campaign.py) works before a GPU is lent: `pack` writes what the
device call carries, the smoke mode runs all four phases on this CPU (the Triton kernels in the
interpreter), and `score` scores the images it brings back.

Each phase file is checked against facts computed here, not by the campaign: the test split's size and
stems from the prepared folder, image shapes from decoding the .npz, the gpu-marked test count from
the test module, speedups from the timings, a FID recomputed from the returned images, the commit
from git, file sizes from the file system.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project_helpers import REPO, SMOKE_BUDGET_S  # the session fixtures `carry` and `smoke`: tests/conftest.py

from benchmarks.campaign import common
from benchmarks.campaign.common import FORBIDDEN_MODULES, RESULT_FILE_LIMIT, TRAVEL_LIMIT, Clock, commit_info


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# pack: what travels
# ----------------------------------------------------------------------------------------------

def test_pack_carries_train_pairs_test_labels_and_the_trunk(carry, facades64):
    info = json.loads((facades64 / "dataset.json").read_text())
    packed = carry / "facades-64x64"
    for sub, split in (("train/images", "train"), ("train/labels", "train"), ("test/labels", "test")):
        src = sorted((facades64 / sub).glob("*.png"))
        dst = sorted((packed / sub).glob("*.png"))
        assert len(dst) == info["splits"][split] == len(src)
        assert [p.name for p in dst] == [p.name for p in src]
        assert all(sha1(a) == sha1(b) for a, b in zip(src[::37], dst[::37]))  # byte-identical copies
    assert not (packed / "test" / "images").exists()  # the test photos stay on the CPU side (FID)
    assert not (packed / "manifest.csv").exists()      # so asap.data.prepared needs no pandas there

    from asap.weights import load_vgg_trunk
    trunk = load_vgg_trunk(carry / "hed-vgg16-trunk.pt")
    assert trunk.name == "hed-vgg16" and (carry / "hed-vgg16-trunk.pt").stat().st_size < 20.1e6

    report = json.loads((carry / "pack.json").read_text())
    on_disk = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file() and p.name != "pack.json")
    assert abs(report["carry_bytes"] - on_disk) < 4096
    assert report["travel_bytes"] == report["working_tree_bytes"] + report["carry_bytes"] <= TRAVEL_LIMIT
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert json.loads((carry / "commit.json").read_text())["commit"] == head


def test_dot_carry_is_ignored_by_git():
    assert subprocess.run(["git", "check-ignore", "-q", ".carry/"], cwd=REPO).returncode == 0


# ----------------------------------------------------------------------------------------------
# The smoke run
# ----------------------------------------------------------------------------------------------

def test_every_phase_file_records_device_versions_commit_and_imports(smoke, carry):
    packed_commit = json.loads((carry / "commit.json").read_text())["commit"]
    for n, record in smoke["phases"].items():
        assert record["complete"] and "error" not in record, (n, record.get("error"))
        assert record["phase"] == n and record["smoke"] is True
        env = record["env"]
        assert env["device"]["slug"] == "cpu" and env["versions"]["torch"] == torch.__version__
        assert env["commit"]["commit"] == packed_commit and env["commit"]["source"].startswith("file")
        imported = set(record["imported_modules"])
        assert not imported & {"ray", "mlflow", "dvc"}, imported & {"ray", "mlflow", "dvc"}
        assert record["forbidden_modules_imported"] == [] and not imported & set(FORBIDDEN_MODULES)
        assert {"torch", "asap", "benchmarks"} <= imported
    # what the device call brings back: at most 8 files (one kept for the log), 16 MB each, no folders
    entries = list(smoke["out"].iterdir())
    assert all(p.is_file() for p in entries) and len(entries) <= 7
    assert all(p.stat().st_size <= RESULT_FILE_LIMIT for p in entries)
    assert smoke["phases"][4]["started_s"] + smoke["phases"][4]["seconds"] < smoke["wall_s"]


def test_phase1_runs_the_gpu_tests_and_the_interpreter_cases(smoke):
    from benchmarks.campaign.correctness import load_test_module

    cases = load_test_module()
    result = smoke["phases"][1]["result"]
    junit = result["pytest"]["junit"]
    # every gpu-marked test was run: as many as pytest itself collects with -m gpu
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                                "tests/test_pixelwise_fused.py", "tests/test_graphed_step.py",
                                "tests/test_channels_last.py"], cwd=REPO,
                               capture_output=True, text=True)
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert junit["total"] == len(ids) >= len(cases.CASES) + len(cases.GPU_ONLY_CASES) + 1
    assert sum(i.startswith("tests/test_graphed_step.py::test_graphed_step") for i in ids) >= 5  # the graph's too
    assert sum(i.startswith("tests/test_channels_last.py::") for i in ids) == 2  # the VGG channels-last, fp32 and bf16
    assert junit["skipped"] == junit["total"] and result["pytest"]["returncode"] == 0  # no CUDA here
    # with pytest-xdist installed (the test extra; the GPU machine has it) the tests ran in 2 workers
    workers = 2 if importlib.util.find_spec("xdist") else 0
    assert result["pytest"]["workers"] == workers and ("-n 2" in result["pytest"]["command"]) == bool(workers)
    if workers:
        assert "[gw1]" in result["pytest"]["output_tail"]
    table = result["error_table"]["cases"]
    assert table and set(table) <= set(cases.CASES)
    for name, case in table.items():
        assert case["ok"] and case["err"] <= case["tol"][0], (name, case)


def test_phase1_gradient_cases_decide_whether_asapnet_trains_through_the_kernel(smoke):
    from benchmarks.campaign.cli import fused_training_after

    phase1 = smoke["phases"][1]
    assert "grad_index_S8_bf16" in phase1["result"]["error_table"]["cases"]  # the backward ran in the smoke
    assert fused_training_after(phase1)["env"] == "auto"
    broken = json.loads(json.dumps(phase1))
    broken["result"]["error_table"]["cases"]["grad_index_S8_bf16"]["ok"] = False
    gate = fused_training_after(broken)
    assert gate["env"] == "0" and "grad_index_S8_bf16" in gate["why"]
    assert fused_training_after(None)["why"].startswith("unverified")
    assert fused_training_after(broken, preset="1") == {"fused": "1", "env": "1",
                                                         "why": "ASAP_FUSED_MLP set by the caller"}


def test_training_gates_read_the_checks_of_their_precision_and_not_the_diagnostics(smoke):
    """What the H200 showed: the fp32 backward wrong where the bf16 one may be right (phase 4 trains in
    bf16), and forms that are not the defaults (16-bit dots as such, read-add-write) failing: a
    failure counts against the precision it ran in, and a diagnostic's against nothing."""
    from benchmarks.campaign.cli import DIAGNOSTIC_SUFFIXES, fused_inference_after, fused_training_after
    from benchmarks.campaign.correctness import case_order, load_test_module

    phase1 = json.loads(json.dumps(smoke["phases"][1]))
    tests = phase1["result"]["pytest"]["junit"]["tests"]
    tests.append({"name": "test_kernel_matches_reference_on_gpu[grad_train_256_S16_fp32]", "outcome": "failed"})
    bf16, fp32, either = (fused_training_after(phase1, precision=p) for p in ("bf16", "fp32", None))
    assert bf16["env"] == "auto" and "bf16 forward and gradient checks passed" in bf16["why"]
    assert fp32["env"] == either["env"] == "0" and "grad_train_256_S16_fp32" in fp32["why"]
    # diagnostics fail without turning anything off
    clean = json.loads(json.dumps(smoke["phases"][1]))
    clean["result"]["pytest"]["junit"]["tests"] += [
        {"name": f"test_kernel_matches_reference_on_gpu[{n}]", "outcome": "failed"}
        for n in ("index_S8_bf16_native", "grad_train_256_S16_fp32_rmw", "grad_tiny_tile_S2_rmw")]
    assert fused_inference_after(clean)["env"] == "auto"
    assert all(fused_training_after(clean, precision=p)["env"] == "auto" for p in ("bf16", "fp32", None))
    # the error table runs the default path's cases first, the diagnostics last
    module = load_test_module()
    assert DIAGNOSTIC_SUFFIXES == module.DIAGNOSTIC_SUFFIXES  # the gates and the test file name them alike
    order = case_order(module, None)
    first_diagnostic = next(i for i, n in enumerate(order) if n.endswith(module.DIAGNOSTIC_SUFFIXES))
    assert order[first_diagnostic:] and all(n.endswith(module.DIAGNOSTIC_SUFFIXES) for n in order[first_diagnostic:])
    assert {"index_S8_bf16_native", "grad_tiny_tile_S2_rmw"} <= set(order[first_diagnostic:])


def test_phases_2_and_4_run_the_norm_kernels_only_where_phase1_checked_them(smoke):
    from benchmarks.campaign.cli import fused_norm_after

    phase1 = smoke["phases"][1]
    assert phase1["result"]["error_table"]["cases"]["norm_chunks_bf16"]["ok"]  # the norm kernels ran in the smoke
    gate = fused_norm_after(phase1)
    assert gate["env"] == "auto" and "1 norm checks passed" in gate["why"]
    broken = json.loads(json.dumps(phase1))
    broken["result"]["error_table"]["cases"]["norm_chunks_bf16"]["ok"] = False
    assert fused_norm_after(broken) == {"fused": False, "env": "0",
                                        "why": "phase 1's norm checks failed here: ['norm_chunks_bf16']"}
    failed_test = json.loads(json.dumps(phase1))  # a failed pytest case at phase 2's shapes counts too
    failed_test["result"]["pytest"]["junit"]["tests"].append(
        {"name": "test_norm_kernels_at_the_campaign_shapes[1024x1024]", "outcome": "failed"})
    assert "test_norm_kernels_at_the_campaign_shapes[1024x1024]" in fused_norm_after(failed_test)["why"]
    assert fused_norm_after(None)["why"].startswith("unverified")
    assert fused_norm_after(broken, preset="1")["env"] == "1"


def test_the_split_k_form_is_gated_by_its_own_tests_and_gates_nothing_else(smoke):
    """A failed split-K test (the wide convs split by tap) takes that form out of phases 2 and 4 and
    leaves the fused MLP and the norm kernels as they were."""
    from benchmarks.campaign.cli import fused_inference_after, fused_norm_after, split_k_after

    phase1 = json.loads(json.dumps(smoke["phases"][1]))
    assert split_k_after(phase1)["why"].startswith("unverified")  # skipped on a CPU: checked nothing
    tests = phase1["result"]["pytest"]["junit"]["tests"]
    tests.append({"name": "test_split_k_conv_on_gpu[dtype0]", "outcome": "passed"})
    assert split_k_after(phase1) == {"fused": "auto", "env": "auto", "why": "phase 1's 1 split-K checks passed"}
    tests.append({"name": "test_split_k_fast_path_in_a_cuda_graph", "outcome": "failed"})
    assert split_k_after(phase1) == {"fused": False, "env": "0", "why": "phase 1's split-K checks failed here: "
                                                                        "['test_split_k_fast_path_in_a_cuda_graph']"}
    assert fused_inference_after(phase1)["env"] == fused_norm_after(phase1)["env"] == "auto"
    assert split_k_after(phase1, preset="1")["env"] == "1"


def test_phases_3_and_4_graph_the_training_step_only_where_phase1_passed_its_tests(smoke):
    """The graphed-step tests (tests/test_graphed_step.py) skip on a CPU: unverified is off. Passed on
    the device, they turn it on; one failure turns it off, and no kernel gate reads them."""
    from benchmarks.campaign.cli import cuda_graph_after, fused_inference_after, fused_training_after

    phase1 = smoke["phases"][1]
    names = [t["name"] for t in phase1["result"]["pytest"]["junit"]["tests"]]
    graphed = sum(n.startswith("test_graphed_step") for n in names)
    assert graphed >= 5  # collected, skipped here (no CUDA)
    gate = cuda_graph_after(phase1)
    assert gate["cuda_graph"] is False and gate["why"].startswith("unverified")
    passed = json.loads(json.dumps(phase1))
    for t in passed["result"]["pytest"]["junit"]["tests"]:
        if t["name"].startswith("test_graphed_step"):
            t["outcome"] = "passed"
    assert cuda_graph_after(passed) == {"cuda_graph": True, "env": None,
                                        "why": f"phase 1's {graphed} graphed-step tests passed"}
    failed = json.loads(json.dumps(passed))
    failed["result"]["pytest"]["junit"]["tests"].append(
        {"name": "test_graphed_step_matches_eager[bf16]", "outcome": "failed"})
    gate = cuda_graph_after(failed)
    assert gate["cuda_graph"] is False and "test_graphed_step_matches_eager[bf16]" in gate["why"]
    # a failed graph test is not a kernel check
    assert fused_inference_after(failed)["env"] == fused_training_after(failed)["env"] == "auto"
    assert cuda_graph_after(failed, preset="1")["cuda_graph"] is True
    assert cuda_graph_after(passed, preset="0")["cuda_graph"] is False


def test_phase3_gets_more_time_in_a_call_without_phase4():
    from benchmarks.campaign.settings import real_settings

    settings = real_settings()
    assert settings.cap(3, (1, 2, 3, 4)) == 60.0 and settings.cap(3, (1, 2, 3)) == 130.0
    assert settings.cap(2, (1, 2, 3)) == settings.cap(2, (1, 2, 3, 4)) == 120.0


def test_phase2_times_the_baselines_in_bf16_at_every_size_before_fp32():
    """The first H200 run spent 57 s autotuning SPADE's fp32 convs at 512x1024 and skipped 19 baseline
    rows, bf16 ones among them: bf16 rows come first now."""
    from benchmarks.campaign.inference import baseline_order
    from benchmarks.campaign.settings import InferenceSettings

    order = baseline_order(InferenceSettings(sizes=("256x512", "1024x1024"), precisions=("fp32", "bf16")))
    assert order == [("bf16", "256x512"), ("bf16", "1024x1024"), ("fp32", "256x512"), ("fp32", "1024x1024")]


def test_a_fast_path_that_draws_other_images_is_not_timed_as_best():
    """latency() on a tiny ASAP-Net (CPU): the fast path counts for best_ms while its images are the
    reference's; against reference images it does not reproduce (inverted), only the reference paths do."""
    import numpy as np

    from asap.models.asapnet import asapnet
    from benchmarks.campaign.quality import MAX_FAST_LEVEL_DIFF, latency, to_uint8
    from benchmarks.campaign.settings import QualitySettings

    torch.manual_seed(0)
    model = asapnet(4, 32, 32, downsampling=16, lr_width=8, lr_max_width=16, lr_depth=1).eval()
    with torch.no_grad():
        model.lowres_stream.model[-1].bias.normal_(0, 0.3)  # images that are not flat grey
    labels = np.random.default_rng(0).integers(0, 4, (1, 32, 32))
    with torch.no_grad():
        reference = to_uint8(model(torch.from_numpy(labels)))
    settings = QualitySettings(timing_warmup=0, timing_iters=1)
    good = latency(model, "asapnet", labels, settings, torch.device("cpu"), reference)
    assert good["fast_fp32_max_level_diff"] <= 1 and good["best_ms"] == good[good["best"] + "_ms"]
    assert good["best_ms"] == min(v for k, v in good.items() if k.endswith("_ms") and k != "best_ms")
    bad = latency(model, "asapnet", labels, settings, torch.device("cpu"), 255 - reference)
    assert min(bad["fast_fp32_max_level_diff"], bad["fast_bf16_max_level_diff"]) > MAX_FAST_LEVEL_DIFF
    assert bad["best"].startswith("reference_")
    assert bad["best_ms"] == min(bad["reference_fp32_ms"], bad["reference_bf16_ms"])


def test_phase2_runs_the_fused_mlp_only_where_phase1_checked_the_forward(smoke):
    """What the H200 showed: every bf16 forward faulted. pytest's failed case tests count (by case name)
    as well as the error table; a skipped test or a case not run checks nothing."""
    from benchmarks.campaign.cli import fused_inference_after, fused_training_after, phase1_checks

    phase1 = smoke["phases"][1]
    assert fused_inference_after(phase1)["env"] == "auto"
    faulted = json.loads(json.dumps(phase1))
    faulted["result"]["pytest"]["junit"]["tests"] += [
        {"name": "test_kernel_matches_reference_on_gpu[index_S8_bf16]", "outcome": "failed"},
        {"name": "test_kernel_matches_reference_on_gpu[grad_index_S8_fp32]", "outcome": "skipped"}]
    faulted["result"]["error_table"]["cases"]["later_case"] = {"ok": None, "error": "not run: context lost"}
    checks = phase1_checks(faulted, lambda n: True)
    assert checks["index_S8_bf16"] is False and "grad_index_S8_fp32" not in checks and "later_case" not in checks
    gate = fused_inference_after(faulted)
    assert gate["env"] == "0" and "['index_S8_bf16']" in gate["why"]
    assert fused_training_after(faulted)["env"] == "0"  # training runs the forward too
    # per precision: the bf16 failure turns off the bf16 rows, not the fp32 ones; and (the second H200
    # run) a failed tf32 case turns off neither of phase 2's precisions
    assert fused_inference_after(faulted, precision="bf16")["env"] == "0"
    assert fused_inference_after(faulted, precision="fp32")["env"] == "auto"
    tf32 = json.loads(json.dumps(phase1))
    tf32["result"]["pytest"]["junit"]["tests"].append(
        {"name": "test_kernel_matches_reference_on_gpu[index_S16_tf32]", "outcome": "failed"})
    assert fused_inference_after(tf32)["env"] == "0"
    assert [fused_inference_after(tf32, precision=p)["env"] for p in ("fp32", "bf16")] == ["auto", "auto"]
    assert "bf16 forward checks passed" in fused_inference_after(tf32, precision="bf16")["why"]


def test_a_second_call_takes_its_gates_from_the_first_calls_files(smoke, tmp_path):
    """--phases 4 --gates-from DIR: phase 1's and phase 3's records of an earlier call, of the same
    commit only (their checks were of the kernels of that commit)."""
    from benchmarks.campaign.cli import load_gates
    from benchmarks.campaign.common import phase_file

    commit = smoke["phases"][1]["env"]["commit"]
    phase1, phase3 = load_gates(smoke["out"], commit, (4,))
    assert phase1 == smoke["phases"][1] and phase3 == smoke["phases"][3]
    assert load_gates(smoke["out"], commit, (3, 4)) == (smoke["phases"][1], None)  # this run times phase 3 itself
    with pytest.raises(SystemExit, match="made at commit .* this run is at deadbeef: its checks are not"):
        load_gates(smoke["out"], {**commit, "commit": "deadbeef"}, (4,))
    with pytest.raises(SystemExit, match=f"no {phase_file(1)} or {phase_file(3)} in"):
        load_gates(tmp_path, commit, (4,))
    (tmp_path / phase_file(1)).write_text("{not json")
    with pytest.raises(SystemExit, match="is not a readable phase record"):
        load_gates(tmp_path, commit, (4,))


def test_phase4_trains_with_the_backward_phase3_timed_faster(tmp_path):
    from benchmarks.campaign.cli import stash_after

    (tmp_path / "dataset.json").write_text(json.dumps({"height": 256, "width": 256}))
    row = {"size": "256x256", "batch": 1, "precision": "bf16", "ms": {"fused": 2.0, "fused_stash": 1.5}}
    other = {**row, "batch": 8, "ms": {"fused": 1.0, "fused_stash": 9.0}}  # not phase 4's batch
    phase3 = {"result": {"pixelwise": [other, row]}}
    train = {"batch_size": 1, "mixed_precision": True}
    assert stash_after(phase3, tmp_path, train)["env"] == "1"
    row["ms"] = {"fused": 1.0, "fused_stash": 1.5}
    assert stash_after(phase3, tmp_path, train)["env"] == "0"
    assert stash_after(phase3, tmp_path, {**train, "mixed_precision": False})["env"] is None  # no fp32 row
    assert stash_after(None, tmp_path, train)["env"] is None
    assert "unknown" in stash_after(phase3, tmp_path / "missing", train)["why"]


def test_phase2_times_every_path_and_checks_the_fast_path(smoke):
    result = smoke["phases"][2]["result"]
    assert result["skipped_for_time"] == [] and result["row_errors"] == []
    rows = {(r["model"], r["path"], r["precision"]): r for r in result["rows"]}
    settings = smoke["phases"][2]["settings"]
    expected = {("asapnet", path, p) for path in ("reference", "fast") for p in settings["precisions"]}
    expected |= {(name, "reference", p) for name in settings["baselines"] for p in settings["precisions"]}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["batch1_ms"]["median_ms"] > 0 and row["images_per_s"] > 0, key
    for p, tol in (("fp32", 1e-4), ("bf16", 0.1)):
        fast = rows[("asapnet", "fast", p)]
        assert fast["fused_kernel"]  # the Triton kernel, in the interpreter
        assert fast["max_abs_diff_vs_reference_fp32"] < tol
        assert fast["lr_ms"] > 0 and fast["hr_ms"] > 0
        # labels int64 in, the parameter grid in, a 3-channel image out, at the precision's width
        H, W, S, P = fast["height"], fast["width"], fast["S"], fast["P"]
        width = 4 if p == "fp32" else 2
        assert fast["hr_min_bytes"] == H * W * (8 + 3 * width) + (H // S) * (W // S) * P * width
        speedup = next(s for s in result["speedups"] if s["precision"] == p)
        ref = rows[("asapnet", "reference", "fp32")]["batch1_ms"]["median_ms"]
        assert speedup["vs_reference_fp32"] == pytest.approx(ref / fast["batch1_ms"]["median_ms"])
    assert result["copy_bandwidth"]["gb_per_s"] > 0
    # each ASAP-Net row's floor on this device: each stream at the matmul rate or the copy bandwidth
    # measured in the phase, whichever is slower, and the measured times over them
    bandwidth = result["copy_bandwidth"]["gb_per_s"] * 1e9
    for (model, path, p), row in rows.items():
        if model != "asapnet":
            continue
        rate, width = result["matmul_peak"][p]["tflops"] * 1e12, 4 if p == "fp32" else 2
        lr_floor = 1e3 * max(row["lr_flops"] / rate, row["lr_weights"] * width / bandwidth)
        hr_floor = 1e3 * max(row["hr_flops"] / rate, row["hr_min_bytes"] / bandwidth)
        assert row["lr_floor_ms"] == pytest.approx(lr_floor) and row["hr_floor_ms"] == pytest.approx(hr_floor)
        assert row["over_floor"] == pytest.approx(row["batch1_ms"]["median_ms"] / (lr_floor + hr_floor))
        assert row["lr_over_floor"] == pytest.approx(row["lr_ms"] / row["lr_floor_ms"])


def test_the_forward_work_is_the_layers_hand_count():
    """forward_work's counts against a hand count: every convolution of the low-res stream from its
    output's shape (2 * Cout * H * W * Cin / groups * kernel taps, the tent filter's included), and the
    pixelwise MLP's (B, h, w, S*S, nci) x (nci, nco) products, 2 * pixels * nci * nco per layer."""
    import torch.nn.functional as F

    from asap.models.asapnet import asapnet
    from asap.models.pixelwise import mlp_layout
    from benchmarks.campaign.inference import forward_work

    torch.manual_seed(0)
    model = asapnet(5, 64, 128, lr_max_width=32).eval()
    labels = torch.randint(0, 5, (1, 64, 128))
    convs = []
    real_conv2d = F.conv2d

    def counting_conv2d(x, w, *args, **kwargs):
        out = real_conv2d(x, w, *args, **kwargs)
        convs.append(2 * out.numel() * w.shape[1] * w.shape[2] * w.shape[3])  # per output: Cin/groups * taps
        return out

    with torch.no_grad():
        onehot = model.encode(labels)
        F.conv2d = counting_conv2d
        try:
            model.tile_params(onehot)
        finally:
            F.conv2d = real_conv2d
    work = forward_work(model, labels)
    assert work["lr_flops"] == sum(convs) > 0
    assert work["lr_weights"] == sum(p.numel() for p in model.lowres_stream.parameters())
    c = model.config
    assert work["hr_flops"] == sum(2 * 64 * 128 * layer.nci * layer.nco for layer in mlp_layout(c.mlp_channels))


def test_phase2_says_where_the_fast_paths_time_goes(smoke):
    """The profiled rows are the fast path's in the profiled precisions, no others; the low-res stream
    is a part of the forward, so it runs fewer ops, and both run the convolutions."""
    settings = smoke["phases"][2]["settings"]
    rows = smoke["phases"][2]["result"]["rows"]
    profiled = {(r["model"], r["path"], r["precision"]) for r in rows if "kernels" in r}
    assert profiled == {("asapnet", "fast", p) for p in settings["profile_precisions"]}
    for row in rows:
        if "kernels" in row:
            k = row["kernels"]
            assert k["forward"]["iters"] == k["lowres"]["iters"] == settings["profile_iters"]
            assert 0 < k["lowres"]["calls_per_forward"] < k["forward"]["calls_per_forward"]
            assert "conv / GEMM" in k["forward"]["by_kind_ms"] and "conv / GEMM" in k["lowres"]["by_kind_ms"]
            assert "pixelwise MLP" not in k["lowres"]["by_kind_ms"]


def test_phase3_says_where_our_steps_time_goes(smoke):
    """Ours' eager step is profiled in the profiled sizes and precisions only: a step runs the
    convolutions forward and backward and one optimiser update per network."""
    settings = smoke["phases"][3]["settings"]
    for row in smoke["phases"][3]["result"]["rows"]:
        assert "kernels" not in row["authors_way"]
        if row["size"] in settings["profile_sizes"] and row["precision"] in settings["profile_precisions"]:
            k = row["ours"]["kernels"]
            assert k["iters"] == settings["profile_iters"]
            assert {"conv / GEMM", "conv backward", "optimizer"} <= set(k["by_kind_ms"])
            assert k["calls_by_kind"]["optimizer"] == 2  # G's and D's fused Adam, once each per step
        else:
            assert "kernels" not in row["ours"]


def test_phase3_compares_ours_with_the_authors_way(smoke):
    result = smoke["phases"][3]["result"]
    # the pixelwise MLP alone: both autograd layouts timed; the fused kernel needs CUDA
    settings = smoke["phases"][3]["settings"]
    assert len(result["pixelwise"]) == len(settings["sizes"]) * len(settings["batches"]) * len(settings["precisions"])
    for row in result["pixelwise"]:
        assert set(row["ms"]) == {"reference", "authors_way"} and min(row["ms"].values()) > 0
        assert row["fused_vs_authors"] is None and row["fused_best"] is None and row["peak_mb"] == {}
    assert result["skipped_for_time"] == [] and len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["max_abs_output_diff"] < 1e-5  # the two layouts compute the same function
        assert row["speedup"] == pytest.approx(row["ours"]["images_per_s"] / row["authors_way"]["images_per_s"])
        assert row["ours"]["images_per_s"] == pytest.approx(row["batch"] / row["ours"]["step_s_median"])
        assert row["ours"]["fused_mlp"] is False  # CPU: the reference pixelwise MLP
        # the share is two medians measured apart: on a busy CPU's smoke steps it can pass 1 (no bound then)
        share = row["authors_generator_share"]
        assert share > 0 and row["generator_speedup"] > 0
        assert row["generator_alone_bound"] == (pytest.approx(1 / (1 - share)) if share < 1 else None)
        assert row["authors_way_runs"] == "their layout and step"
        # each step's arithmetic, counted once more after the timings, read against the matmul rate
        # measured in the same phase: the authors' step runs G and D forward twice, so it does more
        flops, peak = row["flops"], result["matmul_peak"][row["precision"]]
        assert flops["authors_way"] > flops["ours"] > 0
        assert row["flop_ratio"] == pytest.approx(flops["authors_way"] / flops["ours"])
        for way in ("ours", "authors_way"):
            assert row[way]["tflops_per_s"] == pytest.approx(flops[way] / row[way]["step_s_median"] / 1e12)
            assert row[way]["fraction_of_matmul_peak"] == pytest.approx(row[way]["tflops_per_s"] / peak["tflops"])
    bf16 = next(r for r in result["rows"] if r["precision"] == "bf16")
    fp32 = next(r for r in result["rows"] if r["precision"] == "fp32")
    # ours with a channels-last VGG, in the precisions settings.channels_last names (bf16) only; the
    # worst row's best speed-up is the target's measurement
    assert settings["channels_last"] == ["bf16"] and "ours_channels_last" not in fp32
    assert bf16["speedup_channels_last"] == pytest.approx(bf16["ours_channels_last"]["images_per_s"] /
                                                          bf16["authors_way"]["images_per_s"])
    assert bf16["speedup_best"] == pytest.approx(max(bf16["speedup"], bf16["speedup_channels_last"]))
    target = result["targets"]["ours >= 2x the authors' way at equal batch, size and precision (worst row)"]
    assert target["measured"] == pytest.approx(min(bf16["speedup_best"], fp32["speedup_best"]))
    assert bf16["speedup_vs_authors_fp32"] == pytest.approx(bf16["ours"]["images_per_s"] /
                                                            fp32["authors_way"]["images_per_s"])


def test_phase4_trains_each_generator_for_the_budget_and_packs_every_test_image(smoke, facades64):
    record = smoke["phases"][4]
    result = record["result"]
    stems = sorted(p.stem for p in (facades64 / "test" / "labels").glob("*.png"))
    assert record["budget_s"] == SMOKE_BUDGET_S and result["ok"]
    assert set(result["generators"]) == {"asapnet", "pix2pixhd", "spade"}
    for name, entry in result["generators"].items():
        summary = entry["summary"]
        assert summary["steps"] > 0 and summary["stopped_by"] == "time_budget"
        # the loop stops at the first step boundary past the budget: one smoke step is a few seconds here
        assert SMOKE_BUDGET_S <= summary["train_seconds"] < SMOKE_BUDGET_S + 15, (name, summary)
        assert entry["config"]["train"]["time_budget_s"] == SMOKE_BUDGET_S
        path = smoke["out"] / entry["images"]["file"]
        assert path.stat().st_size <= RESULT_FILE_LIMIT and sha1(path) == entry["images"]["sha1"]
        with np.load(path, allow_pickle=False) as data:
            images, packed_stems = data["images"], list(data["stems"])
            meta = json.loads(str(data["meta"]))
        assert images.shape == (len(stems), 64, 64, 3) and images.dtype == np.uint8
        assert packed_stems == stems and meta["name"] == name and meta["steps"] == summary["steps"]
        assert images.std() > 0
    assert result["generators"]["asapnet"]["arch"] == "asapnet"
    assert result["generators"]["spade"]["arch"] == "spade"


def test_score_writes_metrics_files_from_the_returned_images(smoke, facades64, tmp_path):
    from asap.metrics import fid
    from asap.models.segmenter import Segmenter, SegmenterConfig, save_segmenter
    from benchmarks.campaign.score import score

    torch.manual_seed(0)  # an untrained segmenter: pixel accuracy and mIoU are numbers, not good ones
    seg = save_segmenter(tmp_path / "seg.pt", Segmenter(SegmenterConfig(num_classes=13, width_mult=0.125)),
                         meta={"dataset": "facades-64x64", "steps": 0})
    n = 6
    out = score(smoke["out"], data_root=facades64, segmenter=seg, metrics_dir=tmp_path / "metrics",
                fid_cache=tmp_path / "cache", device="cpu", max_images=n, kid_subsets=3, kid_subset_size=3)
    written = sorted(p.name for p in (tmp_path / "metrics").iterdir())
    assert written == ["gpu-cpu-correctness.json", "gpu-cpu-inference.json", "gpu-cpu-quality.json",
                       "gpu-cpu-training.json"]
    saved = json.loads((tmp_path / "metrics" / "gpu-cpu-quality.json").read_text())
    assert saved["campaign"]["commit"]["commit"] == smoke["phases"][4]["env"]["commit"]["commit"]
    for name, g in saved["generators"].items():
        assert g["num_images"] == n and math.isfinite(g["fid"]) and g["kid_std"] >= 0
        assert 0 <= g["pixel_acc"] <= 1 and 0 <= g["miou"] <= 1
        assert g["steps"] == smoke["phases"][4]["result"]["generators"][name]["summary"]["steps"]
    assert math.isfinite(saved["real_vs_real_floor"]["fid"]) and saved["real_vs_real_floor"]["num_images"] == n
    assert "asapnet_vs_spade" in saved["comparisons"]

    # FID again, from the returned images and the real test photos read here
    stems = sorted(p.stem for p in (facades64 / "test" / "labels").glob("*.png"))[:n]
    with np.load(smoke["out"] / "images-asapnet.npz") as data:
        fake = torch.from_numpy(data["images"][:n]).permute(0, 3, 1, 2).float() / 127.5 - 1
    real = torch.stack([torch.from_numpy(np.array(Image.open(facades64 / "test" / "images" / f"{s}.png").convert("RGB")))
                        for s in stems]).permute(0, 3, 1, 2).float() / 127.5 - 1
    net = fid.InceptionFeatures()
    with torch.no_grad():
        expected = fid.fid_from_features(net(real).double().numpy(), net(fake).double().numpy())
    assert out["generators"]["asapnet"]["fid"] == pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------------------------------------
# Small parts
# ----------------------------------------------------------------------------------------------

def test_phase4_budget_shrinks_to_the_deadline_and_never_differs_between_generators():
    from benchmarks.campaign.cli import phase4_budget
    from benchmarks.campaign.settings import real_settings

    settings = real_settings(budget_s=100.0, deadline_s=540.0)
    clock = Clock(540.0, start=time.perf_counter() - 100.0)      # 440 s left: 3 x (100 + 20) fits
    assert phase4_budget(settings, clock) == (100.0, "as asked")
    clock = Clock(540.0, start=time.perf_counter() - 250.0)      # 290 s left
    budget, note = phase4_budget(settings, clock)
    assert budget == pytest.approx((290 - 10) / 3 - 20, abs=0.5) and "cut from 100" in note


def test_phases_keep_phase4_minimum_in_reserve():
    from benchmarks.campaign.settings import real_settings

    s = real_settings()
    reserve = s.phase4_reserve()
    assert reserve == 3 * (s.quality.min_budget_s + s.quality.overhead_s)
    clock = Clock(s.deadline_s)
    # phase 1's stop time leaves phase 4 its minimum, whatever phase 1's own cap says
    assert clock.until(1e9, reserve) - clock.start <= s.deadline_s - reserve + 1e-6


def test_commit_comes_from_env_then_git_then_the_packed_file(tmp_path, monkeypatch):
    monkeypatch.setenv(common.COMMIT_ENV, "abc123")
    assert commit_info()["commit"] == "abc123"
    monkeypatch.delenv(common.COMMIT_ENV)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    # without a packed commit file (a checkout that ran `pack` has .carry/commit.json, which comes first)
    assert commit_info(tmp_path / "not-packed.json")["commit"] == head
    monkeypatch.setattr(common, "_git", lambda *args: None)  # as on the device machine: no .git
    (tmp_path / "commit.json").write_text(json.dumps({"commit": "f00d", "dirty": True}))
    info = commit_info(tmp_path / "commit.json")
    assert info["commit"] == "f00d" and info["dirty"] and info["source"].startswith("file")
    assert commit_info(tmp_path / "missing.json")["commit"] == "unknown"


def test_junit_summary_counts_outcomes(tmp_path):
    from benchmarks.campaign.correctness import junit_summary

    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite tests="3" time="1.5">'
                   '<testcase name="a" time="0.1"/>'
                   '<testcase name="b" time="0.2"><failure message="max abs error 0.3 &gt; 0.01"/></testcase>'
                   '<testcase name="c" time="0"><skipped message="needs CUDA"/></testcase>'
                   '</testsuite></testsuites>')
    s = junit_summary(xml)
    assert (s["total"], s["passed"], s["failed"], s["skipped"]) == (3, 1, 1, 1)
    assert s["tests"][1]["message"] == "max abs error 0.3 > 0.01" and s["seconds"] == 1.5


def test_phase_list_is_validated():
    from asap.config import ConfigError
    from benchmarks.campaign.settings import parse_phases

    assert parse_phases("1,4,2") == (1, 4, 2)
    for bad in ("0", "1,1", "5", "a", ""):
        with pytest.raises(ConfigError, match="phases"):
            parse_phases(bad)


def test_a_killed_pytest_run_is_summarised_from_its_console_lines():
    from benchmarks.campaign.correctness import verbose_summary

    out = ("tests/test_pixelwise_fused.py::test_kernel_matches_reference_on_gpu[index_S8_fp32] PASSED  [  3%]\n"
           "tests/test_pixelwise_fused.py::test_kernel_matches_reference_on_gpu[index_S8_bf16] FAILED  [  7%]\n"
           "some other line\n")
    s = verbose_summary(out)
    assert (s["total"], s["passed"], s["failed"]) == (2, 1, 1)
    assert s["tests"][1]["name"] == "test_kernel_matches_reference_on_gpu[index_S8_bf16]"
    # pytest-xdist's -v lines (worker, progress, outcome, test); the short summary's FAILED line is not a test
    out = ("[gw1] [  3%] SKIPPED tests/test_pixelwise_fused.py::test_fast[a] \n"
           "[gw0] [ 50%] FAILED tests/test_pixelwise_fused.py::test_kernel_matches_reference_on_gpu[x] \n"
           "FAILED tests/test_pixelwise_fused.py::test_kernel_matches_reference_on_gpu[x] - assert 2 < 1\n")
    s = verbose_summary(out)
    assert (s["total"], s["skipped"], s["failed"]) == (2, 1, 1)
    assert [t["name"] for t in s["tests"]] == ["test_fast[a]", "test_kernel_matches_reference_on_gpu[x]"]


def test_an_images_file_over_the_limit_is_refused(tmp_path, monkeypatch):
    from benchmarks.campaign import quality

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)  # noise: barely compresses
    info = quality.pack_images(tmp_path / "ok.npz", images, ["a", "b", "c", "d"], {"name": "x"})
    assert info["count"] == 4 and info["bytes"] == (tmp_path / "ok.npz").stat().st_size > images.nbytes * 0.9
    monkeypatch.setattr(quality, "RESULT_FILE_LIMIT", images.nbytes // 2)
    with pytest.raises(RuntimeError, match="over the"):
        quality.pack_images(tmp_path / "big.npz", images, ["a", "b", "c", "d"], {"name": "x"})
