"""Inference benchmark: the reference generator vs the fast path, measured in the same run.

    python -m benchmarks.inference --out metrics/inference-h100.json              # GPU: all sizes
    python -m benchmarks.inference --out metrics/inference-cpu.json \\
        --sizes 256x512 --iters 2 --batch 2 --lr-max-width 64                      # CPU: a quick look

Per size (default 256x512, 512x1024, 512x512, 1024x1024; S from Sec. 3.2) and path it records
batch-1 latency (median / p10 / p90 ms), batch-B images/s, the pixelwise MLP alone (ms, bytes it
must move, GB/s achieved), peak memory and the fast path's max abs difference from the reference.

- reference: ``ASAPNetGenerator.forward`` in fp32, eager (what training uses);
- fast-<precision>: ``asap.models.fast.FastGenerator`` (fused Triton MLP on class indices,
  channels-last low-res stream, the forward captured in a CUDA graph; ``--compile`` adds
  torch.compile). On the CPU it falls back to the reference MLP and is labelled so.

GPU timings use CUDA events after warm-up; CPU timings use perf_counter. Weights are random (runtime
does not depend on them). The CPU memory section compares the reference MLP, which keeps parameters
at grid resolution, with a naive upsample-then-multiply implementation (``naive_pixelwise_mlp``),
using the CPU allocator's own accounting (torch.profiler, profile_memory). The ONNX section
(``onnx_cpu``; ``--no-onnx`` skips it) times the same generator exported as `asap export` writes it,
ONNX Runtime against PyTorch, both on the CPU with the same threads, at every size (on a GPU run too),
and records their max abs difference; without onnxruntime installed it records why it did not run.

Imports only torch/numpy/stdlib and asap (onnxruntime and onnxscript for the ONNX section, when
installed): it runs on the GPU machine without Ray, DVC or MLflow.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from asap.files import write_text_atomic
from asap.models.asapnet import asapnet
from asap.models.fast import PRECISIONS, FastGenerator
from asap.models.pixelwise import LEAKY_SLOPE, mlp_layout, pixelwise_mlp, positional_encoding

DEFAULT_SIZES = "256x512,512x1024,512x512,1024x1024"  # the issue's / paper's runtime resolutions


# ----------------------------------------------------------------------------------------------
# The naive baseline and the CPU memory measure
# ----------------------------------------------------------------------------------------------

def naive_pixelwise_mlp(x: torch.Tensor, params: torch.Tensor, channels: list[int], tile: int,
                        positional: bool = True) -> torch.Tensor:
    """Eq. 2 taken literally: nearest-upsample the parameters to full resolution, (B, P, H, W), then
    run every layer as a per-pixel product. Memory grows with H * W * P (what the reference avoids)."""
    B, _, H, W = x.shape
    full = F.interpolate(params, scale_factor=tile, mode="nearest")  # (B, P, H, W)
    if positional:
        enc = positional_encoding(H, W, tile, device=x.device, dtype=x.dtype)
        x = torch.cat([x, enc.expand(B, *enc.shape)], dim=1)
    layers = mlp_layout(channels)
    for i, layer in enumerate(layers):
        weight = full[:, layer.weight].reshape(B, layer.nci, layer.nco, H, W)
        bias = full[:, layer.bias]
        x = (x[:, :, None] * weight).sum(dim=1) + bias  # (B, nci, nco, H, W) products -> (B, nco, H, W)
        x = F.leaky_relu(x, LEAKY_SLOPE) if i < len(layers) - 1 else torch.tanh(x)
    return x


def peak_cpu_bytes(fn) -> int:
    """Peak of CPU bytes allocated while ``fn()`` runs, above what was allocated before it, from the
    allocator events torch.profiler records (deterministic: no timing, no process RSS)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0),
                 key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    if not mem:
        return 0
    start = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - start


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, iters: int, warmup: int, device: torch.device) -> list[float]:
    """Per-call milliseconds after ``warmup`` calls (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    if device.type == "cuda":
        pairs = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in pairs]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary(times: list[float]) -> dict:
    """Median and 10th / 90th percentiles (linear interpolation between order statistics)."""
    t = sorted(times)

    def pct(q):
        i = q * (len(t) - 1)
        lo = int(i)
        return t[lo] + (t[min(lo + 1, len(t) - 1)] - t[lo]) * (i - lo)
    return {"median": statistics.median(t), "p10": pct(0.1), "p90": pct(0.9), "n": len(t)}


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    # the fp32 reference's convolutions run in TF32 when cuDNN allows it (torch default)
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        info["name"] = "cpu"
    return info


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    match = re.search(r"(h100|h200|a100|l40s?|l4|a10g?|v100|t4|rtx ?\d{4}( ti)?)", name)
    return re.sub(r"\W+", "", (match.group(1) if match else name)).strip("-") or "cuda"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", item)
        if not m:
            raise SystemExit(f"--sizes: {item!r} is not HxW (e.g. 512x1024)")
        sizes.append((int(m.group(1)), int(m.group(2))))
    return sizes


def mlp_bytes(B, H, W, S, P, label_bytes, param_bytes, out_bytes, out_ch=3) -> int:
    """The bytes the fused MLP cannot avoid moving: labels in, parameter grid in, image out."""
    return B * H * W * (label_bytes + out_ch * out_bytes) + B * (H // S) * (W // S) * P * param_bytes


def spread_mlps(model) -> None:
    """Random weights, but per-tile MLPs with O(1) activations (weights N(0, 1/fan-in)) rather than the
    near-zero ones of the initialisation, so the fast-vs-reference difference means something."""
    gen = torch.Generator().manual_seed(2)
    chunks = []
    for layer in mlp_layout(model.config.mlp_channels):
        chunks += [0.1 * torch.randn(layer.nco, generator=gen),
                   torch.randn(layer.nci * layer.nco, generator=gen) * (1.5 / layer.nci ** 0.5)]
    with torch.no_grad():
        model.lowres_stream.model[-1].bias.copy_(torch.cat(chunks))


def bench_model(H, W, args):
    """The generator every path at this size times (the same weights: seeded)."""
    torch.manual_seed(0)
    model = asapnet(args.num_classes, H, W, lr_max_width=args.lr_max_width)
    spread_mlps(model)
    return model.eval()


def bench_size(H, W, args, device) -> tuple[list[dict], dict | None]:
    model = bench_model(H, W, args).to(device)
    c = model.config
    S, P, channels = c.downsampling, c.num_params, c.mlp_channels
    gen = torch.Generator().manual_seed(1)
    labels1 = torch.randint(0, args.num_classes, (1, H, W), generator=gen).to(device)
    labelsB = torch.randint(0, args.num_classes, (args.batch, H, W), generator=gen).to(device)
    base = {"size": f"{H}x{W}", "H": H, "W": W, "S": S, "P": P, "num_classes": args.num_classes,
            "lr_max_width": args.lr_max_width, "batch": args.batch}
    rows = []
    with torch.no_grad():
        reference_out = model(labels1).float()
        onehot1 = model.encode(labels1)
        params1 = model.tile_params(onehot1)

    paths = []
    if "reference" in args.paths:
        paths.append(("reference", "fp32", lambda x: model(x)))
    if "fast" in args.paths:
        for precision in args.precisions:
            paths.append(("fast", precision, None))

    for name, precision, fn in paths:
        row = {**base, "path": name, "precision": precision}
        if device.type == "cuda":
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        if fn is None:
            fast = FastGenerator(model, precision, compile=args.compile, kernel_options=args.kernel_options,
                                 cuda_graph="auto" if args.graph else False, check_labels=not args.no_check,
                                 fused_norm=SWITCH[args.fused_norm], conv_gemm=CONV_GEMM_SWITCH[args.conv_gemm])
            row.update(fused_kernel=fast.fused, fused_norm=fast.fused_norm, conv_gemm=fast.conv_gemm,
                       cuda_graph=fast.cuda_graph, compiled=args.compile, check_labels=fast.check_labels)
            if device.type == "cpu":
                row["note"] = "CPU fallback: reference MLP (the fused kernel needs CUDA)"
            fn = fast
        with torch.no_grad():
            out = fn(labels1).float()
            if name != "reference":
                row["max_abs_diff_vs_reference"] = (out - reference_out).abs().max().item()
            t1 = time_ms(lambda: fn(labels1), args.iters, args.warmup, device)
            row["batch1_ms"] = summary(t1)
            if getattr(fn, "lowres_choice", None):  # conv_gemm="auto": the wide convs' form, timed per shape
                row["lowres_choice"] = [{"shape": list(k[0]), **v} for k, v in fn.lowres_choice.items()]
            if args.batch > 1:
                tB = time_ms(lambda: fn(labelsB), max(1, args.iters // 2), max(1, args.warmup // 2), device)
                row[f"batch{args.batch}_images_per_s"] = args.batch / (statistics.median(tB) / 1e3)
        if device.type == "cuda":
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device) - before

        # the pixelwise MLP alone, on the same parameter grid
        with torch.no_grad():
            if name == "reference":
                mlp = lambda: pixelwise_mlp(onehot1, params1, channels, S, c.positional_encoding)
                nbytes = mlp_bytes(1, H, W, S, P, onehot1.shape[1] * 4, 4, 4)
            elif getattr(fn, "fused", False):
                from asap.models.pixelwise_fused import fused_pixelwise_mlp
                p = params1.to(PRECISIONS[precision][0]).contiguous(memory_format=torch.channels_last)
                mlp = lambda: fused_pixelwise_mlp(labels1, p, channels, S, c.positional_encoding,
                                                  check_labels=False, input_precision=PRECISIONS[precision][1],
                                                  **(args.kernel_options or {}))
                nbytes = mlp_bytes(1, H, W, S, P, labels1.element_size(), p.element_size(), p.element_size())
            else:
                mlp = None
            if mlp is not None:
                tm = time_ms(mlp, args.iters, args.warmup, device)
                row["mlp_ms"] = summary(tm)
                row["mlp_min_bytes"] = nbytes
                row["mlp_gb_per_s"] = nbytes / (row["mlp_ms"]["median"] / 1e3) / 1e9
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("size", "path", "precision") if k in row}
                         | {"batch1_ms": round(row["batch1_ms"]["median"], 3),
                            "mlp_ms": round(row.get("mlp_ms", {}).get("median", float("nan")), 3)}), flush=True)
        del fn

    memory = None
    if device.type == "cpu" and args.memory:
        x = onehot1.cpu()
        p = params1.cpu()
        memory = {"size": f"{H}x{W}", "S": S, "P": P,
                  "grid_params_bytes": p.numel() * 4,
                  "full_res_params_bytes": H * W * P * 4,
                  "reference_peak_bytes": peak_cpu_bytes(lambda: pixelwise_mlp(x, p, channels, S))}
        if memory["full_res_params_bytes"] <= args.naive_max_gb * 2**30:
            memory["naive_peak_bytes"] = peak_cpu_bytes(lambda: naive_pixelwise_mlp(x, p, channels, S))
        else:
            memory["naive_peak_bytes"] = None
            memory["naive_note"] = (f"not run: its (1, P, H, W) parameter tensor alone is "
                                    f"{memory['full_res_params_bytes'] / 2**30:.1f} GiB > --naive-max-gb")
        print(json.dumps(memory), flush=True)
    return rows, memory


def bench_onnx_cpu(H, W, args) -> dict:
    """ONNX Runtime (CPU) against PyTorch (CPU, eager fp32) on the same generator, the same batch-1
    label map and the same number of threads, timed alternately (one call of each per round) so that
    load from other processes hits both alike. The ONNX file is what `asap export` writes (one-hot
    inside, row-mean instance norms), made from the seeded benchmark model."""
    row = {"size": f"{H}x{W}", "H": H, "W": W, "batch": 1}
    try:
        import onnxruntime as ort

        from asap.export import LabelMapGenerator, export_onnx, size_divisor, with_row_mean_norms
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter)
    except ImportError as err:
        row["note"] = f"not run: {err.name} is not installed"
        print(json.dumps(row), flush=True)
        return row
    model = bench_model(H, W, args)
    threads = torch.get_num_threads()
    labels = torch.randint(0, args.num_classes, (1, H, W), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.onnx"
        t0 = time.perf_counter()
        export_onnx(LabelMapGenerator(with_row_mean_norms(model)).eval(), path,
                    {"description": "benchmarks.inference"}, size_divisor(model))
        row["export_s"] = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # ORT's pool threads otherwise spin after each run, starving the PyTorch call that follows
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"labels": labels.numpy()}
    calls = {"pytorch_cpu": lambda: model(labels), "onnxruntime_cpu": lambda: session.run(["image"], feed)}
    times = {name: [] for name in calls}
    with torch.no_grad():
        row["max_abs_diff_vs_pytorch"] = float(abs(session.run(["image"], feed)[0] - model(labels).numpy()).max())
        for _ in range(args.warmup):
            for fn in calls.values():
                fn()
        for _ in range(args.onnx_iters):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    c = model.config
    row.update(S=c.downsampling, P=c.num_params, num_classes=args.num_classes, lr_max_width=args.lr_max_width,
               threads=threads, onnxruntime=ort.__version__,
               **{f"{name}_ms": summary(t) for name, t in times.items()})
    row["onnxruntime_speedup"] = row["pytorch_cpu_ms"]["median"] / row["onnxruntime_cpu_ms"]["median"]
    print(json.dumps({"size": row["size"], "path": "onnxruntime-cpu vs pytorch-cpu", "threads": threads,
                      "pytorch_cpu_ms": round(row["pytorch_cpu_ms"]["median"], 2),
                      "onnxruntime_cpu_ms": round(row["onnxruntime_cpu_ms"]["median"], 2),
                      "max_abs_diff": float(f"{row['max_abs_diff_vs_pytorch']:.2g}")}), flush=True)
    return row


SWITCH = {"auto": "auto", "on": True, "off": False}  # --fused-norm
CONV_GEMM_SWITCH = {**SWITCH, "split-k": "split-k"}  # --conv-gemm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="JSON file (default metrics/inference-<device>.json)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--sizes", default=None, help=f"comma-separated HxW (default {DEFAULT_SIZES}; CPU: 256x512)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per measurement (GPU 100, CPU 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (GPU 20, CPU 1)")
    p.add_argument("--batch", type=int, default=8, help="batch for the throughput figure")
    p.add_argument("--num-classes", type=int, default=35, help="label classes (35: Cityscapes)")
    p.add_argument("--lr-max-width", type=int, default=1024, help="low-res stream width (paper: 1024)")
    p.add_argument("--precisions", default=None, help="fast-path precisions (GPU fp32,bf16,fp16; CPU fp32)")
    p.add_argument("--paths", default="reference,fast", help="which of reference,fast to run")
    p.add_argument("--compile", action="store_true", help="torch.compile the low-res stream in the fast path")
    p.add_argument("--no-graph", dest="graph", action="store_false", help="no CUDA graph capture")
    p.add_argument("--fused-norm", choices=sorted(SWITCH), default="auto",
                   help="the low-res InstanceNorm + ReLU as Triton kernels (auto: on CUDA)")
    p.add_argument("--conv-gemm", choices=sorted(CONV_GEMM_SWITCH), default="auto",
                   help="the wide low-res convs as one cuBLAS GEMM each (on), the 3x3 ones split along K by "
                        "tap (split-k), cuDNN's (off), or auto: on CUDA, the three timed per shape")
    p.add_argument("--no-check", action="store_true", help="skip the (in-graph) label-range check")
    p.add_argument("--kernel-options", type=json.loads, default=None,
                   help='fused MLP launch options as JSON, e.g. \'{"block_p": 128, "num_warps": 8}\'')
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: reference vs naive peak memory of the MLP")
    p.add_argument("--naive-max-gb", type=float, default=2.0, help="CPU: skip the naive MLP above this size")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime CPU vs PyTorch CPU, batch 1, at each size (an `asap export` of the same model)")
    p.add_argument("--onnx-iters", type=int, default=None, help="timed calls of each for --onnx (default: CPU "
                                                                  "--iters, GPU runs 5: these run on the CPU)")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    args.sizes = parse_sizes(args.sizes or (DEFAULT_SIZES if gpu else "256x512"))
    args.iters = args.iters or (100 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (20 if gpu else 1)
    args.precisions = (args.precisions or ("fp32,bf16,fp16" if gpu else "fp32")).split(",")
    for prec in args.precisions:
        if prec not in PRECISIONS:
            raise SystemExit(f"--precisions: {prec!r} is not one of {sorted(PRECISIONS)}")
    args.paths = args.paths.split(",")
    args.onnx_iters = args.onnx_iters or (5 if gpu else args.iters)
    if gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions

    rows, memory, onnx_cpu = [], [], []
    for H, W in args.sizes:
        r, m = bench_size(H, W, args, device)
        rows += r
        if m:
            memory.append(m)
        if args.onnx:
            onnx_cpu.append(bench_onnx_cpu(H, W, args))
    result = {
        "benchmark": "inference",
        "device": device_info(device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"sizes": [f"{h}x{w}" for h, w in args.sizes]},
        "timing": "CUDA events after warm-up" if gpu else "perf_counter after warm-up",
        "rows": rows,
        "memory_cpu": memory,
        "onnx_cpu": onnx_cpu,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out or f"metrics/inference-{device_slug(device)}.json")
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
