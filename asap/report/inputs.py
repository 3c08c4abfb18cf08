"""Read the pipeline's result files into tidy tables for the report; note what is missing and why.

    metrics/benchmark-<device>.json   pipelines/benchmark.py  (schema "asap-benchmark/1")
    metrics/inference-<device>.json   benchmarks/inference.py (reference vs fast path)
    metrics/train.json                pipelines/train.py
    metrics/eval.json, eval-*.json    pipelines/evaluate.py   (+ metrics/eval_per_class.csv)
    metrics/sweep.csv, sweep.json     pipelines/sweep.py      (generators in models/sweep/<trial>/)

Nothing here invents a number: a value a file lacks stays NaN and the report says which stage
writes it. Reading never fails on an absent file; ``require`` turns absence into an error for the
inputs a caller insists on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

BENCHMARK_SCHEMA = "asap-benchmark/1"

# input kind -> (files, how to produce them). The stage names are those of dvc.yaml.
SOURCES = {
    "benchmark": ("metrics/benchmark-<device>.json",
                  "run the `benchmark` stage: `dvc repro benchmark` (on a GPU machine: "
                  "`python -m pipelines.benchmark --device cuda --no-mlflow`)"),
    "inference": ("metrics/inference-<device>.json",
                  "run `python -m benchmarks.inference` on a GPU machine and commit its JSON"),
    "train": ("metrics/train.json", "run the `train` stage: `dvc repro train`"),
    "eval": ("metrics/eval.json", "run the `evaluate` stage: `dvc repro evaluate`"),
    "sweep": ("metrics/sweep.csv", "run the `sweep` stage: `dvc repro sweep`"),
}


class ReportInputError(FileNotFoundError):
    """An input the report needs is absent; the message names the file and the stage that writes it."""


@dataclass
class Missing:
    """Something the report could not draw, the file it needed, and how to produce that file."""
    what: str
    file: str
    how: str

    def line(self) -> str:
        return f"{self.what}: needs {self.file}; {self.how}"


@dataclass
class Inputs:
    root: Path
    benchmark: pd.DataFrame            # one row per (file, model, size); see read_benchmarks
    inference: pd.DataFrame            # one row per (file, size, path, precision); see read_inference
    train: dict | None                 # metrics/train.json as written
    evals: pd.DataFrame                # one row per evaluated generator; see read_evals
    per_class: pd.DataFrame            # class, name, iou, pixel_share, real_iou (eval's model)
    sweep: pd.DataFrame                # metrics/sweep.csv as written (one row per trial)
    sweep_meta: dict                   # metrics/sweep.json without its trials (dataset, steps, ...)
    files: list[str] = field(default_factory=list)       # every file read, relative to root
    missing: list[Missing] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # files present but unreadable or foreign

    def present(self, kind: str) -> bool:
        return {"benchmark": not self.benchmark.empty, "inference": not self.inference.empty,
                "train": self.train is not None, "eval": not self.evals.empty,
                "sweep": not self.sweep.empty}[kind]

    def require(self, kinds) -> None:
        """Raise ReportInputError naming the stage for every kind in ``kinds`` that is absent."""
        unknown = sorted(set(kinds) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown report input(s) {unknown}; known: {sorted(SOURCES)}")
        absent = [k for k in kinds if not self.present(k)]
        if absent:
            raise ReportInputError("; ".join(f"required input `{SOURCES[k][0]}` is missing under "
                                             f"{self.root}: {SOURCES[k][1]}" for k in absent))


def megapixels(size: str) -> float:
    h, w = (int(v) for v in size.split("x"))
    return h * w / 1e6


def _load_json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        problems.append(f"{path.name}: not readable JSON ({err}); re-run the stage that writes it")
        return None


def _num(value) -> float:
    """A number from a JSON/CSV value; None, strings and bools -> NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------
# Benchmarks (Fig. 1, 4, 8)
# ----------------------------------------------------------------------------------------------

def device_label(info: dict, precision: str) -> str:
    """"<device name>, <precision>": e.g. "NVIDIA H100 80GB HBM3, fp32" or "<CPU model> (2 threads), fp32"."""
    name = info.get("device_name") or info.get("name") or info.get("device") or "unknown device"
    if info.get("device", info.get("type")) == "cpu":
        threads = info.get("torch_threads") or info.get("cpu_threads")
        cpu = info.get("cpu_model") or (info.get("cpu") if name == "cpu" else name)
        name = f"{cpu} CPU" + (f" ({threads} threads)" if threads else "")
    return f"{name}, {precision}"


def read_benchmarks(files: list[Path], problems: list[str]) -> pd.DataFrame:
    columns = ["file", "device", "device_kind", "model", "arch", "fast", "width_mult", "size", "megapixels",
               "params", "median_ms", "p10_ms", "p90_ms", "lr_ms", "hr_ms", "n"]
    rows = []
    for path in files:
        data = _load_json(path, problems)
        if data is None:
            continue
        if data.get("schema") != BENCHMARK_SCHEMA:
            problems.append(f"{path.name}: schema {data.get('schema')!r}, expected {BENCHMARK_SCHEMA!r}; "
                            "re-run the `benchmark` stage")
            continue
        info = data.get("device") or {}
        label = device_label(info, data.get("precision", "?"))
        for r in data.get("rows", []):
            rows.append({"file": path.name, "device": label, "device_kind": info.get("device", "?"),
                         "model": r["model"], "arch": r["arch"], "fast": bool(r.get("fast")),
                         "width_mult": _num(r.get("width_mult", 1.0)), "size": r["size"],
                         "megapixels": megapixels(r["size"]), "params": _num(r.get("params")),
                         **{k: _num(r.get(k)) for k in ("median_ms", "p10_ms", "p90_ms", "lr_ms", "hr_ms", "n")}})
    return pd.DataFrame(rows, columns=columns)


def read_inference(files: list[Path], problems: list[str]) -> pd.DataFrame:
    """benchmarks/inference.py rows: batch-1 latency of the reference generator and the fast path."""
    columns = ["file", "device", "device_kind", "size", "megapixels", "path", "precision", "S", "P",
               "median_ms", "p10_ms", "p90_ms", "mlp_ms", "max_abs_diff", "note"]
    rows = []
    for path in files:
        data = _load_json(path, problems)
        if data is None:
            continue
        if data.get("benchmark") != "inference":
            problems.append(f"{path.name}: not a benchmarks/inference.py result (no \"benchmark\": \"inference\")")
            continue
        info = data.get("device") or {}
        for r in data.get("rows", []):
            b1 = r.get("batch1_ms") or {}
            rows.append({"file": path.name, "device": device_label(info, r.get("precision", "?")),
                         "device_kind": info.get("type", "?"), "size": r["size"], "megapixels": megapixels(r["size"]),
                         "path": r["path"], "precision": r.get("precision", "?"), "S": _num(r.get("S")),
                         "P": _num(r.get("P")), "median_ms": _num(b1.get("median")), "p10_ms": _num(b1.get("p10")),
                         "p90_ms": _num(b1.get("p90")), "mlp_ms": _num((r.get("mlp_ms") or {}).get("median")),
                         "max_abs_diff": _num(r.get("max_abs_diff_vs_reference")), "note": r.get("note", "")})
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------
# Evaluation (Fig. 6, 8, 11)
# ----------------------------------------------------------------------------------------------

QUALITY = ("fid", "kid_mean", "pixel_acc", "miou")


def _first(data: dict, *paths: str):
    """The value at the first dotted path present in ``data`` (e.g. "real.miou"), else None."""
    for p in paths:
        node = data
        for key in p.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _checkpoint_arch(path: Path) -> str:
    """The arch recorded in a generator checkpoint (asap.models.checkpoint format), else "?"."""
    if not path.is_file():
        return "?"
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not ours or unreadable: the report only loses the arch label
        return "?"
    return str(data.get("arch", "?")) if isinstance(data, dict) else "?"


def read_evals(files: list[Path], problems: list[str], root: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """eval.json (and eval-<name>.json for more generators) -> one row per generator, plus the
    per-class table of the first file (Fig. 11). The arch comes from the file, else from the
    checkpoint it names (relative to ``root``)."""
    columns = ["file", "model", "generator", "arch", "width_mult", "steps", "dataset", *QUALITY, "runtime_ms",
               "runtime_device", "generate_ms_per_image", "real_pixel_acc", "real_miou", "num_images"]
    rows, per_class = [], pd.DataFrame(columns=["class", "name", "iou", "pixel_share", "real_iou"])
    for path in files:
        data = _load_json(path, problems)
        if not isinstance(data, dict):
            continue
        generator = str(data.get("generator") or "")
        # pipelines/evaluate.py scores models/<train.name>/generator.pt: the folder names the model
        model = data.get("model") or (Path(generator).parent.name if generator else path.stem.removeprefix("eval-"))
        row = {"file": path.name, "model": str(model), "generator": generator,
               "arch": data.get("arch") or (_checkpoint_arch((root or Path.cwd()) / generator) if generator else "?"),
               "width_mult": _num(data.get("width_mult", 1.0)),
               "steps": _num(_first(data, "generator_steps", "steps")), "dataset": data.get("dataset", ""),
               **{k: _num(data.get(k)) for k in QUALITY},
               # batch-1 latency, when a writer records one; evaluate.py times only batched generation
               "runtime_ms": _num(data.get("runtime_ms")), "runtime_device": data.get("runtime_device", ""),
               "generate_ms_per_image": _num(data.get("generate_ms_per_image")),
               "real_pixel_acc": _num(_first(data, "real.pixel_acc")),
               "real_miou": _num(_first(data, "real.miou")), "num_images": _num(data.get("num_images"))}
        rows.append(row)
        if per_class.empty:
            per_class = _per_class(data, path, problems)
    return pd.DataFrame(rows, columns=columns), per_class


def _per_class(data: dict, path: Path, problems: list[str]) -> pd.DataFrame:
    """per-class IoU and pixel share: eval_per_class.csv beside the JSON when present, else the
    JSON's own per_class list (asap.metrics.segmentation.segmentation_scores' format)."""
    csv = path.with_name(path.stem + "_per_class.csv")
    if csv.is_file():
        try:
            table = pd.read_csv(csv)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            problems.append(f"{csv.name}: not readable CSV ({err})")
            table = pd.DataFrame()
    else:
        items = _first(data, "per_class", "segmentation.per_class", "generated.per_class") or []
        table = pd.DataFrame(items)
        real = _first(data, "real.per_class", "ceiling.per_class") or []
        if real and not table.empty:
            real_iou = {r.get("class"): r.get("iou") for r in real}
            table["real_iou"] = [real_iou.get(c) for c in table.get("class", [])]
    if table.empty:
        return pd.DataFrame(columns=["class", "name", "iou", "pixel_share", "real_iou"])
    table = table.rename(columns={"iou_real": "real_iou", "share": "pixel_share"})
    for col in ("iou", "pixel_share", "real_iou"):
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else math.nan
    if "class" not in table:
        table["class"] = range(len(table))
    if "name" not in table:
        table["name"] = table["class"].astype(str)
    return table[["class", "name", "iou", "pixel_share", "real_iou"]]


# ----------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------

def read_inputs(root: str | Path, first_benchmarks: list[Path] | None = None) -> Inputs:
    """Every result file under ``root`` (a project folder). ``first_benchmarks``: benchmark files to
    read first (the report's primary device, e.g. the DVC stage's own), before the other
    metrics/benchmark-*.json (GPU runs committed beside the CPU one)."""
    root = Path(root)
    metrics = root / "metrics"
    problems: list[str] = []
    named = [Path(f) if Path(f).is_absolute() else root / f for f in first_benchmarks or []]
    bench_files = list(dict.fromkeys([*named, *sorted(metrics.glob("benchmark-*.json"))]))
    inference_files = sorted(metrics.glob("inference-*.json"))
    eval_files = sorted(metrics.glob("eval*.json"), key=lambda p: (p.stem != "eval", p.name))
    eval_files = [p for p in eval_files if p.stem == "eval" or p.stem.startswith("eval-")]
    train_path, sweep_csv, sweep_json = metrics / "train.json", metrics / "sweep.csv", metrics / "sweep.json"

    benchmark = read_benchmarks([f for f in bench_files if f.is_file()], problems)
    inference = read_inference(inference_files, problems)
    train = _load_json(train_path, problems) if train_path.is_file() else None
    evals, per_class = read_evals(eval_files, problems, root)
    sweep, sweep_meta = pd.DataFrame(), {}
    if sweep_csv.is_file():
        try:
            sweep = pd.read_csv(sweep_csv)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            problems.append(f"sweep.csv: not readable CSV ({err}); re-run the `sweep` stage")
    if sweep_json.is_file():
        sweep_meta = {k: v for k, v in (_load_json(sweep_json, problems) or {}).items() if k != "trials"}

    read = [*bench_files, *inference_files, *eval_files, train_path, sweep_csv, sweep_json]
    files = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in read if p.is_file()]
    inputs = Inputs(root, benchmark, inference, train, evals, per_class, sweep, sweep_meta, files,
                    problems=problems)
    for kind in SOURCES:
        if not inputs.present(kind):
            inputs.missing.append(Missing(f"{kind} results", *SOURCES[kind]))
    return inputs
