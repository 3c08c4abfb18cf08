"""Read the pipeline's result files into tidy tables for the report; note what is missing and why.

    metrics/benchmark-<device>.json   pipelines/benchmark.py  (schema "asap-benchmark/1")
    metrics/inference-<device>.json   benchmarks/inference.py (reference vs fast path)
    metrics/train-<name>.json         pipelines/train.py      (stages train, train-baseline@<name>; numbers)
    metrics/eval-<name>.json          pipelines/evaluate.py   (stages evaluate, evaluate-baseline@<name>;
                                      numbers; + metrics/eval_per_class-<name>.csv)
    metrics/provenance/{train,eval}-<name>.json  the same stages: run ids and names, devices, commits,
                                      arch, dataset, how training stopped (files older than the split
                                      carried these in the metrics files: still read)
    models/<name>/generator.pt        the trained generators (their meta: budget, run, commit)
    metrics/sweep.csv, sweep.json     pipelines/sweep.py      (generators in models/sweep/<trial>/)
    metrics/gpu-<device>-{quality,correctness,inference,training}.json
                                      `python -m benchmarks.gpu_campaign score` (the GPU campaign, docs/gpu.md)

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

from asap.config import UserError
from asap.report.campaign import GpuCampaign, num as _num, read_campaign

BENCHMARK_SCHEMA = "asap-benchmark/1"

# input kind -> (files, how to produce them). The stage names are those of dvc.yaml.
SOURCES = {
    "benchmark": ("metrics/benchmark-<device>.json",
                  "run the `benchmark` stage: `dvc repro benchmark` (on a GPU machine: "
                  "`python -m pipelines.benchmark --device cuda --no-mlflow`)"),
    "inference": ("metrics/inference-<device>.json",
                  "run `python -m benchmarks.inference` on a GPU machine and commit its JSON"),
    "train": ("metrics/train-<name>.json", "run the `train` stage: `dvc repro train` (a baseline: "
              "`dvc repro train-baseline@<name>`)"),
    "eval": ("metrics/eval-<name>.json", "run the `evaluate` stage: `dvc repro evaluate` (a baseline: "
             "`dvc repro evaluate-baseline@<name>`)"),
    "sweep": ("metrics/sweep.csv", "run the `sweep` stage: `dvc repro sweep`"),
    "gpu": ("metrics/gpu-<device>-*.json", "run the GPU campaign (docs/gpu.md): `python -m benchmarks.gpu_campaign "
            "run` on a GPU, then `python -m benchmarks.gpu_campaign score DIR` here and `dvc repro report`"),
}


class ReportInputError(UserError, FileNotFoundError):
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
    generators: pd.DataFrame           # one row per generator (GENERATOR_COLUMNS); see read_generators
    per_class: dict                    # generator name -> class, name, iou, pixel_share, real_iou
    sweep: pd.DataFrame                # metrics/sweep.csv as written (one row per trial)
    sweep_meta: dict                   # metrics/sweep.json without its trials (dataset, steps, ...)
    reference: dict                    # the paper-like profile's budget (read_reference_budget), or {}
    gpu: GpuCampaign                   # the GPU campaign's scored files (asap.report.campaign), maybe none
    files: list[str] = field(default_factory=list)       # every file read, relative to root
    missing: list[Missing] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # files present but unreadable or foreign

    def present(self, kind: str) -> bool:
        return {"benchmark": not self.benchmark.empty, "inference": not self.inference.empty,
                "train": bool(self.generators["has_train"].any()), "eval": not self.evals.empty,
                "sweep": not self.sweep.empty, "gpu": bool(self.gpu.files)}[kind]

    @property
    def evals(self) -> pd.DataFrame:
        """The generators with an eval file (Fig. 6 points), ASAP-Net first."""
        return self.generators[self.generators["has_eval"].astype(bool)]

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
               "params", "median_ms", "p10_ms", "p90_ms", "lr_ms", "hr_ms", "n", "commit", "warmup", "iters",
               "host_start", "host_end"]
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
        host = data.get("host_matmul_tflops") or {}  # the host's matmul rate around the rows (older files: none)
        for r in data.get("rows", []):
            rows.append({"file": path.name, "device": label, "device_kind": info.get("device", "?"),
                         "model": r["model"], "arch": r["arch"], "fast": bool(r.get("fast")),
                         "width_mult": _num(r.get("width_mult", 1.0)), "size": r["size"],
                         "megapixels": megapixels(r["size"]), "params": _num(r.get("params")),
                         **{k: _num(r.get(k)) for k in ("median_ms", "p10_ms", "p90_ms", "lr_ms", "hr_ms", "n")},
                         "commit": str(data.get("git_commit") or ""), "warmup": _num(data.get("warmup")),
                         "iters": _num(data.get("iters")), "host_start": _num(host.get("start")),
                         "host_end": _num(host.get("end"))})
    return pd.DataFrame(rows, columns=columns)


def read_inference(files: list[Path], problems: list[str]) -> pd.DataFrame:
    """benchmarks/inference.py rows: batch-1 latency of the reference generator and the fast path."""
    columns = ["file", "device", "device_kind", "size", "megapixels", "path", "precision", "S", "P",
               "median_ms", "p10_ms", "p90_ms", "mlp_ms", "lowres_ms", "lowres_torch_norm_ms", "wide_convs", "max_abs_diff",
               "note", "created"]
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
                         "device_kind": info.get("device", info.get("type", "?")), "size": r["size"],
                         "megapixels": megapixels(r["size"]),
                         "path": r["path"], "precision": r.get("precision", "?"), "S": _num(r.get("S")),
                         "P": _num(r.get("P")), "median_ms": _num(b1.get("median")), "p10_ms": _num(b1.get("p10")),
                         "p90_ms": _num(b1.get("p90")), "mlp_ms": _num((r.get("mlp_ms") or {}).get("median")),
                         "lowres_ms": math.nan, "lowres_torch_norm_ms": math.nan,  # timed apart by the GPU campaign only
                         "wide_convs": "",
                         "max_abs_diff": _num(r.get("max_abs_diff_vs_reference")), "note": r.get("note", ""),
                         "created": str(data.get("created") or "")})
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------
# Generators: train-<name>.json, eval-<name>.json, models/<name>/generator.pt (Fig. 6, 8, 11)
# ----------------------------------------------------------------------------------------------

# One row per generator. Quality and runtime come from eval-<name>.json; the budget from the
# evaluated checkpoint's meta as eval-<name>.json records it (generator_*), else train-<name>.json,
# else the checkpoint itself; provenance (run, commit, devices) from metrics/provenance/, else from the
# metrics files of the layout before the split, else the checkpoint's meta.
GENERATOR_COLUMNS = [
    "name", "role", "arch", "width_mult", "params", "dataset", "repeat_of", "seed",
    "fid", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets", "pixel_acc", "miou", "num_images",
    "real_pixel_acc", "real_miou", "floor_fid", "floor_kid_mean", "floor_kid_std", "floor_num_images",
    "runtime_ms", "runtime_p10_ms", "runtime_p90_ms", "runtime_device", "runtime_threads", "runtime_allocator",
    "runtime_host_matmul_tflops", "generate_ms_per_image",
    "steps", "train_seconds", "time_budget_s", "stopped_by", "global_batch", "num_workers", "train_device",
    "host_matmul_tflops",
    "run_name", "mlflow_run_id", "train_commit", "eval_commit", "eval_file", "train_file", "checkpoint",
    "has_eval", "has_train", "has_checkpoint",
]
_EVAL_NUMBERS = ("params", "fid", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets", "pixel_acc", "miou",
                 "num_images", "runtime_ms", "runtime_p10_ms", "runtime_p90_ms", "runtime_threads",
                 "runtime_host_matmul_tflops",  # the host's matmul rate as the runtime was timed (older: absent)
                 "generate_ms_per_image")
PER_CLASS_COLUMNS = ["class", "name", "iou", "pixel_share", "real_iou"]


def params_generators(params: dict) -> dict[str, dict]:
    """The generators params.yaml trains, with their role and arch: train.name (ASAP-Net, role
    "asapnet"), the keys of `baselines` with an `arch` ("baseline"), and the `repeat:` entries
    ("repeat": another train.seed of the generator named in `repeat`, whose arch they share)."""
    train = params.get("train") or {}
    name = train.get("name", "asapnet")
    baselines = {k: v or {} for k, v in (params.get("baselines") or {}).items() if k != name}
    out = {name: {"role": "asapnet", "arch": "asapnet", "repeat_of": "", "seed": train.get("seed", 0)}}
    for key, entry in baselines.items():
        if "repeat" in entry:
            continue
        out[key] = {"role": "baseline", "arch": str(entry.get("arch", "?")), "repeat_of": "",
                    "seed": train.get("seed", 0)}
    for key, entry in baselines.items():
        if "repeat" in entry:
            target = str(entry["repeat"])
            out[key] = {"role": "repeat", "arch": out.get(target, {}).get("arch", "?"), "repeat_of": target,
                        "seed": entry.get("seed")}
    return out


def stages(name: str, role: str) -> tuple[str, str]:
    """The dvc.yaml stages that train and score generator ``name``: `train` / `evaluate` for
    train.name, `train-baseline@<name>` / `evaluate-baseline@<name>` for a key of `baselines`
    (a repeat included)."""
    if role == "asapnet":
        return "train", "evaluate"
    return f"train-baseline@{name}", f"evaluate-baseline@{name}"


def _first(data: dict, *paths: str):
    """The value at the first dotted path present in ``data`` (e.g. "real.miou"), else None."""
    for p in paths:
        node = data
        for key in p.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _pick(*values):
    """The first value that is neither None nor empty."""
    return next((v for v in values if v is not None and v != ""), None)


def checkpoint_meta(path: Path) -> dict:
    """A generator checkpoint's meta (asap.models.checkpoint format) with its "arch" and the
    config's "width_mult", read without building the model; {} when absent or not ours."""
    if not path.is_file():
        return {}
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return {}  # not ours or unreadable: the report only loses the labels it would take from it
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict):
        return {}
    return {**data["meta"], "arch": data.get("arch"), "width_mult": (data.get("config") or {}).get("width_mult")}


def generator_row(name: str, role: str, ev: dict, tr: dict, meta: dict, files: dict[str, str],
                  ev_prov: dict | None = None, tr_prov: dict | None = None, expected: dict | None = None) -> dict:
    """One generator's row of GENERATOR_COLUMNS from its eval file, train file, their provenance
    sidecars (``ev_prov``, ``tr_prov``; files of the older layout carry those keys in ``ev``/``tr``),
    its checkpoint meta and what params.yaml says of it (``expected``: params_generators' entry)."""
    ep = {**ev, **(ev_prov or {})}   # provenance keys: the sidecar wins over an older metrics file
    tp = {**tr, **(tr_prov or {})}
    expected = expected or {}
    return {
        "name": name, "role": role,
        "arch": str(_pick(ep.get("arch"), tp.get("arch"), meta.get("arch")) or "?"),
        "width_mult": _num(_pick(ev.get("width_mult"), meta.get("width_mult"))),
        "dataset": str(_pick(ep.get("dataset"), tp.get("dataset"), meta.get("dataset")) or ""),
        "repeat_of": str(_pick(expected.get("repeat_of"), ep.get("repeat_of"), tp.get("repeat_of")) or ""),
        "seed": _num(_pick(expected.get("seed"), ep.get("train_seed"), tp.get("train_seed"))),
        **{k: _num(ev.get(k)) for k in _EVAL_NUMBERS},
        "real_pixel_acc": _num(_first(ev, "real.pixel_acc")), "real_miou": _num(_first(ev, "real.miou")),
        "floor_fid": _num(_first(ev, "fid_floor.fid")), "floor_kid_mean": _num(_first(ev, "fid_floor.kid_mean")),
        "floor_kid_std": _num(_first(ev, "fid_floor.kid_std")),
        "floor_num_images": _num(_first(ev, "fid_floor.num_images")),
        "runtime_device": str(ep.get("runtime_device") or ""),
        "runtime_allocator": str(ep.get("runtime_allocator") or ""),  # the CPU allocator policy (older: absent)
        "steps": _num(_pick(ev.get("generator_steps"), tr.get("steps"), meta.get("steps"))),
        "train_seconds": _num(_pick(ev.get("generator_train_seconds"), tr.get("train_seconds"),
                                    meta.get("train_seconds"))),
        "time_budget_s": _num(_pick(ev.get("generator_time_budget_s"), tr.get("time_budget_s"),
                                    meta.get("time_budget_s"))),
        "stopped_by": str(_pick(ep.get("generator_stopped_by"), tp.get("stopped_by"), meta.get("stopped_by")) or ""),
        "global_batch": _num(_pick(ev.get("generator_global_batch"), tr.get("global_batch"), meta.get("global_batch"))),
        "num_workers": _num(tr.get("num_workers")),
        # the matmul rate of the host as the run trained (older runs: not recorded)
        "host_matmul_tflops": _num(_pick(ev.get("generator_host_matmul_tflops"), tr.get("host_matmul_tflops"),
                                         meta.get("host_matmul_tflops"))),
        "train_device": str(_pick(tp.get("train_device"), ep.get("generator_train_device"),
                                  meta.get("train_device")) or ""),
        "run_name": str(_pick(ep.get("generator_run_name"), tp.get("run_name"), meta.get("run_name")) or ""),
        "mlflow_run_id": str(_pick(ep.get("generator_mlflow_run_id"), tp.get("mlflow_run_id"),
                                   meta.get("mlflow_run_id")) or ""),
        "train_commit": str(_pick(tp.get("git_commit"), ep.get("generator_git_commit"), meta.get("git_commit")) or ""),
        "eval_commit": str(ep.get("git_commit") or ""),
        "eval_file": files.get("eval", ""), "train_file": files.get("train", ""),
        "checkpoint": files.get("checkpoint", ""),
        "has_eval": bool(ev), "has_train": bool(tr), "has_checkpoint": bool(files.get("checkpoint")),
    }


def read_per_class(path: Path, data: dict, problems: list[str]) -> pd.DataFrame:
    """Per-class IoU and pixel share of one generator: its eval_per_class-<name>.csv when present,
    else the per_class list of an eval-<name>.json of the older layout (the same rows)."""
    table = pd.DataFrame()
    if path.is_file():
        try:
            table = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            problems.append(f"{path.name}: not readable CSV ({err}); re-run the stage that writes it")
    if table.empty:
        table = pd.DataFrame(data.get("per_class") or [])
    if table.empty:
        return pd.DataFrame(columns=PER_CLASS_COLUMNS)
    for col in ("iou", "pixel_share", "real_iou"):
        table[col] = pd.to_numeric(table[col], errors="coerce") if col in table else math.nan
    if "class" not in table:
        table["class"] = range(len(table))
    if "name" not in table:
        table["name"] = table["class"].astype(str)
    return table[PER_CLASS_COLUMNS]


def _read_dict(path: Path, problems: list[str]) -> dict:
    data = (_load_json(path, problems) or {}) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def read_generators(root: Path, expected: dict[str, dict], problems: list[str],
                    missing: list[Missing]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[Path]]:
    """Every generator with a train file, an eval file or a checkpoint, and every one ``expected``
    (params_generators: name -> {"role": "asapnet" for train.name, "baseline" for a key of params.yaml
    `baselines`, "repeat" for a `repeat:` entry; "arch"; "repeat_of"; "seed"}).
    Returns (one row per generator, GENERATOR_COLUMNS; per-class tables by name; the files read), and
    appends to ``missing`` what an expected generator lacks, naming the stage that makes it."""
    metrics, models = root / "metrics", root / "models"
    found = [p.stem.removeprefix("eval-") for p in sorted(metrics.glob("eval-*.json"))]
    found += [p.stem.removeprefix("train-") for p in sorted(metrics.glob("train-*.json"))]
    if models.is_dir():
        found += [d.name for d in sorted(models.iterdir()) if d.name != "sweep" and (d / "generator.pt").is_file()]
    names = list(dict.fromkeys([*expected, *sorted(set(found))]))
    rows, per_class, read = [], {}, []
    for name in names:
        paths = {"eval": metrics / f"eval-{name}.json", "train": metrics / f"train-{name}.json",
                 "checkpoint": models / name / "generator.pt"}
        sidecars = {"eval": metrics / "provenance" / f"eval-{name}.json",
                    "train": metrics / "provenance" / f"train-{name}.json"}
        ev, tr = _read_dict(paths["eval"], problems), _read_dict(paths["train"], problems)
        ev_prov, tr_prov = _read_dict(sidecars["eval"], problems), _read_dict(sidecars["train"], problems)
        meta = {"arch": expected.get(name, {}).get("arch")} | checkpoint_meta(paths["checkpoint"])
        present = {k: _rel(root, p) for k, p in paths.items() if p.is_file()}
        read += [p for p in [*paths.values(), *sidecars.values()] if p.is_file()]
        role = expected.get(name, {}).get("role") or ("repeat" if ev_prov.get("repeat_of") else "other")
        rows.append(generator_row(name, role, ev, tr, meta, present, ev_prov, tr_prov, expected.get(name)))
        if ev:
            csv = metrics / f"eval_per_class-{name}.csv"
            per_class[name] = read_per_class(csv, ev, problems)
            read += [csv] if csv.is_file() else []
        if name not in expected:
            continue
        train_stage, eval_stage = stages(name, role)
        what = {"asapnet": "ASAP-Net", "baseline": "baseline"}.get(role, f"second seed of {rows[-1]['repeat_of']}")
        if "checkpoint" not in present:
            missing.append(Missing(f"the generator {name} ({what})",
                                   f"models/{name}/generator.pt and metrics/train-{name}.json",
                                   f"run `dvc repro {train_stage}`"))
        if not ev:
            missing.append(Missing(f"Fig. 6 point and table row of {name}" if role != "repeat" else
                                   f"the run-to-run noise ({name}, {what})", f"metrics/eval-{name}.json",
                                   f"run `dvc repro {eval_stage}`"))
    return pd.DataFrame(rows, columns=GENERATOR_COLUMNS), per_class, read


def _rel(root: Path, path: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


# ----------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------

def read_reference_budget(path: Path, problems: list[str]) -> dict:
    """The paper-like profile's training budget (e.g. profiles/paper-gpu.yaml `train.steps`), to say
    how far a run's budget is from it; {} when the file is absent."""
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        problems.append(f"{path.name}: not readable YAML ({err})")
        return {}
    train = data.get("train") or {}
    return {"file": path.name, "steps": train.get("steps"), "dataset": data.get("dataset"),
            "num_workers": train.get("num_workers")}


def read_inputs(root: str | Path, first_benchmarks: list[Path] | None = None,
                generators: dict[str, dict] | None = None, reference_profile: str | Path | None = None) -> Inputs:
    """Every result file under ``root`` (a project folder). ``first_benchmarks``: benchmark files to
    read first (the report's primary device, e.g. the DVC stage's own), before the other
    metrics/benchmark-*.json (GPU runs committed beside the CPU one). ``generators``: the generators
    params.yaml trains (name -> {"role": "asapnet" | "baseline", "arch": ...}); an absent file of
    one is listed as missing with its stage. ``reference_profile``: the paper-like profile whose
    budget the README quotes."""
    root = Path(root)
    metrics = root / "metrics"
    problems: list[str] = []
    missing: list[Missing] = []
    named = [Path(f) if Path(f).is_absolute() else root / f for f in first_benchmarks or []]
    bench_files = list(dict.fromkeys([*named, *sorted(metrics.glob("benchmark-*.json"))]))
    inference_files = sorted(metrics.glob("inference-*.json"))
    sweep_csv, sweep_json = metrics / "sweep.csv", metrics / "sweep.json"

    benchmark = read_benchmarks([f for f in bench_files if f.is_file()], problems)
    inference = read_inference(inference_files, problems)
    gpu = read_campaign(metrics, problems)
    # the campaign's phase 2 is drawn beside the benchmark files (after them: the first file stays the
    # primary one of the dvc plots series) and beside benchmarks/inference.py's reference-vs-fast rows
    benchmark = pd.concat([t for t in (benchmark, gpu.benchmark) if not t.empty], ignore_index=True) \
        if not gpu.benchmark.empty else benchmark
    inference = pd.concat([t for t in (inference, gpu.inference) if not t.empty], ignore_index=True) \
        if not gpu.inference.empty else inference
    gens, per_class, generator_files = read_generators(root, generators or {}, problems, missing)
    sweep, sweep_meta = pd.DataFrame(), {}
    if sweep_csv.is_file():
        try:
            sweep = pd.read_csv(sweep_csv)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            problems.append(f"sweep.csv: not readable CSV ({err}); re-run the `sweep` stage")
    if sweep_json.is_file():
        sweep_meta = {k: v for k, v in (_load_json(sweep_json, problems) or {}).items() if k != "trials"}
        # its provenance (dataset, parent run) once sweep.json holds numbers only, as train/eval do
        sweep_meta |= _read_dict(metrics / "provenance" / "sweep.json", problems)
    reference = {}
    if reference_profile:
        profile = Path(reference_profile)
        reference = read_reference_budget(profile if profile.is_absolute() else root / profile, problems)
        reference = {**reference, "file": str(reference_profile)} if reference else {}

    read = [*bench_files, *inference_files, *generator_files, sweep_csv, sweep_json, *gpu.files]
    files = [_rel(root, p) for p in read if p.is_file()]
    inputs = Inputs(root, benchmark, inference, gens, per_class, sweep, sweep_meta, reference, gpu, files,
                    problems=problems)
    for kind in SOURCES:  # (the GPU campaign's absence is one line of its own README section)
        if kind != "gpu" and not inputs.present(kind) and not (kind in ("train", "eval") and generators):
            inputs.missing.append(Missing(f"{kind} results", *SOURCES[kind]))
    inputs.missing += missing
    return inputs
