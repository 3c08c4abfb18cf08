"""Phase 2: inference speed, everything measured in the same run on the same device.

Rows (one dict each, see ``benchmarks/campaign/__init__.py`` for the fields):
- ASAP-Net (lr_max_width 1024, S from Sec. 3.2) at every size: the reference path (``forward``, eager,
  fp32 with TF32 off, and bf16 autocast) and the fast path (``asap.models.fast.FastGenerator``: fused
  Triton MLP on class indices, channels-last low-res stream with the InstanceNorm + ReLU kernels,
  CUDA graph) in fp32 and bf16; batch-1 latency (median / p10 / p90 ms), batch-B images/s, the low-res
  stream / pixelwise MLP split (Fig. 4; the low-res stream also with PyTorch's norms, ``lr_torch_norm_ms``;
  ``lr_convs``: whether its wide convs ran as cuDNN convolutions, cuBLAS GEMMs or GEMMs split by tap,
  the stream timed in each form, and any form that failed there),
  the MLP's unavoidable bytes (labels in, parameter grid in, image out) over its time, against the
  device's copy bandwidth measured first, and the fast path's max abs difference from the fp32 reference;
- pix2pixHD and SPADE, full width and slim (Fig. 8), fp32 and bf16 autocast, batch 1 and batch B.

ASAP-Net rows run first at every size (they carry the issue's targets), then the baselines, bf16 at
every size before fp32 (``baseline_order``); each row is skipped, and named in ``skipped_for_time``,
once the phase's time is up.
"""

from __future__ import annotations

import os
import time

import torch

from asap.metrics.runtime import precision_mode, time_module
from benchmarks.campaign.common import log
from benchmarks.campaign.settings import InferenceSettings
from benchmarks.roofline import matmul_peak



def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split("x"))
    return h, w


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(settings: InferenceSettings, device: torch.device) -> dict:
    """Device-to-device copy of ``copy_mib`` MiB: bytes read + written per second (the memory ceiling)."""
    n = settings.copy_mib * 2**20 // 4
    src = torch.rand(n, device=device)  # random, not zeros: never time on zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    t = time_module(lambda: dst.copy_(src), warmup=0, iters=settings.copy_iters, device=device)
    bytes_moved = 2 * src.numel() * src.element_size()
    return {"bytes_per_copy": bytes_moved, "median_ms": t["median_ms"],
            "gb_per_s": bytes_moved / (t["median_ms"] / 1e3) / 1e9, "timer": t["timer"]}


class Memory:
    """Peak device memory of one row above what was allocated before it (CUDA only)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            self.before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    def peak(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(device=self.device) - self.before


def _timing(fn, inputs, settings: InferenceSettings, device, batch: int, baseline: bool = False) -> dict:
    warmup, iters = (settings.baseline_warmup, settings.baseline_iters) if baseline else (settings.warmup, settings.iters)
    one = time_module(fn, inputs[0], warmup=warmup, iters=iters, device=device)
    many = time_module(fn, inputs[1], warmup=settings.batch_warmup, iters=max(1, settings.batch_iters),
                       device=device)
    return {"batch1_ms": {k: one[k] for k in ("median_ms", "p10_ms", "p90_ms", "n")},
            f"batch{batch}_ms": many["median_ms"], "images_per_s": batch / (many["median_ms"] / 1e3),
            "timer": one["timer"]}


# ----------------------------------------------------------------------------------------------
# ASAP-Net: reference and fast path
# ----------------------------------------------------------------------------------------------

def _asapnet_and_labels(size: str, settings: InferenceSettings, device: torch.device):
    """ASAP-Net for ``size`` (seeded: the same weights every time) in eval mode, and the seeded batch-1
    and batch-B label maps its rows run on."""
    from asap.models.asapnet import asapnet
    from benchmarks.inference import spread_mlps

    H, W = parse_size(size)
    n_cls = settings.num_classes[size]
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 80 M parameters init slowly on a CPU
        extra = {"downsampling": settings.downsampling} if settings.downsampling else {}
        model = asapnet(n_cls, H, W, lr_max_width=settings.lr_max_width, **extra)
    spread_mlps(model)  # O(1) per-tile MLPs, so the fast-vs-reference difference means something
    gen = torch.Generator().manual_seed(1)
    labels1 = torch.randint(0, n_cls, (1, H, W), generator=gen).to(device)
    labelsB = torch.randint(0, n_cls, (settings.batch, H, W), generator=gen).to(device)
    return model.eval(), labels1, labelsB


def forward_work(model, labels1) -> dict:
    """What ASAP-Net's batch-1 forward cannot avoid, whatever runs it: the low-res stream's arithmetic
    (counted: torch.utils.flop_counter) and its weights (read once), the pixelwise MLP's arithmetic.
    The same for the reference and the fast path (one function)."""
    from asap.models.pixelwise import pixelwise_mlp
    from benchmarks.roofline import count_flops

    c = model.config
    with precision_mode("fp32", labels1.device), torch.inference_mode():
        onehot = model.encode(labels1)
        out = []  # the counted call's parameters serve the MLP's count: the stream runs once
        lr_flops = count_flops(lambda: out.append(model.tile_params(onehot)))
        params = out[0]
        hr_flops = count_flops(lambda: pixelwise_mlp(onehot[:, :c.hr_in_channels], params, c.mlp_channels,
                                                     c.downsampling, c.positional_encoding))
    return {"lr_flops": lr_flops, "lr_weights": sum(p.numel() for p in model.lowres_stream.parameters()),
            "hr_flops": hr_flops}


def floors(row: dict, work: dict, copy: dict, peak: dict | None) -> dict:
    """The row's floors on this device: each stream's time at the matmul rate (``peak``, this precision)
    or at the copy bandwidth, whichever is the slower (weights in the row's precision; the MLP's bytes
    as ``hr_min_bytes``), and the forward's (their sum); each measured time over its floor."""
    if not peak or "lr_ms" not in row:
        return {}
    rate, bandwidth = peak["tflops"] * 1e12, copy["gb_per_s"] * 1e9
    elem = 2 if row["precision"] == "bf16" else 4
    lr = max(work["lr_flops"] / rate, work["lr_weights"] * elem / bandwidth) * 1e3
    hr = max(work["hr_flops"] / rate, row.get("hr_min_bytes", 0) / bandwidth) * 1e3
    out = {**work, "lr_floor_ms": lr, "hr_floor_ms": hr, "floor_ms": lr + hr, "lr_over_floor": row["lr_ms"] / lr,
           "over_floor": row["batch1_ms"]["median_ms"] / (lr + hr)}
    if row.get("hr_ms"):
        out["hr_over_floor"] = row["hr_ms"] / hr
    return out


def asapnet_rows(size: str, settings: InferenceSettings, device: torch.device, copy: dict, until: float,
                 skipped: list, done, fused_env: dict | None = None, peaks: dict | None = None) -> None:
    """ASAP-Net's rows at ``size``: the reference and the fast path per precision. ``fused_env``:
    {precision: ASAP_FUSED_MLP}, set before each fast row of that precision (FastGenerator reads it)
    and recorded in the row. ``peaks``: {precision: matmul_peak}, for each row's floors (``floors``)."""
    from asap.models.fast import FastGenerator
    from asap.models.pixelwise import pixelwise_mlp
    from benchmarks.inference import mlp_bytes

    H, W = parse_size(size)
    n_cls = settings.num_classes[size]
    model, labels1, labelsB = _asapnet_and_labels(size, settings, device)
    c = model.config
    S, P, channels = c.downsampling, c.num_params, c.mlp_channels
    base = {"model": "asapnet", "arch": "asapnet", "size": size, "height": H, "width": W, "S": S, "P": P,
            "num_classes": n_cls, "lr_max_width": settings.lr_max_width,
            "params": sum(p.numel() for p in model.parameters())}
    with precision_mode("fp32", device), torch.inference_mode():
        reference = model(labels1).float()
    work = forward_work(model, labels1)
    plan = [("reference", p) for p in settings.precisions] + [("fast", p) for p in settings.precisions]
    if settings.compile:
        plan.append(("fast-compiled", "bf16"))
    for path, precision in plan:
        label = f"asapnet {path} {precision} {size}"
        if time.perf_counter() > until:
            skipped.append(label)
            continue
        row = {**base, "path": path, "precision": precision}
        t0 = time.perf_counter()
        memory = Memory(device)
        try:
            if path == "reference":
                with precision_mode(precision, device), torch.inference_mode():
                    row.update(_timing(model, (labels1, labelsB), settings, device, settings.batch))
                    onehot = model.encode(labels1)                       # (1, C, H, W)
                    params = model.tile_params(onehot)                   # (1, P, H/S, W/S)
                    hr_in = onehot[:, :c.hr_in_channels]
                    split = dict(warmup=min(settings.warmup, 5), iters=settings.split_iters, device=device)
                    row["lr_ms"] = time_module(model.tile_params, onehot, **split)["median_ms"]
                    row["hr_ms"] = time_module(lambda: pixelwise_mlp(hr_in, params, channels, S,
                                                                     c.positional_encoding), **split)["median_ms"]
                    elem = 2 if precision == "bf16" else 4
                    row["hr_min_bytes"] = mlp_bytes(1, H, W, S, P, hr_in.shape[1] * 4, elem, elem)
            else:
                fused = (fused_env or {}).get(precision)
                if fused is not None:
                    os.environ["ASAP_FUSED_MLP"] = fused
                    row["asap_fused_mlp"] = fused
                fast = FastGenerator(model, precision, compile=path == "fast-compiled")
                row.update(fused_kernel=fast.fused, fused_norm=fast.fused_norm, cuda_graph=fast.cuda_graph,
                           compiled=path == "fast-compiled")
                with precision_mode("fp32", device):
                    out = fast(labels1).float()
                    row["max_abs_diff_vs_reference_fp32"] = (out - reference).abs().max().item()
                    row.update(_timing(fast, (labels1, labelsB), settings, device, settings.batch))
                    row.update(fast_split(fast, labels1, settings, device))
                del fast
            if "hr_min_bytes" in row and row.get("hr_ms"):
                rate = row["hr_min_bytes"] / (row["hr_ms"] / 1e3)
                row["hr_gb_per_s"] = rate / 1e9
                row["hr_fraction_of_copy_bandwidth"] = rate / (copy["gb_per_s"] * 1e9)
                # Time the MLP would take at the copy bandwidth: the memory-traffic bound of the kernel.
                row["hr_bound_ms"] = row["hr_min_bytes"] / (copy["gb_per_s"] * 1e9) * 1e3
            row.update(floors(row, work, copy, (peaks or {}).get(precision)))
        except Exception as err:  # a row that fails is recorded; the phase goes on
            row["error"] = f"{type(err).__name__}: {str(err)[:400]}"
        row["peak_memory_bytes"] = memory.peak()
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        done(row)
    del model


def fast_split(fast, labels: torch.Tensor, settings: InferenceSettings, device: torch.device) -> dict:
    """The fast path's low-res stream (tent filter from indices + convs) and pixelwise MLP, timed apart
    (eagerly: inside the CUDA graph they run back to back)."""
    from asap.models import pixelwise_fused
    from asap.models.asapnet import tent_downsample
    from asap.models.pixelwise import pixelwise_mlp
    from benchmarks.inference import mlp_bytes

    c = fast.config
    n = c.num_classes + int(c.dontcare)
    split = dict(warmup=min(settings.warmup, 5), iters=settings.split_iters, device=device)
    with torch.inference_mode():
        if fast.fused:
            def lowres_input():
                return pixelwise_fused.tent_onehot(labels, n, c.s1, fast.dtype)
        else:
            onehot = torch.nn.functional.one_hot(labels.long(), n).permute(0, 3, 1, 2).to(fast.dtype)

            def lowres_input():
                return tent_downsample(onehot, c.s1).contiguous(memory_format=torch.channels_last)
        stream = fast.lowres_for(lowres_input())  # the form the fast path runs (conv_gemm: timed and chosen)
        lr_ms = time_module(lambda: stream(lowres_input()), **split)["median_ms"]
        lr_convs = fast.lowres_choice.get((tuple(lowres_input().shape), fast.dtype))
        lr_torch_norm_ms = None
        if fast.fused_norm:  # the same stream with PyTorch's InstanceNorm + ReLU: what the norm kernels save
            lr_torch_norm_ms = time_module(lambda: fast.lowres_stream_torch_norm(lowres_input()), **split)["median_ms"]
        params = stream(lowres_input())
        if fast.fused:
            hr_ms = time_module(lambda: pixelwise_fused.fused_pixelwise_mlp(
                labels, params, c.mlp_channels, c.downsampling, c.positional_encoding, num_classes=n,
                check_labels=False, input_precision=fast.input_precision), **split)["median_ms"]
            label_bytes = labels.element_size()
        else:
            hr_ms = time_module(lambda: pixelwise_mlp(onehot, params, c.mlp_channels, c.downsampling,
                                                      c.positional_encoding), **split)["median_ms"]
            label_bytes = n * onehot.element_size()
    H, W = labels.shape[-2:]
    return {"lr_ms": lr_ms, "hr_ms": hr_ms, "lr_torch_norm_ms": lr_torch_norm_ms, "lr_convs": lr_convs,
            "hr_min_bytes": mlp_bytes(1, H, W, c.downsampling, c.num_params, label_bytes,
                                      params.element_size(), params.element_size())}


def profile_fast_rows(rows: list[dict], settings: InferenceSettings, device: torch.device, until: float,
                      fused_env: dict | None, progress) -> None:
    """Where the fast path's time goes, for its timed rows of the profiled precisions, after every
    timing and in a child process (benchmarks/campaign/breakdown.py ``in_child``: the profiler cannot
    touch a timing of this process): each row's generator and input built again (seeded), its
    profile in the row as ``kernels``; a row the child did not reach says why there instead."""
    from dataclasses import asdict

    from benchmarks.campaign.breakdown import in_child, profiled

    todo = [r for r in rows if r.get("model") == "asapnet" and r.get("path") == "fast" and "error" not in r
            and r["precision"] in settings.profile_precisions]
    if not todo:
        return
    job = {"settings": asdict(settings), "device": str(device),
           "rows": [{"size": r["size"], "precision": r["precision"], "fused": (fused_env or {}).get(r["precision"])}
                    for r in todo]}
    got = in_child("benchmarks.campaign.inference:profile_job", job, until)
    for r in todo:
        r["kernels"] = profiled(got, profile_key(r))
    progress()


def profile_job(job: dict, emit) -> dict:
    """The child's side of ``profile_fast_rows``: {"<size>/<precision>": kernels}, emitted row by row."""
    from asap.models.fast import FastGenerator
    from benchmarks.campaign.breakdown import describe, profile_rows

    settings = InferenceSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["settings"].items()})
    device = torch.device(job["device"])
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the timed rows ran

    def measure(row):
        model, labels1, _ = _asapnet_and_labels(row["size"], settings, device)
        fast = FastGenerator(model, row["precision"])
        with precision_mode("fp32", device):
            fast(labels1)  # its first call times the wide convs' forms again and keeps the fastest
            k = fast_kernels(fast, labels1, settings, device)
        return k, f"per forward {describe(k['forward'])}; the low-res stream alone {describe(k['lowres'])}"

    return profile_rows(job["rows"], emit, key=profile_key,
                        label=lambda row: f"[phase 2] asapnet fast {row['precision']} {row['size']}", measure=measure)


def profile_key(row: dict) -> str:
    """A profiled fast row's key in the child's result."""
    return f"{row['size']}/{row['precision']}"


def fast_kernels(fast, labels: torch.Tensor, settings: InferenceSettings, device: torch.device) -> dict:
    """Where the fast path's time goes (benchmarks/campaign/breakdown.py): its kernels per forward, for
    the whole forward and for the low-res stream alone, and the form its wide convs ran in."""
    from asap.models import pixelwise_fused
    from asap.models.asapnet import tent_downsample
    from benchmarks.campaign.breakdown import kernel_breakdown

    c = fast.config
    n = c.num_classes + int(c.dontcare)
    with torch.inference_mode():
        if fast.fused:
            lowres_in = pixelwise_fused.tent_onehot(labels, n, c.s1, fast.dtype)
        else:
            onehot = torch.nn.functional.one_hot(labels.long(), n).permute(0, 3, 1, 2).to(fast.dtype)
            lowres_in = tent_downsample(onehot, c.s1)
        lowres_in = lowres_in.contiguous(memory_format=torch.channels_last)
        stream = fast.lowres_for(lowres_in)
        return {"forward": kernel_breakdown(lambda: fast._forward_impl(labels, None), settings.profile_iters, device),
                "lowres": kernel_breakdown(lambda: stream(lowres_in), settings.profile_iters, device),
                "lr_convs": fast.lowres_choice.get((tuple(lowres_in.shape), lowres_in.dtype)),
                "fused_kernel": fast.fused, "fused_norm": fast.fused_norm}


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------

def baseline_order(settings: InferenceSettings) -> list[tuple[str, str]]:
    """(precision, size) in the order phase 2 times the baselines: every size in bf16 first, then
    every size in fp32. cuDNN's autotuning of a large fp32 convolution net takes most of a row's time
    (57 s for SPADE fp32 at 512x1024 on the H200, 2 s in bf16), so when the phase's time runs out it
    is the fp32 rows of the largest sizes that are skipped, not the bf16 ones the speed targets read."""
    precisions = sorted(settings.precisions, key=lambda p: p != "bf16")  # stable: bf16 first
    return [(p, size) for p in precisions for size in settings.sizes]


def baseline_rows(size: str, precision: str, settings: InferenceSettings, device: torch.device, until: float,
                  skipped: list, done) -> None:
    """Every baseline's row at ``size`` in ``precision`` (one model each, seeded: the same weights
    whichever precision builds it)."""
    from asap.models import baselines

    H, W = parse_size(size)
    n_cls = settings.num_classes[size]
    gen = torch.Generator().manual_seed(1)
    labels1 = torch.randint(0, n_cls, (1, H, W), generator=gen).to(device)
    labelsB = torch.randint(0, n_cls, (settings.batch, H, W), generator=gen).to(device)
    for name, spec in settings.baselines.items():
        if time.perf_counter() > until:
            skipped.append(f"{name} {precision} {size}")
            continue
        options = {k: v for k, v in spec.items() if k != "arch"}
        torch.manual_seed(0)
        with torch.device(device):
            if spec["arch"] == "pix2pixhd":
                model = baselines.Pix2PixHDGenerator(baselines.Pix2PixHDConfig(num_classes=n_cls, **options))
            else:
                model = baselines.SPADEGenerator(baselines.SPADEConfig(num_classes=n_cls, **options))
        model = model.eval()
        row = {"model": name, "arch": spec["arch"], "width_mult": spec.get("width_mult", 1.0), "size": size,
               "height": H, "width": W, "num_classes": n_cls, "path": "reference", "precision": precision,
               "params": sum(p.numel() for p in model.parameters())}
        t0 = time.perf_counter()
        memory = Memory(device)
        try:
            with precision_mode(precision, device):
                row.update(_timing(model, (labels1, labelsB), settings, device, settings.batch, baseline=True))
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err)[:400]}"
        row["peak_memory_bytes"] = memory.peak()
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        done(row)
        del model


def _log_row(row: dict) -> None:
    if "error" in row:
        log(f"[phase 2] {row['model']} {row['path']} {row['precision']} {row['size']}: ERROR {row['error'][:200]}")
        return
    split = f" (low-res {row['lr_ms']:.3f} + pixelwise {row['hr_ms']:.3f})" if row.get("hr_ms") is not None else ""
    if row.get("lr_torch_norm_ms") is not None:
        split += f" [low-res with PyTorch's norms {row['lr_torch_norm_ms']:.3f}]"
    if row.get("lr_convs"):
        c = row["lr_convs"]
        split += (f" [wide convs as {c['use']}: " + ", ".join(f"{k} {v:.3f}" for k, v in c.get("ms", {}).items())
                  + (f", by {c['timed']}" if c.get("timed") else "")
                  + "".join(f", {k} failed: {v[:120]}" for k, v in (c.get("failed") or {}).items()) + "]")
    if row.get("floor_ms"):
        split += (f" [floor {row['floor_ms']:.3f} ms: low-res {row['lr_floor_ms']:.3f} + pixelwise "
                  f"{row['hr_floor_ms']:.3f}; {row['over_floor']:.1f}x it]")
    log(f"[phase 2] {row['model']:>15} {row['path']:>13} {row['precision']} {row['size']:>9}: "
        f"{row['batch1_ms']['median_ms']:8.3f} ms batch 1{split}, {row['images_per_s']:8.1f} img/s")


# ----------------------------------------------------------------------------------------------
# The phase
# ----------------------------------------------------------------------------------------------

def _find(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and "error" not in r:
            return r
    return None


def targets(rows: list[dict]) -> dict:
    """The issue's inference targets, each with the measured value and by how much it is met/missed."""
    out = {}

    def check(name, value, target, smaller_is_better=True):
        if value is None:
            out[name] = {"measured": None, "target": target, "met": None}
            return
        met = value <= target if smaller_is_better else value >= target
        out[name] = {"measured": value, "target": target, "met": met,
                     "ratio_to_target": value / target}

    for size, ms in (("1024x1024", 1.0), ("512x1024", 0.8)):
        fast = _find(rows, model="asapnet", path="fast", precision="bf16", size=size)
        ref = _find(rows, model="asapnet", path="reference", precision="fp32", size=size)
        check(f"{size} fast bf16 batch-1 ms <= {ms}", fast and fast["batch1_ms"]["median_ms"], ms)
        if size == "1024x1024":
            speedup = ref["batch1_ms"]["median_ms"] / fast["batch1_ms"]["median_ms"] if fast and ref else None
            check(f"{size} fast bf16 >= 8x the fp32 reference", speedup, 8.0, smaller_is_better=False)
    check("1024x1024 fast bf16 batch-1 ms <= 0.5 (stretch)",
          (r := _find(rows, model="asapnet", path="fast", precision="bf16", size="1024x1024")) and
          r["batch1_ms"]["median_ms"], 0.5)
    for name, t in out.items():  # the ms targets: the floor this device's measured rates set for that row
        size = name.split()[0]
        fast = _find(rows, model="asapnet", path="fast", precision="bf16", size=size)
        if "batch-1 ms" in name and fast and fast.get("floor_ms"):
            t.update(bound=fast["floor_ms"], bound_is="ms floor: the matmul rate and copy bandwidth measured here")
    kernel = [r["hr_ms"] / r["hr_bound_ms"] for r in rows
              if r.get("path") == "fast" and r.get("fused_kernel") and r.get("hr_bound_ms") and "error" not in r]
    check("pixelwise kernel time / memory-traffic bound <= 2 (worst row)", max(kernel) if kernel else None, 2.0)
    return out


def speedups(rows: list[dict]) -> list[dict]:
    """Per size and precision: the fast path against the reference and every baseline (batch-1 medians)."""
    out = []
    for fast in (r for r in rows if r.get("path") == "fast" and "error" not in r):
        entry = {"size": fast["size"], "precision": fast["precision"], "fast_ms": fast["batch1_ms"]["median_ms"]}
        for other in rows:
            if other is fast or "error" in other or other["size"] != fast["size"] or other.get("path") == "fast":
                continue
            if other["model"] == "asapnet":  # the reference path, in each precision
                entry[f"vs_reference_{other['precision']}"] = other["batch1_ms"]["median_ms"] / entry["fast_ms"]
            elif other["precision"] == fast["precision"]:
                entry[f"vs_{other['model']}"] = other["batch1_ms"]["median_ms"] / entry["fast_ms"]
        out.append(entry)
    return out


def run_phase(settings: InferenceSettings, device: torch.device, until: float, on_progress=None,
              fused_env: dict | None = None) -> dict:
    """The rows; ``fused_env``: {precision: ASAP_FUSED_MLP}, phase 1's verdict for each (the campaign's)."""
    saved_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: let cuDNN pick its kernels
    try:
        copy = copy_bandwidth(settings, device)
        log(f"[phase 2] device copy: {copy['gb_per_s']:.0f} GB/s (read + write)")
        peaks = {p: matmul_peak(device, p, n=settings.peak_n) for p in settings.precisions}
        log("[phase 2] matmul peak: " + ", ".join(f"{p} {v['tflops']:.1f} TFLOP/s" for p, v in peaks.items()))
        rows: list[dict] = []
        skipped: list[str] = []

        def done(row: dict) -> None:  # logged, and a partial phase file written: a kill keeps the rows
            rows.append(row)
            _log_row(row)
            if on_progress:
                on_progress({"copy_bandwidth": copy, "matmul_peak": peaks, "rows": rows, "skipped_for_time": skipped})

        profiling = bool(settings.profile_iters and settings.profile_precisions)
        rows_until = until - (settings.profile_reserve_s if profiling else 0.0)
        for size in settings.sizes:
            asapnet_rows(size, settings, device, copy, rows_until, skipped, done, fused_env, peaks)
        for precision, size in baseline_order(settings):
            baseline_rows(size, precision, settings, device, rows_until, skipped, done)
        if profiling:  # last, apart from every timing, in the phase's time kept for it
            profile_fast_rows(rows, settings, device, until, fused_env,
                              lambda: on_progress and on_progress({"copy_bandwidth": copy, "matmul_peak": peaks,
                                                                   "rows": rows, "skipped_for_time": skipped}))
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
    errors = [f"{r['model']} {r['path']} {r['precision']} {r['size']}: {r['error']}" for r in rows if "error" in r]
    return {"copy_bandwidth": copy, "matmul_peak": peaks, "rows": rows, "speedups": speedups(rows),
            "targets": targets(rows),
            "skipped_for_time": skipped, "row_errors": errors, "median_ms": _nested(rows)}


def _nested(rows: list[dict]) -> dict:
    """{"asapnet/fast/bf16": {size: batch-1 median ms}} for quick reading and plotting."""
    out: dict = {}
    for r in rows:
        if "error" not in r:
            out.setdefault(f"{r['model']}/{r['path']}/{r['precision']}", {})[r["size"]] = r["batch1_ms"]["median_ms"]
    return out
