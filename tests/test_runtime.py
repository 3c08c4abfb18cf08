"""The timer (not a speed test): known sleeps come back as known medians; the device record's schema."""

import itertools
import time

import pytest
import torch

from asap.metrics.runtime import device_info, device_slug, summarize_ms, time_module

# Sleeping never returns early, but on a busy 2-core machine it can return late: bound from above loosely.
LATE_MS = 15.0


def test_median_of_a_known_sleep():
    calls = []
    r = time_module(lambda x: calls.append(x) or time.sleep(0.02), torch.zeros(1), warmup=2, iters=5)
    assert len(calls) == 7 and r["n"] == 5 and r["timer"] == "perf_counter"
    assert 20.0 <= r["median_ms"] <= 20.0 + LATE_MS
    assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]


def test_percentiles_of_known_varying_sleeps():
    sleeps = itertools.cycle([5, 10, 15, 20, 25, 30, 35, 40, 45, 50])  # ms, one per timed call
    r = time_module(lambda: time.sleep(next(sleeps) / 1e3), warmup=0, iters=10)
    # numpy's linear percentiles of 5..50: median 27.5, p10 9.5, p90 45.5
    assert 27.5 <= r["median_ms"] <= 27.5 + LATE_MS
    assert 9.5 <= r["p10_ms"] <= 9.5 + LATE_MS
    assert 45.5 <= r["p90_ms"] <= 45.5 + LATE_MS


def test_summarize_hand_worked():
    s = summarize_ms([4.0, 1.0, 3.0, 2.0])
    assert s == {"median_ms": 2.5, "p10_ms": pytest.approx(1.3), "p90_ms": pytest.approx(3.7),
                 "mean_ms": 2.5, "n": 4}


def test_runs_in_inference_mode_and_checks_arguments():
    seen = []
    time_module(lambda x: seen.append(torch.is_inference_mode_enabled()), torch.ones(2), warmup=1, iters=1)
    assert seen == [True, True]
    with pytest.raises(ValueError, match="iters"):
        time_module(lambda: None, iters=0)


def test_device_info_schema():
    info = device_info("cpu", precision="fp32")
    assert set(info) == {"device", "device_name", "precision", "torch", "cuda", "cudnn", "cpu_model",
                         "cpu_count", "torch_threads", "python", "platform"}
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["torch"] == torch.__version__
    assert isinstance(info["device_name"], str) and info["device_name"]
    assert device_slug(info) == "cpu"
    assert device_slug({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_events_agree_with_synchronized_wall_clock():
    a = torch.randn(4096, 4096, device="cuda")
    fn = lambda: a @ a  # noqa: E731  (~0.1-10 ms on any GPU: GPU-bound, so events ~ wall clock)
    r = time_module(fn, warmup=3, iters=20, device="cuda")
    assert r["timer"] == "cuda_events"
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / 20
    assert r["mean_ms"] == pytest.approx(wall, rel=0.25)
    assert device_info("cuda")["cuda"] == torch.version.cuda


def test_cpu_timing_runs_with_the_recorded_thread_count_and_restores_it():
    import os

    from asap.metrics.runtime import time_module

    seen = []
    before = torch.get_num_threads()
    row = time_module(lambda: seen.append(torch.get_num_threads()), warmup=0, iters=2, threads=1)
    assert row["threads"] == 1 and seen == [1, 1]
    row = time_module(lambda: seen.append(torch.get_num_threads()), warmup=0, iters=1)
    assert row["threads"] == seen[-1] == len(os.sched_getaffinity(0))  # the default: every core we may use
    assert torch.get_num_threads() == before


def test_a_timing_is_bracketed_by_host_samples_at_its_threads(monkeypatch):
    """with_host_rate samples the host's matmul rate before and after the timing, both at the timing's
    threads, and records their mean (worked by hand); the real sample agrees with a 1024^3 matmul timed
    here with perf_counter at the same threads."""
    from asap.metrics import runtime
    from metrics_helpers import matmul_tflops_here

    events = []
    rates = iter([0.5, 0.25])

    def fake_peak(device, precision, n=None, iters=10):
        events.append(("peak", str(device), precision, n, iters, torch.get_num_threads()))
        return {"tflops": next(rates), "precision": precision, "n": n}

    monkeypatch.setattr(runtime, "matmul_peak", fake_peak)
    before = torch.get_num_threads()
    out = runtime.with_host_rate(lambda: events.append("timing") or {"median_ms": 3.0}, "cpu", threads=1)
    peak = ("peak", "cpu", "fp32", runtime.HOST_MATMUL_N["cpu"], runtime.HOST_MATMUL_ITERS, 1)
    assert events == [peak, "timing", peak] and torch.get_num_threads() == before
    assert out == {"median_ms": 3.0, "host_matmul_tflops": 0.375, "host_matmul_tflops_start": 0.5,
                   "host_matmul_tflops_end": 0.25}

    monkeypatch.undo()
    threads = 2 if torch.get_num_threads() >= 2 else 1
    measured = runtime.host_rate("cpu", threads=threads)
    here = matmul_tflops_here(threads)
    assert measured["n"] == 1024 and measured["precision"] == "fp32"
    assert here / 2.5 < measured["tflops"] < here * 2.5, (measured, here)


ALLOCATION_PROBE = """
import ctypes, json, torch
from asap.metrics import runtime
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
policy = runtime.time_module(lambda: None, warmup=0, iters=1)["allocator"]
before = libc.mallinfo2().hblkhd
block = torch.empty(20 << 18)  # 20 MiB
mapped = libc.mallinfo2().hblkhd - before
del block
print(json.dumps({"policy": policy, "mapped": mapped, "kept": libc.mallinfo2().fordblks}))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_cpu_timing_holds_glibcs_allocator_steady():
    """A CPU timing sets glibc's allocator to reuse freed memory (asap.metrics.runtime.steady_allocator), read
    back from glibc's own counters (mallinfo2) in a fresh process: a 20 MiB tensor comes from the heap, not a
    fresh mmap, and its memory stays in the heap once freed; with ASAP_CPU_ALLOCATOR=default glibc maps it
    anew (and would fault it in anew on every call) and unmaps it on free."""
    import json
    import os
    import subprocess
    import sys

    def probe(**env):
        proc = subprocess.run([sys.executable, "-c", ALLOCATION_PROBE], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env}, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    steady = probe()
    assert steady["policy"] == "glibc steady (mmap threshold 32 MiB, trim threshold 1024 MiB)"
    assert steady["mapped"] == 0 and steady["kept"] >= 20 << 20
    default = probe(ASAP_CPU_ALLOCATOR="default")
    assert default["policy"] == "glibc default"
    assert default["mapped"] >= 20 << 20 and default["kept"] < 20 << 20


def test_mlp_layout_benchmark_times_both_grid_layouts(tmp_path):
    """benchmarks/mlp_layout at a toy size: one row per S with both layouts' times and the tile count
    of its grid, written as JSON."""
    import json

    from benchmarks import mlp_layout

    out = tmp_path / "layout.json"
    assert mlp_layout.main(["--size", "32x64", "--S", "8", "16", "--lr-max-width", "16", "--warmup", "0",
                            "--iters", "1", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["S"] for r in data["rows"]] == [8, 16] and data["threads"] == 1
    for row in data["rows"]:
        for key in ("mlp_infer_ms_channels_last", "mlp_infer_ms_nchw", "mlp_train_ms_channels_last",
                    "mlp_train_ms_nchw", "generator_ms"):
            assert row[key] > 0, key
        assert row["tiles"] == (32 // row["S"]) * (64 // row["S"])
