"""`benchmark` stage: inference time of ASAP-Net and the baselines vs resolution (paper Fig. 1, Fig. 4).

    python -m pipelines.benchmark                       # the DVC stage: params.yaml `benchmark:`
    python -m pipelines.benchmark --device cuda         # on a GPU machine (no DVC/MLflow needed there):
                                                        # writes metrics/benchmark-<gpu name>.json

Batch 1, inference mode, random weights and random label maps (runtime does not depend on either).
GPU: CUDA events after warm-up; CPU: wall-clock medians (asap.metrics.runtime). ASAP-Net's time is
also split into the low-res stream (``tile_params``: tent downsample + conv net) and the
full-resolution pixelwise MLP, as in the paper's Fig. 4. Slim pix2pixHD/SPADE variants (Fig. 8) are
entries with a ``width_mult``. "fp32" turns TF32 off on the GPU (PyTorch lets cuDNN convolutions use
TF32 by default), so fp32 means fp32.

Output (``metrics/benchmark-<device>.json``, schema "asap-benchmark/1"):
    {"schema", "device": {device_info}, "precision", "warmup", "iters", "git_commit",
     "host_matmul_tflops": {"start", "end", "precision", "threads"},  # the host's matmul rate (TFLOP/s)
                                                 # before the first row and after the last
     "rows": [{"model", "arch", "fast", "width_mult", "size", "height", "width", "num_classes",
               "batch", "params", "median_ms", "p10_ms", "p90_ms", "mean_ms", "n", "timer", "threads",
               "allocator", "lr_ms", "hr_ms"}, ...],  # lr_ms/hr_ms: medians, ASAP-Net reference only, else null;
                                                 # allocator: the CPU allocator policy (time_module), null on a GPU
     "median_ms": {model: {size: ms}}}           # the same medians, nested for `dvc metrics diff`
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from asap.config import ConfigError, require, require_choice
from asap.metrics.runtime import (cpu_threads, device_info, device_slug, host_rate, precision_mode, time_asapnet,
                                  time_module)
from pipelines.common import git_commit, params, project_root, run_stage, run_tags, write_json

SCHEMA = "asap-benchmark/1"
ARCHS = ("asapnet", "pix2pixhd", "spade")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class BenchmarkConfig:
    device: str                 # "cpu" or "cuda"
    precision: str              # fp32 | tf32 | bf16 | fp16
    models: dict                # name -> {"arch": ..., "fast": bool, **config overrides}
    sizes: tuple                # ("256x512", ...)
    num_classes: dict           # size -> label classes of the input
    warmup: int
    iters: int


def parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in str(size).split("x"))
    except ValueError:
        raise ConfigError(f"benchmark size {size!r} is not <height>x<width>, e.g. 256x512") from None
    require(h > 0 and w > 0, f"benchmark size {size!r} must have positive sides")
    return h, w


def load_config(section: dict, device: str | None = None) -> BenchmarkConfig:
    """The `benchmark:` params section -> a validated config; the device picks its sizes/models/iters."""
    where = "params.yaml benchmark"
    require(isinstance(section, dict), f"{where}: missing section (see the README's `benchmark` stage)")
    device = device or section.get("device", "cpu")
    require_choice(f"{where}.device", device, {"cpu", "cuda"})
    precision = section.get("precision", "fp32")
    require_choice(f"{where}.precision", precision, set(PRECISIONS))
    per_device = section.get(device)
    require(isinstance(per_device, dict), f"{where}.{device}: missing (needs models, sizes, warmup, iters)")
    models = section.get("models") or {}
    names = per_device.get("models") or []
    unknown = [n for n in names if n not in models]
    require(not unknown, f"{where}.{device}.models names {unknown}, not defined in {where}.models "
                         f"(defined: {sorted(models)})")
    for name in names:
        spec = models[name]
        require(isinstance(spec, dict) and spec.get("arch") in ARCHS,
                f"{where}.models.{name}.arch must be one of {list(ARCHS)}, got {spec!r}")
    sizes = tuple(str(s) for s in per_device.get("sizes") or [])
    require(bool(sizes) and bool(names), f"{where}.{device}: needs at least one size and one model")
    classes = {str(k): v for k, v in (section.get("num_classes") or {}).items()}
    for s in sizes:
        parse_size(s)
        require(isinstance(classes.get(s), int) and classes[s] >= 1,
                f"{where}.num_classes has no positive class count for size {s} (has {classes})")
    warmup, iters = per_device.get("warmup", 1), per_device.get("iters", 3)
    require(isinstance(warmup, int) and warmup >= 0 and isinstance(iters, int) and iters >= 1,
            f"{where}.{device}: warmup must be >= 0 and iters >= 1, got {warmup} and {iters}")
    return BenchmarkConfig(device, precision, {n: dict(models[n]) for n in names}, sizes, classes, warmup, iters)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def build_model(spec: dict, num_classes: int, height: int, width: int) -> torch.nn.Module:
    overrides = {k: v for k, v in spec.items() if k not in ("arch", "fast")}
    arch = spec["arch"]
    try:
        if arch == "asapnet":
            from asap.models.asapnet import asapnet

            return asapnet(num_classes, height, width, **overrides)
        from asap.models import baselines  # imported lazily: only when a baseline is benchmarked

        if arch == "pix2pixhd":
            return baselines.Pix2PixHDGenerator(baselines.Pix2PixHDConfig(num_classes=num_classes, **overrides))
        return baselines.SPADEGenerator(baselines.SPADEConfig(num_classes=num_classes, **overrides))
    except TypeError as err:  # an unknown override key
        raise ConfigError(f"benchmark model {spec}: {err}") from err


def bench_row(name: str, spec: dict, size: str, config: BenchmarkConfig, device: torch.device) -> dict:
    height, width = parse_size(size)
    num_classes = config.num_classes[size]
    model = build_model(spec, num_classes, height, width).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    labels = torch.randint(0, num_classes, (1, height, width), device=device)  # (B=1, H, W) class indices
    fast = bool(spec.get("fast", False))
    timing = dict(warmup=config.warmup, iters=config.iters, device=device)
    row = {"model": name, "arch": spec["arch"], "fast": fast, "width_mult": spec.get("width_mult", 1.0),
           "size": size, "height": height, "width": width, "num_classes": num_classes, "batch": 1,
           "params": n_params, "lr_ms": None, "hr_ms": None}
    with precision_mode(config.precision, device, autocast=not fast):
        if fast:
            from asap.models.fast import fast_generator  # Triton on CUDA; the reference path on a CPU

            row.update(time_module(fast_generator(model, config.precision), labels, **timing))
            return row
        if spec["arch"] == "asapnet":  # Fig. 4: low-res stream vs full-resolution pixelwise MLP
            row.update(time_asapnet(model, labels, **timing))
        else:
            row.update(time_module(model, labels, **timing))
    return row


def run_benchmark(config: BenchmarkConfig, log=print) -> dict:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("benchmark.device is cuda but torch sees no CUDA device; use --device cpu")
    device = torch.device(config.device)
    # the host's matmul rate before the first row and after the last (every core, as the rows are timed): the
    # rows compare with each other as measured in one run; against another run's times, with this beside them
    host_precision = "bf16" if config.precision in ("bf16", "fp16") else "fp32"
    host = {"start": host_rate(device, host_precision)["tflops"]}
    rows = []
    for size in config.sizes:
        for name, spec in config.models.items():
            row = bench_row(name, spec, size, config, device)
            rows.append(row)
            split = f" (low-res {row['lr_ms']:.2f} + pixelwise {row['hr_ms']:.2f})" if row["lr_ms"] is not None else ""
            log(f"{name:>16} {size:>9}: {row['median_ms']:9.2f} ms median "
                f"[p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f}]{split}")
    host.update(end=host_rate(device, host_precision)["tflops"], precision=host_precision,
                threads=cpu_threads() if device.type == "cpu" else None)
    log(f"host {host_precision} matmul at {host['start']:.4f} TFLOP/s before the first row, {host['end']:.4f} after "
        "the last")
    summary: dict = {}
    for r in rows:
        summary.setdefault(r["model"], {})[r["size"]] = r["median_ms"]
    return {"schema": SCHEMA, "device": device_info(device, config.precision), "precision": config.precision,
            "warmup": config.warmup, "iters": config.iters, "git_commit": git_commit(), "host_matmul_tflops": host,
            "rows": rows, "median_ms": summary}


def log_mlflow(result: dict, out: Path) -> None:
    import mlflow

    from pipelines.common import setup_mlflow

    experiment_id = setup_mlflow("benchmark")
    with mlflow.start_run(run_name=f"benchmark-{device_slug(result['device'])}", experiment_id=experiment_id,
                          tags={**run_tags(), "stage": "benchmark"}):
        mlflow.log_params({f"device.{k}": v for k, v in result["device"].items()}
                          | {"warmup": result["warmup"], "iters": result["iters"]})
        metrics = {}
        for r in result["rows"]:
            for key in ("median_ms", "p10_ms", "p90_ms", "lr_ms", "hr_ms"):
                if r[key] is not None:
                    metrics[f"{r['model']}/{r['size']}/{key}"] = r[key]
        host = result.get("host_matmul_tflops") or {}
        metrics.update({f"host_matmul_tflops_{k}": host[k] for k in ("start", "end") if host.get(k) is not None})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(out))


def runtime_path(out: Path) -> Path:
    """metrics/benchmark-<device>.json (rows, device, commit) -> metrics/runtime-<device>.json beside it:
    {"median_ms": {model: {size: ms}}}, the numbers `dvc metrics show/diff` compare."""
    return out.with_name("runtime-" + out.name.removeprefix("benchmark-"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="overrides benchmark.device (and picks that device's sizes/models/iters)")
    parser.add_argument("--out", default=None,
                        help="JSON file (default metrics/benchmark-<cpu | GPU name>.json)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (e.g. a GPU box without it)")
    args = parser.parse_args(argv)
    config = load_config(params(args.params).get("benchmark"), args.device)
    result = run_benchmark(config)
    out = Path(args.out) if args.out else project_root() / "metrics" / f"benchmark-{device_slug(result['device'])}.json"
    write_json(out, result)
    runtime = runtime_path(out)
    write_json(runtime, {"median_ms": result["median_ms"]})  # numbers only: the DVC metric
    print(f"wrote {out} and {runtime}")
    if not args.no_mlflow:
        try:
            log_mlflow(result, out)
        except ModuleNotFoundError as err:  # the GPU machine has no MLflow: the JSON is the record
            print(f"warning: MLflow not installed ({err.name}); results only in {out}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
