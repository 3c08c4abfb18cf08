"""The pixelwise MLP on the CPU: the parameter grid as the low-res stream writes it there (channels-last:
a tile's P values contiguous) against the NCHW grid it wrote before commit fb2d671, same run.

    python -m benchmarks.mlp_layout                                   # 256x256, S = 8, 16, 32
    python -m benchmarks.mlp_layout --size 256x512 --out metrics/mlp-layout-cpu.json

From NCHW, ``pixelwise_mlp`` first gathers each tile's weights at a stride of (H/S)(W/S) floats (what
every layer did before fb2d671); channels-last, it reads them in place. Per S it times, at batch 1
with random weights (runtime does not depend on them): the MLP alone at inference in both layouts,
the MLP's forward + backward (training) in both, and the whole generator as it runs now; and prints
the NCHW / channels-last ratios. Medians of ``--iters`` calls after ``--warmup``, perf_counter,
glibc's allocator held steady as in every CPU timing (asap.metrics.runtime). Imports torch and asap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from asap.metrics.runtime import cpu_threads, host_rate, steady_allocator, time_module, torch_threads
from asap.models.asapnet import asapnet
from asap.models.pixelwise import pixelwise_mlp


def median_ms(fn, warmup: int, iters: int) -> float:
    """Median wall time of ``fn()`` with autograd on (time_module runs under inference_mode)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(height: int, width: int, S: int, classes: int, lr_max_width: int, warmup: int, iters: int,
            threads: int) -> dict:
    torch.manual_seed(0)
    model = asapnet(classes, height, width, downsampling=S, lr_max_width=lr_max_width).eval()
    c = model.config
    labels = torch.randint(0, classes, (1, height, width))
    with torch.no_grad():
        x = model.encode(labels)
        grid = model.tile_params(x)  # channels-last on the CPU
    hr = x[:, :c.hr_in_channels]
    layouts = {"channels_last": grid.contiguous(memory_format=torch.channels_last), "nchw": grid.contiguous()}
    row = {"size": f"{height}x{width}", "S": S, "P": c.num_params, "tiles": grid.shape[2] * grid.shape[3]}
    timing = dict(warmup=warmup, iters=iters, threads=threads)
    row["generator_ms"] = time_module(model, labels, **timing)["median_ms"]
    for name, params in layouts.items():
        row[f"mlp_infer_ms_{name}"] = time_module(
            lambda p=params: pixelwise_mlp(hr, p, c.mlp_channels, S, c.positional_encoding), **timing)["median_ms"]
        leaf = params.detach().clone(memory_format=torch.preserve_format).requires_grad_()

        def train_step(p=leaf):
            p.grad = None
            pixelwise_mlp(hr, p, c.mlp_channels, S, c.positional_encoding).square().mean().backward()

        with torch_threads(threads):
            row[f"mlp_train_ms_{name}"] = median_ms(train_step, warmup, iters)
    row["infer_ratio_nchw_over_cl"] = row["mlp_infer_ms_nchw"] / row["mlp_infer_ms_channels_last"]
    row["train_ratio_nchw_over_cl"] = row["mlp_train_ms_nchw"] / row["mlp_train_ms_channels_last"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mlp_layout", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256x256", help="HxW (default 256x256, the default dataset's)")
    parser.add_argument("--S", type=int, nargs="+", default=[8, 16, 32], help="downsampling factors")
    parser.add_argument("--classes", type=int, default=12, help="label classes (facades: 12)")
    parser.add_argument("--lr-max-width", type=int, default=256, help="params.yaml model.lr_max_width (256)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    threads = cpu_threads(args.threads)
    allocator = steady_allocator()
    before = host_rate("cpu", "fp32", threads)["tflops"]
    rows = []
    for S in args.S:
        row = measure(height, width, S, args.classes, args.lr_max_width, args.warmup, args.iters, threads)
        rows.append(row)
        print(f"[mlp_layout] {row['size']} S={S:<3d} MLP inference {row['mlp_infer_ms_channels_last']:7.1f} ms "
              f"channels-last, {row['mlp_infer_ms_nchw']:7.1f} NCHW ({row['infer_ratio_nchw_over_cl']:.2f}x); "
              f"forward+backward {row['mlp_train_ms_channels_last']:7.1f} / {row['mlp_train_ms_nchw']:7.1f} ms "
              f"({row['train_ratio_nchw_over_cl']:.2f}x); generator {row['generator_ms']:.1f} ms", flush=True)
    after = host_rate("cpu", "fp32", threads)["tflops"]
    print(f"[mlp_layout] cpu, {threads} threads, {allocator}; host fp32 matmul at {before:.4f} TFLOP/s before, "
          f"{after:.4f} after")
    if args.out:
        from benchmarks.campaign.common import git_state

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": "cpu", "threads": threads, "allocator": allocator,
                                        "torch": torch.__version__, "git": git_state(), "warmup": args.warmup,
                                        "iters": args.iters, "host_matmul_tflops": {"start": before, "end": after},
                                        "rows": rows}, indent=2) + "\n")
        print(f"[mlp_layout] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
