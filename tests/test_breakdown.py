"""benchmarks/campaign/breakdown.py: where a forward's time goes (the GPU campaign's phases 2 and 3).
Checked on the CPU against facts fixed by construction (how many ops of each kind a function calls)
and against kernel names in the forms cuDNN, cuBLAS, PyTorch and Triton give them on Hopper (written out
by hand from those naming schemes, below; the first device profile will show the real ones)."""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.campaign.breakdown import _without_profiler_chatter, describe, kernel_breakdown, kind_of


def test_calls_per_forward_and_kinds_follow_what_the_function_runs():
    x, w = torch.rand(1, 4, 16, 16), torch.rand(4, 4, 3, 3)

    def forward():  # per call: 3 convolutions, 2 ReLUs, 1 concatenation
        a = torch.nn.functional.conv2d(x, w, padding=1)
        b = torch.relu(torch.nn.functional.conv2d(a, w, padding=1))
        c = torch.relu(torch.nn.functional.conv2d(b, w, padding=1))
        return torch.cat([a, c], dim=1)

    got = kernel_breakdown(forward, iters=4, device=torch.device("cpu"), top=50)
    calls = {}
    for r in got["top"]:
        calls[r["name"]] = r["calls"]
    assert calls["aten::convolution"] == 3 and calls["aten::relu"] == 2 and calls["aten::cat"] == 1
    assert got["iters"] == 4 and got["unit"] == "aten ops"
    assert {"conv / GEMM", "elementwise", "copy / layout"} <= set(got["by_kind_ms"])
    assert got["total_ms"] == pytest.approx(sum(r["ms"] for r in got["top"]))  # top=50 holds every op here
    assert got["total_ms"] == pytest.approx(sum(got["by_kind_ms"].values()))
    assert got["calls_by_kind"]["conv / GEMM"] >= 3 and got["calls_by_kind"]["copy / layout"] >= 1
    assert describe(got).startswith(f"{got['total_ms']:.3f} ms in ")


@pytest.mark.parametrize("name, kind", [
    # cuDNN on Hopper: a bf16 forward convolution, its layout transposes, a data-gradient convolution
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_"
     "execute_segment_k_off_kernel__5x_cudnn", "conv / GEMM"),
    ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true, (cudnnKernelDataType_t)0>",
     "copy / layout"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nchw_tilesize128x128x64", "conv backward"),
    # cuBLAS on Hopper, and its split-K reduction
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT", "conv / GEMM"),
    ("void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, false>",
     "conv / GEMM"),
    ("void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4, false, false>", "conv / GEMM"),
    # ours (Triton)
    ("_pixelwise_mlp_fwd", "pixelwise MLP"), ("_pixelwise_mlp_bwd", "pixelwise MLP"),
    ("_in_stats", "norm"), ("_in_apply", "norm"), ("_tent_onehot_fwd", "input encoding"),
    # PyTorch's own
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>>", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
     "std::array<char*, 3ul>>", "elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)>",
     "copy / layout"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType<2u>>",
     "copy / layout"),
    ("void at::native::batch_norm_collect_statistics_kernel<at::native::InvStd, float, float, float, int>", "norm"),
    ("Memcpy DtoD (Device -> Device)", "copy / layout"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nchw<c10::BFloat16, float>", "elementwise"),
])
def test_hopper_kernel_names_fall_into_their_kinds(name, kind):
    assert kind_of(name) == kind


def test_the_profilers_native_chatter_is_dropped_and_other_stderr_kept(capfd):
    with _without_profiler_chatter():
        os.write(2, b"USDT:2026-12-01 12:16:46 3299:3299 SyncActivityProfilerHandler.cpp:39] profiler_start\n")
        os.write(2, b"ERROR:2026-12-01 12:16:46 3299:3299 DeviceProperties.cpp:56] gpuGetDeviceCount failed\n")
        os.write(2, b"CUDA error: an illegal memory access was encountered\n")
    err = capfd.readouterr().err
    assert "illegal memory access" in err
    assert "USDT" not in err and "gpuGetDeviceCount" not in err


# Targets for in_child: the child imports this module by name (PYTHONPATH gets tests/ below).
def child_returns(job, emit):
    emit({"first": job["n"]})
    return {"first": job["n"], "second": job["n"] + 1, "pid": os.getpid()}


def child_hangs(job, emit):
    emit({"first": job["n"]})
    import time
    time.sleep(60)
    return {"never": True}


def child_fails(job, emit):
    raise RuntimeError("boom")


@pytest.fixture
def child_path(monkeypatch):
    from pathlib import Path

    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_a_profile_runs_in_another_process_and_returns_its_result(child_path):
    import time

    from benchmarks.campaign.breakdown import in_child

    got = in_child("test_breakdown:child_returns", {"n": 4}, time.perf_counter() + 120)
    assert got["first"] == 4 and got["second"] == 5 and "error" not in got
    assert got["pid"] != os.getpid()  # CUPTI, once loaded there, never reaches this process's timings


def test_a_child_past_its_time_is_stopped_and_keeps_what_it_emitted(child_path):
    import time

    from benchmarks.campaign.breakdown import in_child

    t0 = time.perf_counter()
    got = in_child("test_breakdown:child_hangs", {"n": 7}, t0 + 8)
    assert time.perf_counter() - t0 < 30  # stopped at its time, not after the 60 s sleep
    assert got["first"] == 7 and "never" not in got and "past the phase's time" in got["error"]
    failed = in_child("test_breakdown:child_fails", {}, time.perf_counter() + 120)
    assert failed == {"error": "the profiling process exited with code 1"}
