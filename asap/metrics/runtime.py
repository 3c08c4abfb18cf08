"""Inference-time measurement (Sec. 4.1 / Fig. 4 of the paper: runtime at batch 1 on one GPU).

GPU: CUDA events around every iteration after a warm-up and a ``torch.cuda.synchronize``: the events
time the work on the device, not Python's launch loop alone (the paper's numbers are GPU times).
CPU: ``time.perf_counter`` around every call, with one thread policy everywhere: torch uses
``threads`` intra-op threads while timing (default: every core this process may run on), and the
count is recorded with the number, so two CPU times are compared only when measured the same way.
Both report the median and the 10th/90th percentiles, which are robust to the odd slow iteration (a
page fault, another process) where a mean is not. Everything runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import os
import platform
import re
import time
from contextlib import contextmanager
from typing import Any, Callable

import numpy as np
import torch


def _as_args(inputs) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def summarize_ms(times_ms: list[float]) -> dict:
    """Per-iteration times -> {median_ms, p10_ms, p90_ms, mean_ms, n} (numpy's linear percentiles)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise ValueError("no timings to summarize")
    return {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
            "p90_ms": float(np.percentile(t, 90)), "mean_ms": float(t.mean()), "n": int(t.size)}


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precision name -> autocast dtype


@contextmanager
def precision_mode(precision: str, device: torch.device, autocast: bool = True):
    """fp32: TF32 off (cuDNN convs default to TF32); tf32: on; bf16/fp16: autocast (unless the model
    casts itself, as the fast path does)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        if precision in AUTOCAST and autocast:
            with torch.autocast(device.type, dtype=AUTOCAST[precision]):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def cpu_threads(threads: int | None = None) -> int:
    """The CPU timing policy: ``threads``, or every core this process may run on."""
    if threads is not None:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# CPU timings run with glibc's allocator held steady (``steady_allocator``): by default glibc returns freed
# memory to the OS and adapts its mmap threshold to the sizes it has seen, so a generator that allocates
# and frees tens of MiB per call pays page faults whose count depends on what the process did before (the
# default params' ASAP-Net at 256x256, batch 1, 2 threads on the 2-core VM: 157-193 ms in a fresh process,
# 111-119 ms in one that had translated a batch of 8 first, 85-103 ms with this policy; pix2pixHD 46-50 ms
# either way; SPADE 166-181 ms, 121-128 ms with it). ASAP_CPU_ALLOCATOR=default keeps glibc's defaults.
GLIBC_MMAP_THRESHOLD = 32 << 20   # bytes: glibc's largest dynamic threshold on 64-bit; smaller blocks reuse the heap
GLIBC_TRIM_THRESHOLD = 1 << 30    # bytes of free heap top kept before returning it to the OS
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_ALLOCATOR: list[str] = []        # the policy this process set, once


def steady_allocator() -> str:
    """Hold glibc's allocator steady for CPU timing (once per process; it stays for the rest of it):
    allocations below GLIBC_MMAP_THRESHOLD come from the heap and up to GLIBC_TRIM_THRESHOLD of freed heap
    is kept, so repeated calls reuse memory instead of faulting it in anew. Returns what the process's
    timings ran with: "glibc steady (mmap threshold 32 MiB, trim threshold 1024 MiB)", "glibc default"
    (ASAP_CPU_ALLOCATOR=default), or "<libc> default" where the C library is not glibc."""
    if _ALLOCATOR:
        return _ALLOCATOR[0]
    policy = allocator_policy()  # the C library's default, until set here
    if platform.libc_ver()[0] == "glibc" and os.environ.get("ASAP_CPU_ALLOCATOR", "steady") != "default":
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD) == 1 and \
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD) == 1:
            policy = (f"glibc steady (mmap threshold {GLIBC_MMAP_THRESHOLD >> 20} MiB, trim threshold "
                      f"{GLIBC_TRIM_THRESHOLD >> 20} MiB)")
    _ALLOCATOR.append(policy)
    return policy


def allocator_policy() -> str:
    """The CPU allocator policy in effect in this process: the one ``steady_allocator`` set, else the C
    library's default."""
    return _ALLOCATOR[0] if _ALLOCATOR else f"{platform.libc_ver()[0] or 'libc'} default"


def time_module(fn: Callable, inputs: Any = (), warmup: int = 5, iters: int = 20,
                device: str | torch.device = "cpu", threads: int | None = None, steady: bool = True) -> dict:
    """Time ``fn(*inputs)`` (a module or any callable; ``inputs`` a tensor or a tuple of arguments).

    Returns {"median_ms", "p10_ms", "p90_ms", "mean_ms", "n", "timer", "threads", "allocator"} with
    ``timer`` "cuda_events" or "perf_counter", ``threads`` the torch CPU threads it ran with (see
    ``cpu_threads``) and ``allocator`` the CPU allocator policy it ran with (``steady_allocator``, set
    before a CPU timing unless ``steady`` is False; None on a GPU). The inputs must already be on ``device``.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"time_module needs iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    args = _as_args(inputs)
    device = torch.device(device)
    times: list[float] = []
    n_threads = cpu_threads(threads)
    allocator = None if device.type != "cpu" else steady_allocator() if steady else allocator_policy()
    with torch.inference_mode(), torch_threads(n_threads):
        for _ in range(warmup):  # cudnn autotuning, allocator growth, lazy init, CPU caches
            fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            for start, end in zip(starts, ends):
                start.record()
                fn(*args)
                end.record()
            torch.cuda.synchronize(device)
            times = [start.elapsed_time(end) for start, end in zip(starts, ends)]  # ms
            timer = "cuda_events"
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                fn(*args)
                times.append((time.perf_counter() - t0) * 1e3)
            timer = "perf_counter"
    return {**summarize_ms(times), "timer": timer, "threads": n_threads, "allocator": allocator}


PEAK_SIZES = {"cuda": 8192, "cpu": 1024}  # square matmul side: seconds-scale on neither


def matmul_peak(device: torch.device, precision: str, n: int | None = None, iters: int = 10) -> dict:
    """The device's rate on one n x n x n matmul (``time_module``'s median of ``iters``
    after 3 warm-ups): "bf16" in bfloat16, "fp32" in float32 with TF32 off (as the fp32 rows run).
    {"tflops", "n", "ms", "precision", "dtype", "timer"}."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    device = torch.device(device)
    n = n or PEAK_SIZES.get(device.type, 1024)
    dtype = torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)  # random, never zeros
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        # at the caller's CPU threads (e.g. benchmarks.training --threads), as the steps beside it run
        # the allocator left as it is (a matmul's rate does not depend on it; training processes sample it)
        t = time_module(lambda: a @ b, warmup=3, iters=iters, device=device, threads=torch.get_num_threads(),
                        steady=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    seconds = t["median_ms"] / 1e3
    return {"precision": precision, "dtype": str(dtype).removeprefix("torch."), "n": n, "ms": seconds * 1e3,
            "tflops": 2 * n ** 3 / seconds / 1e12, "timer": t["timer"]}


HOST_MATMUL_N = {"cpu": 1024, "cuda": 4096}  # a host-speed sample's square matmul: well under a second on either
HOST_MATMUL_ITERS = 20


def host_rate(device: str | torch.device, precision: str = "fp32", threads: int | None = None) -> dict:
    """How fast the host is now: ``matmul_peak`` of one HOST_MATMUL_N matmul (median of
    HOST_MATMUL_ITERS) at ``threads`` CPU threads (``cpu_threads``' policy, as ``time_module`` times).
    {"tflops" (4 decimals), "precision", "n"}. On a shared machine this moves by tens of percent from
    minute to minute, and a time measured beside it moves with it: records keep the two together."""
    device = torch.device(device)
    with torch_threads(cpu_threads(threads)):
        peak = matmul_peak(device, precision, n=HOST_MATMUL_N.get(device.type), iters=HOST_MATMUL_ITERS)
    return {"tflops": round(peak["tflops"], 4), "precision": peak["precision"], "n": peak["n"]}


def with_host_rate(measure: Callable[[], dict], device: str | torch.device, precision: str = "fp32",
                   threads: int | None = None) -> dict:
    """``measure()`` (a timing that returns a dict, e.g. ``time_module``'s) between two ``host_rate``
    samples at the same ``threads``: its dict with "host_matmul_tflops" (the mean of the two),
    "host_matmul_tflops_start" and "host_matmul_tflops_end" added."""
    start = host_rate(device, precision, threads)["tflops"]
    result = measure()
    end = host_rate(device, precision, threads)["tflops"]
    return {**result, "host_matmul_tflops": round((start + end) / 2, 4), "host_matmul_tflops_start": start,
            "host_matmul_tflops_end": end}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str | torch.device = "cpu", precision: str = "fp32") -> dict:
    """What a timing was measured on: device name, precision, library versions, CPU model and threads."""
    device = torch.device(device)
    is_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if is_cuda else _cpu_model()
    return {
        "device": device.type,
        "device_name": name,
        "precision": precision,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if is_cuda else None,
        "cudnn": torch.backends.cudnn.version() if is_cuda else None,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def device_slug(info: dict) -> str:
    """A file-name-safe device tag: "cpu", or the GPU's name ("nvidia-h100-80gb-hbm3")."""
    if info["device"] != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", info["device_name"].lower()).strip("-") or "cuda"


def time_asapnet(model, labels: torch.Tensor, warmup: int = 5, iters: int = 20,
                 device: str | torch.device = "cpu", threads: int | None = None) -> dict:
    """End-to-end time of an ASAP-Net generator plus its split into the low-res stream (the conv net
    predicting the tile parameters) and the full-resolution pixelwise MLP (paper Fig. 4).
    Returns time_module's dict for the whole model with ``lr_ms`` and ``hr_ms`` (medians) added."""
    from asap.models.pixelwise import pixelwise_mlp

    c = model.config
    timing = dict(warmup=warmup, iters=iters, device=device, threads=threads)
    row = time_module(model, labels, **timing)
    with torch.inference_mode():
        encoded = model.encode(labels)              # (1, C, H, W) one-hot
        tile_params = model.tile_params(encoded)    # (1, P, H/S, W/S)
    hr = encoded[:, :c.hr_in_channels]
    row["lr_ms"] = time_module(model.tile_params, encoded, **timing)["median_ms"]
    row["hr_ms"] = time_module(
        lambda: pixelwise_mlp(hr, tile_params, c.mlp_channels, c.downsampling, c.positional_encoding),
        **timing)["median_ms"]
    return row
