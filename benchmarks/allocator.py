"""How much of a CPU runtime is glibc's allocator: batch-1 times with its defaults against the steady policy.

    python -m benchmarks.allocator                        # params.yaml's generators, 3 repeats
    python -m benchmarks.allocator --repeats 5 --threads 2 --out metrics/allocator-cpu.json

Every CPU timing of this project runs with glibc's allocator held steady (asap.metrics.runtime
``steady_allocator``: blocks below 32 MiB reuse the heap, freed heap is kept). This script measures
what that changes: each generator params.yaml trains (train.name and the `baselines` entries that are
not repeats, random weights at the prepared dataset's size: runtime does not depend on the weights) is
timed at batch 1 in a fresh process per policy (``ASAP_CPU_ALLOCATOR=default`` against the steady
one), the two policies alternating in order from repeat to repeat so that drift in the machine's
speed falls on both. A fresh process is the default policy's worst case; one that had done other work
first lands anywhere between (see asap/metrics/runtime.py). Prints a table of medians and the ratio
default / steady per generator, with the host's matmul rate sampled in each process; ``--out`` writes
it as JSON. CPU only; imports torch, numpy, yaml and asap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from asap.config import UserError
from asap.metrics.runtime import cpu_threads

POLICIES = ("default", "steady")


def build(name: str, params_file: Path, data_root: Path | None) -> tuple[torch.nn.Module, torch.Tensor]:
    """Generator ``name`` of params.yaml at its dataset's size (random weights, seed 0) and a random
    batch-1 label map for it."""
    import yaml

    from asap.data.prepared import DatasetInfo, prepare_hint
    from asap.models.checkpoint import build_generator
    from asap.training import TrainingRun

    params = yaml.safe_load(params_file.read_text())
    dataset = params.get("dataset", "facades-256x256")
    root = data_root or params_file.parent / "data" / "prepared" / dataset
    if not (root / "dataset.json").is_file():
        raise UserError(f"{root}/dataset.json not found: the generators are built at the prepared dataset's size "
                        f"({prepare_hint(dataset)}), or pass --data")
    run = TrainingRun.from_params(params, root, name, world_size=1)
    torch.manual_seed(0)
    generator = build_generator(run.arch, run.generator).eval()
    info = DatasetInfo.load(root)
    labels = torch.randint(0, info.num_classes, (1, info.height, info.width))
    return generator, labels


def generator_names(params_file: Path) -> list[str]:
    """train.name, then the `baselines` keys that are generators of their own (not `repeat:` seeds)."""
    import yaml

    params = yaml.safe_load(params_file.read_text())
    names = [(params.get("train") or {}).get("name", "asapnet")]
    names += [k for k, v in (params.get("baselines") or {}).items() if k not in names and "repeat" not in (v or {})]
    return names


def child(name: str, params_file: Path, data_root: Path | None, iters: int, warmup: int, threads: int) -> dict:
    """One fresh process's measurement (the policy comes from ASAP_CPU_ALLOCATOR, read by time_module)."""
    from asap.metrics.runtime import time_module, with_host_rate

    generator, labels = build(name, params_file, data_root)
    timing = with_host_rate(lambda: time_module(generator, labels, warmup=warmup, iters=iters, threads=threads),
                            "cpu", threads=threads)
    return {k: timing[k] for k in ("median_ms", "p10_ms", "p90_ms", "n", "threads", "allocator",
                                   "host_matmul_tflops")}


def measure(names: list[str], args) -> list[dict]:
    rows = []
    for repeat in range(args.repeats):
        for name in names:
            order = POLICIES if repeat % 2 == 0 else POLICIES[::-1]
            for policy in order:
                cmd = [sys.executable, "-m", "benchmarks.allocator", "--child", name, "--params", str(args.params),
                       "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
                if args.data:
                    cmd += ["--data", str(args.data)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                              "ASAP_CPU_ALLOCATOR": policy})
                if proc.returncode != 0:
                    raise UserError(f"timing {name} with the {policy} allocator failed:\n{proc.stderr[-2000:]}")
                row = {"generator": name, "policy": policy, "repeat": repeat,
                       **json.loads(proc.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(f"[allocator] repeat {repeat + 1}/{args.repeats} {name:>10} {policy:>7}: "
                      f"{row['median_ms']:8.1f} ms (p10 {row['p10_ms']:.1f}, p90 {row['p90_ms']:.1f}); host "
                      f"matmul {row['host_matmul_tflops']:.3f} TFLOP/s", flush=True)
    return rows


def summarise(rows: list[dict], names: list[str]) -> list[dict]:
    out = []
    for name in names:
        med = {p: [r["median_ms"] for r in rows if r["generator"] == name and r["policy"] == p] for p in POLICIES}
        d, s = float(np.median(med["default"])), float(np.median(med["steady"]))
        out.append({"generator": name, "default_ms": d, "steady_ms": s, "default_over_steady": d / s,
                    "default_range_ms": [min(med["default"]), max(med["default"])],
                    "steady_range_ms": [min(med["steady"]), max(med["steady"])]})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.allocator", description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    ap.add_argument("--data", type=Path, default=None,
                    help="prepared dataset (default: data/prepared/<params.yaml dataset>)")
    ap.add_argument("--generators", nargs="*", default=None, help="names in params.yaml (default: all but repeats)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per generator and policy")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per process (evaluate.runtime_iters: 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls first (the evaluate stage's: 2)")
    ap.add_argument("--threads", type=int, default=cpu_threads(), help="CPU threads (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.params, args.data, args.iters, args.warmup, args.threads)))
        return
    if args.repeats < 1 or args.iters < 1 or args.warmup < 0:
        raise UserError("--repeats and --iters must be >= 1 and --warmup >= 0")
    names = args.generators or generator_names(args.params)
    build(names[0], args.params, args.data)  # a missing dataset or unknown name fails here, before any child
    rows = measure(names, args)
    summary = summarise(rows, names)
    print(f"\n{'generator':>10} {'default ms':>11} {'steady ms':>10} {'default / steady':>17}   (medians of "
          f"{args.repeats} fresh processes each, batch 1, {args.threads} threads)")
    for s in summary:
        print(f"{s['generator']:>10} {s['default_ms']:11.1f} {s['steady_ms']:10.1f} {s['default_over_steady']:17.2f}")
    if args.out:
        from asap.files import write_text_atomic
        from asap.metrics.runtime import device_info
        from benchmarks.campaign.common import git_state

        record = {"schema": "asap-allocator/1", "device": device_info("cpu"), "git": git_state(),
                  "params": str(args.params), "repeats": args.repeats, "iters": args.iters, "warmup": args.warmup,
                  "threads": args.threads, "summary": summary, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        sys.exit(f"error: {err}")
