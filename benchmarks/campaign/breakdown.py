"""Where a forward's time goes: its kernels, timed by torch.profiler and grouped by kind.

The campaign times the fast path as one CUDA graph replay (what a user gets), which says how long, not
where. This runs the same forward eagerly a few times under torch.profiler and sums each kernel's own
device time (CUPTI's records: cuDNN / cuBLAS kernels, our Triton kernels, copies), per forward. A
kernel's device time does not depend on how it was launched, so the sum is the graph's device work;
what the graph's time has beyond it is the device waiting between kernels. On a CPU (the smoke mode)
the same code sums the CPU self time of the aten ops instead, and says so.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch

# First match wins: the layout and encoding kernels name the libraries they sit in (cuDNN's
# nchwToNhwc), so they are matched before the convolutions.
KINDS: tuple[tuple[str, str], ...] = (
    ("input encoding", r"tent_onehot|one_hot|scatter"),
    ("pixelwise MLP", r"pixelwise_mlp|_pixelwise|bmm|baddbmm|einsum"),
    ("norm", r"_in_stats|_in_apply|norm"),
    ("optimizer", r"adam|multi_tensor"),
    ("copy / layout", r"copy|cat|pad|im2col|col2im|transpose|nchwtonhwc|nhwctonchw|memcpy|memset|contiguous|clone"),
    ("conv backward", r"dgrad|wgrad|convolution_backward"),
    ("conv / GEMM", r"conv|gemm|xmma|cutlass|nvjet|fprop|implicit|wgmma|splitk|gemv|addmm|\bmm\b|\bmv\b|linear|sm90_|sm80_"),
    ("elementwise", r"elementwise|reduce|relu|tanh|add|mul|leaky|where|fill|pool"),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


# Lines the profiler's native library writes to stderr on every start and stop (and, on a machine
# without a GPU, about the GPU it did not find): not progress, so not shown.
CHATTER = re.compile(r"^(USDT:|ERROR:.*(DeviceProperties|gpuGetDeviceCount)|.*SyncActivityProfilerHandler)")


@contextmanager
def _without_profiler_chatter():
    """Native stderr (file descriptor 2) goes to a temporary file while the profiler runs; afterwards
    every line of it except ``CHATTER`` is written back, so a real error still shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines() if not CHATTER.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def kernel_breakdown(fn: Callable[[], object], iters: int, device: torch.device, top: int = 10) -> dict:
    """Run ``fn`` ``iters`` times under torch.profiler (after one untimed call) and return, per call:
    the total device time of its kernels (CUDA; the CPU self time of its ops on a CPU), that time and
    the number of kernels by kind (``KINDS``), and the ``top`` kernels by time with their calls per forward."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with warnings.catch_warnings(), _without_profiler_chatter():
        warnings.simplefilter("ignore", UserWarning)  # torch 2.11: "Profiler clears events at the end of each cycle"
        with profile(activities=activities) as prof:
            for _ in range(iters):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
    entries = []
    for e in prof.key_averages():
        if cuda:
            if e.device_type != DeviceType.CUDA:  # kernels, copies and sets on the device; not the host's ops
                continue
            us = e.self_device_time_total
        else:
            if not e.key.startswith("aten::"):
                continue
            us = e.self_cpu_time_total
        if us > 0:
            entries.append({"name": e.key[:160], "kind": kind_of(e.key), "calls": e.count / iters,
                            "ms": us / 1e3 / iters})
    entries.sort(key=lambda r: r["ms"], reverse=True)
    by_kind: dict[str, float] = {}
    calls: dict[str, float] = {}
    for r in entries:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0.0) + r["ms"]
        calls[r["kind"]] = calls.get(r["kind"], 0.0) + r["calls"]
    return {"iters": iters, "unit": "kernels" if cuda else "aten ops",
            "timer": ("device time of each CUDA kernel (torch.profiler / CUPTI), eager forward" if cuda else
                      "CPU self time of each aten op (torch.profiler), eager forward: not device kernels"),
            "total_ms": sum(r["ms"] for r in entries), "calls_per_forward": sum(r["calls"] for r in entries),
            "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: kv[1], reverse=True)),
            "calls_by_kind": {k: calls[k] for k in sorted(by_kind, key=by_kind.get, reverse=True)},
            "top": entries[:top]}


def describe(breakdown: dict) -> str:
    """'0.912 ms in 83 kernels: conv / GEMM 0.610, norm 0.080, ...' for the console (on a CPU: aten ops)."""
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in breakdown["by_kind_ms"].items())
    return f"{breakdown['total_ms']:.3f} ms in {breakdown['calls_per_forward']:.0f} {breakdown['unit']}: {kinds}"


# ----------------------------------------------------------------------------------------------
# In a child process: CUPTI stays loaded in a process after its first profiling session (PyTorch
# issue 144455: a profiled program ran 10-20% slower afterwards unless CUPTI was torn down, and
# tearing it down is unsafe with CUDA graphs on some CUDA versions), so the campaign profiles in a
# fresh Python process and its own timings, before and after, never share a process with CUPTI.
# ----------------------------------------------------------------------------------------------

def in_child(target: str, job: dict, until: float) -> dict:
    """``target`` ("module:function", called as ``function(job, emit)``) in a fresh Python process
    (the same interpreter and environment; its console lines are this one's) until ``until``
    (perf_counter). ``emit(result)`` writes the result so far; returns the last result written, with
    "error" set when the process ran out of time or failed before finishing."""
    import json
    import subprocess
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="asap-profile-") as folder:
        job_file, out_file = Path(folder) / "job.json", Path(folder) / "out.json"
        job_file.write_text(json.dumps({"target": target, "job": job}))
        error = None
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.campaign.breakdown", str(job_file), str(out_file)],
                                  timeout=max(1.0, until - time.perf_counter()))
            if proc.returncode != 0:
                error = f"the profiling process exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = "the profiling process ran past the phase's time and was stopped"
        result = json.loads(out_file.read_text()) if out_file.is_file() else {}
        return {**result, "error": error} if error else result


def profile_rows(rows: list[dict], emit, key: Callable[[dict], str], label: Callable[[dict], str],
                 measure: Callable[[dict], tuple[dict, str]]) -> dict:
    """A child's loop over a phase's profiled rows: each with ASAP_FUSED_MLP as phase 1 set it for the
    row's precision (``row["fused"]``), then ``measure(row)`` -> (its kernels, what to log); a failure
    costs that row only and is recorded in its place. The result so far, {key(row): kernels}, is
    emitted after every row (a child stopped at its time keeps what it did)."""
    from benchmarks.campaign.common import log

    out: dict = {}
    for row in rows:
        if row["fused"] is not None:
            os.environ["ASAP_FUSED_MLP"] = row["fused"]
        try:
            kernels, text = measure(row)
            log(f"{label(row)}, where the time goes: {text}")
        except Exception as err:  # a diagnosis: one row's failure costs that row only
            kernels = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            log(f"{label(row)}: not profiled ({kernels['error'][:200]})")
        out[key(row)] = kernels
        emit(out)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def profiled(got: dict, key: str) -> dict:
    """A row's kernels from ``in_child``'s result, or why it has none."""
    return got.get(key) or {"error": f"not profiled: {got.get('error') or 'the profiling process did not reach it'}"}


def _child_main(argv: list[str]) -> None:
    import importlib
    import json
    from pathlib import Path

    job_file, out_file = Path(argv[0]), Path(argv[1])
    spec = json.loads(job_file.read_text())
    module, function = spec["target"].split(":")
    fn = getattr(importlib.import_module(module), function)

    def emit(result: dict) -> None:  # atomically: a stopped process leaves the last whole result
        tmp = out_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, out_file)

    emit(fn(spec["job"], emit))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
