"""The GPU campaign's scored files (benchmarks/gpu_campaign.py, docs/gpu.md) as report tables.

`python -m benchmarks.gpu_campaign score DIR` writes, per device (``<slug>``, e.g. nvidia-h200):

    metrics/gpu-<slug>-correctness.json   phase 1: pytest -m gpu and each kernel case's error
    metrics/gpu-<slug>-inference.json     phase 2: batch-1 latency, reference vs fast path, fp32/bf16, baselines
    metrics/gpu-<slug>-training.json      phase 3: training step, ours vs the authors' way
    metrics/gpu-<slug>-quality.json       phase 4 scored on the CPU: equal-time FID/KID/acc/mIoU per generator

Phase 2's rows are returned in the layouts of asap.report.inputs (read_benchmarks for Fig. 1, 4 and
8, read_inference for the reference-vs-fast-path figure), so the figures draw them beside the CPU
benchmark; every device label carries "[GPU campaign]" ("[GPU campaign, smoke]" for the CPU smoke
mode, whose numbers measure nothing), before the precision. Plain pandas; nothing here computes a
number the files do not hold except the ratios of two numbers of the same file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

KINDS = ("correctness", "inference", "training", "quality")
# what phase 3's reference ran in files whose rows do not say ("authors_way_runs", benchmarks/training.py)
AUTHORS_LAYOUT_ONLY = "their layout, our step"
FILE_PATTERN = re.compile(r"gpu-(?P<slug>.+)-(?P<kind>correctness|inference|training|quality)\.json")

QUALITY_COLUMNS = ["file", "device", "slug", "smoke", "name", "arch", "fid", "kid_mean", "kid_std", "pixel_acc",
                   "miou", "num_images", "steps", "train_seconds", "stopped_by", "graphed", "budget_s", "runtime_ms",
                   "reference_fp32_ms", "floor_fid", "floor_kid_mean", "floor_kid_std", "floor_num_images",
                   "real_pixel_acc", "real_miou", "commit", "error"]
TARGET_COLUMNS = ["file", "device", "slug", "phase", "target", "measured", "goal", "met", "ratio_to_target", "bound",
                  "bound_is"]
TRAINING_COLUMNS = ["file", "device", "size", "batch", "precision", "authors_way", "ours_images_per_s",
                    "authors_images_per_s",
                    "speedup", "graphed_images_per_s", "speedup_graphed", "speedup_channels_last",
                    "speedup_vs_authors_fp32",
                    "generator_speedup", "authors_generator_share", "generator_alone_bound", "flop_ratio",
                    "ours_peak_fraction", "graphed_peak_fraction", "authors_peak_fraction", "error"]
PIXELWISE_COLUMNS = ["file", "device", "size", "batch", "precision", "S", "reference_ms", "authors_ms", "fused_ms",
                     "fused_stash_ms", "fused_vs_authors", "fused_vs_reference", "reference_peak_mb", "authors_peak_mb",
                     "fused_peak_mb", "fused_stash_peak_mb",
                     "error"]
KERNEL_COLUMNS = ["file", "device", "phase", "what", "precision", "measured_ms", "measured_as", "total_ms", "unit",
                  "calls", "by_kind"]
PHASES = {"correctness": "1 correctness", "inference": "2 inference", "training": "3 training step",
          "quality": "4 equal-time quality"}
# The targets of issue 13, as the campaign's files name them (phase kind, start of the name, the issue's
# words): each gets a row, "not measured" when no file of that device holds it.
ISSUE_TARGETS = [
    ("inference", "1024x1024 fast bf16 batch-1 ms <= 1.0", "1024x1024 fast path bf16, batch 1: <= 1.0 ms"),
    ("inference", "1024x1024 fast bf16 >= 8x", "1024x1024 fast path bf16: >= 8x the fp32 reference"),
    ("inference", "512x1024 fast bf16 batch-1 ms <= 0.8", "512x1024 fast path bf16, batch 1: <= 0.8 ms"),
    ("inference", "pixelwise kernel time / memory-traffic bound", "pixelwise kernel within 2x of its memory bound"),
    ("training", "ours >= 2x the authors' way", "training step >= 2x the authors' way"),
    ("quality", "ASAP-Net FID <= pix2pixHD", "equal-time FID: ASAP-Net <= pix2pixHD"),
    ("quality", "ASAP-Net FID within 10% of SPADE", "equal-time FID: ASAP-Net within 10% of SPADE"),
    ("quality", "ASAP-Net inference >= 5x faster than SPADE", "ASAP-Net inference >= 5x faster than SPADE"),
]


@dataclass
class GpuCampaign:
    files: list[Path] = field(default_factory=list)           # every gpu-*.json read
    benchmark: pd.DataFrame = field(default_factory=pd.DataFrame)   # phase 2 in read_benchmarks' columns
    inference: pd.DataFrame = field(default_factory=pd.DataFrame)   # phase 2 ASAP-Net in read_inference's
    quality: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUALITY_COLUMNS))
    training: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRAINING_COLUMNS))
    pixelwise: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PIXELWISE_COLUMNS))
    targets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TARGET_COLUMNS))
    kernels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=KERNEL_COLUMNS))


def num(value) -> float:
    """A number from a JSON/CSV value; None, strings and bools -> NaN (shared with asap.report.inputs)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def campaign_label(info: dict, precision: str | None, smoke: bool) -> str:
    """"NVIDIA H200 [GPU campaign], bf16": the device as inputs.device_label names it, marked as the
    campaign's (and as a smoke run, whose CPU numbers measure nothing), then the precision if any."""
    from asap.report.inputs import device_label

    base = device_label(info, "x").rsplit(",", 1)[0] + f" [GPU campaign{', smoke' if smoke else ''}]"
    return f"{base}, {precision}" if precision else base


def _commit(record: dict) -> str:
    return str(((record.get("env") or record.get("campaign") or {}).get("commit") or {}).get("commit") or "")


def _load(path: Path, problems: list[str]) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        problems.append(f"{path.name}: not readable JSON ({err}); run `python -m benchmarks.gpu_campaign score` again")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name}: not a GPU campaign file (a JSON object expected)")
        return None
    return data


def _benchmark_rows(path: Path, record: dict) -> tuple[list[dict], list[dict]]:
    """Phase 2 rows -> (read_benchmarks rows, read_inference rows of ASAP-Net's paths)."""
    from asap.report.inputs import megapixels

    info = (record.get("env") or {}).get("device") or {}
    smoke, commit = bool(record.get("smoke")), _commit(record)
    settings = record.get("settings") or {}
    bench, inference = [], []
    for r in (record.get("result") or {}).get("rows", []):
        if "error" in r or not isinstance(r.get("batch1_ms"), dict):
            continue
        path_kind, precision = r.get("path", "reference"), r.get("precision", "fp32")
        b1 = r["batch1_ms"]
        fast = path_kind != "reference"
        label = campaign_label(info, precision, smoke)
        bench.append({"file": path.name, "device": label, "device_kind": info.get("device", "?"),
                      "model": r["model"] + (f"-{path_kind}" if fast else ""), "arch": r.get("arch", r["model"]),
                      "fast": fast, "width_mult": num(r.get("width_mult", 1.0)), "size": r["size"],
                      "megapixels": megapixels(r["size"]), "params": num(r.get("params")),
                      "median_ms": num(b1.get("median_ms")), "p10_ms": num(b1.get("p10_ms")),
                      "p90_ms": num(b1.get("p90_ms")), "lr_ms": num(r.get("lr_ms")), "hr_ms": num(r.get("hr_ms")),
                      "n": num(b1.get("n")), "commit": commit,
                      "warmup": num(settings.get("baseline_warmup" if r["model"] != "asapnet" else "warmup")),
                      "iters": num(settings.get("baseline_iters" if r["model"] != "asapnet" else "iters"))})
        if r["model"] == "asapnet":
            inference.append({"file": path.name, "device": label, "device_kind": info.get("device", "?"),
                              "size": r["size"], "megapixels": megapixels(r["size"]), "path": path_kind,
                              "precision": precision, "S": num(r.get("S")), "P": num(r.get("P")),
                              "median_ms": num(b1.get("median_ms")), "p10_ms": num(b1.get("p10_ms")),
                              "p90_ms": num(b1.get("p90_ms")), "mlp_ms": num(r.get("hr_ms")),
                              "lowres_ms": num(r.get("lr_ms")), "lowres_torch_norm_ms": num(r.get("lr_torch_norm_ms")),
                              "wide_convs": _wide_convs(r.get("lr_convs")),
                              "max_abs_diff": num(r.get("max_abs_diff_vs_reference_fp32")),
                              "note": ", ".join(n for n, on in (("fused Triton MLP", r.get("fused_kernel")),
                                                                ("norm kernels", r.get("fused_norm"))) if on),
                              "created": f"commit {commit[:10]}" if commit else ""})
    return bench, inference


WIDE_CONV_FORMS = {"cudnn": "cuDNN", "gemm": "cuBLAS GEMM", "split-k": "cuBLAS split-K"}  # lowres_forms' names


def _wide_convs(choice) -> str:
    """A fast row's lr_convs -> "cuBLAS GEMM (0.41 vs cuDNN 0.52 ms, graph)": which form of the low-res
    stream's wide convs it ran, with the times of the stream in each form it was chosen among, and how
    they were taken (graph replays; "eager" calls, as every record made before the timing moved into
    graphs); a form that could not run there is named as such."""
    if not isinstance(choice, dict) or choice.get("use") not in WIDE_CONV_FORMS:
        return ""
    use = choice["use"]
    ms = {k: v for k, v in (choice.get("ms") or {}).items() if k in WIDE_CONV_FORMS and isinstance(v, (int, float))}
    failed = "".join(f", {WIDE_CONV_FORMS.get(k, k)} failed" for k in (choice.get("failed") or {}))
    if use in ms and len(ms) > 1:
        how = "graph" if choice.get("timed") == "cuda graph replays" else "eager"
        others = ", ".join(f"{WIDE_CONV_FORMS[k]} {v:.2f}" for k, v in ms.items() if k != use)
        return f"{WIDE_CONV_FORMS[use]} ({ms[use]:.2f} vs {others} ms, {how}{failed})"
    return WIDE_CONV_FORMS[use] + (" (timing failed)" if choice.get("error") else f" ({failed[2:]})" if failed else "")


def _targets(path: Path, record: dict, kind: str, label: str) -> list[dict]:
    result = record if kind == "quality" else (record.get("result") or {})
    rows = []
    for name, t in (result.get("targets") or {}).items():
        t = t or {}
        rows.append({"file": path.name, "device": label, "slug": FILE_PATTERN.match(path.name)["slug"],
                     "phase": PHASES[kind], "target": name,
                     "measured": num(t.get("measured")), "goal": num(t.get("target")),
                     "met": t.get("met") if isinstance(t.get("met"), bool) else None,
                     "ratio_to_target": num(t.get("ratio_to_target")),
                     # what this device allows at best: a time floor or a speed-up ceiling (newer files)
                     "bound": num(t.get("bound")), "bound_is": str(t.get("bound_is") or "")})
    if kind == "correctness" and isinstance(result.get("pytest"), dict):
        junit = result["pytest"].get("junit") or {}
        rows.append({"file": path.name, "device": label, "slug": FILE_PATTERN.match(path.name)["slug"],
                     "phase": PHASES[kind],
                     "target": "fused kernel and fast path match the reference (pytest -m gpu: tests passed)",
                     "measured": num(junit.get("passed")), "goal": num(junit.get("total")),
                     "met": (result.get("ok") if isinstance(result.get("ok"), bool) else None)
                     if junit.get("skipped") != junit.get("total") else None,
                     "ratio_to_target": math.nan, "bound": math.nan, "bound_is": ""})
    return rows


def _quality_rows(path: Path, record: dict, label: str) -> list[dict]:
    floor = record.get("real_vs_real_floor") or {}
    real = record.get("real_photos_segmentation") or {}
    rows = []
    for name, g in (record.get("generators") or {}).items():
        latency = g.get("latency_train_size") or {}
        rows.append({"file": path.name, "device": label, "slug": FILE_PATTERN.match(path.name)["slug"],
                     "smoke": bool(record.get("smoke")), "name": name, "arch": g.get("arch") or name,
                     **{k: num(g.get(k)) for k in ("fid", "kid_mean", "kid_std", "pixel_acc", "miou", "num_images",
                                                      "steps", "train_seconds")},
                     "stopped_by": str(g.get("stopped_by") or ""),
                     # the steps replayed as one CUDA graph (train.cuda_graph); files before it: False
                     "graphed": bool((g.get("cuda_graph") or {}).get("active")),
                     "budget_s": num(record.get("budget_s")),
                     "runtime_ms": num(latency.get("best_ms")),
                     "reference_fp32_ms": num(latency.get("reference_fp32_ms")),
                     "floor_fid": num(floor.get("fid")), "floor_kid_mean": num(floor.get("kid_mean")),
                     "floor_kid_std": num(floor.get("kid_std")), "floor_num_images": num(floor.get("num_images")),
                     "real_pixel_acc": num(real.get("pixel_acc")), "real_miou": num(real.get("miou")),
                     "commit": _commit(record), "error": str(g.get("error") or "")})
    return rows


def _training_rows(path: Path, record: dict, label: str) -> list[dict]:
    rows = []
    for r in (record.get("result") or {}).get("rows", []):
        rows.append({"file": path.name, "device": label, "size": r.get("size"), "batch": num(r.get("batch")),
                     "precision": r.get("precision"),
                     # what the authors' way ran: files before AuthorsStep ran their layout in our step
                     "authors_way": r.get("authors_way_runs", AUTHORS_LAYOUT_ONLY),
                     "ours_images_per_s": num((r.get("ours") or {}).get("images_per_s")),
                     "authors_images_per_s": num((r.get("authors_way") or {}).get("images_per_s")),
                     "speedup": num(r.get("speedup")),
                     # ours with the whole step as one CUDA graph (train.cuda_graph), where phase 3 timed it
                     "graphed_images_per_s": num((r.get("ours_graphed") or {}).get("images_per_s")),
                     "speedup_graphed": num(r.get("speedup_graphed")),
                     # ours with the perceptual network channels-last, where phase 3 timed it
                     "speedup_channels_last": num(r.get("speedup_channels_last")),
                     "speedup_vs_authors_fp32": num(r.get("speedup_vs_authors_fp32")),
                     "generator_speedup": num(r.get("generator_speedup")),
                     "authors_generator_share": num(r.get("authors_generator_share")),
                     # named step_speedup_bound before the two steps differed (the same 1 / (1 - share))
                     "generator_alone_bound": num(r.get("generator_alone_bound", r.get("step_speedup_bound"))),
                     # counted arithmetic, authors' / ours (files before it was counted: NaN)
                     "flop_ratio": num(r.get("flop_ratio")),
                     **{f"{short}_peak_fraction": num((r.get(way) or {}).get("fraction_of_matmul_peak"))
                        for short, way in (("ours", "ours"), ("graphed", "ours_graphed"),
                                           ("authors", "authors_way"))},
                     "error": str(r.get("error") or "")})
    return rows


def _pixelwise_rows(path: Path, record: dict, label: str) -> list[dict]:
    rows = []
    for r in (record.get("result") or {}).get("pixelwise", []):
        ms, peak = r.get("ms") or {}, r.get("peak_mb") or {}
        rows.append({"file": path.name, "device": label, "size": r.get("size"), "batch": num(r.get("batch")),
                     "precision": r.get("precision"), "S": num(r.get("S")),
                     "reference_ms": num(ms.get("reference")), "authors_ms": num(ms.get("authors_way")),
                     "fused_ms": num(ms.get("fused")), "fused_stash_ms": num(ms.get("fused_stash")),
                     "fused_vs_authors": num(r.get("fused_vs_authors")),
                     "fused_vs_reference": num(r.get("fused_vs_reference")),
                     "reference_peak_mb": num(peak.get("reference")), "authors_peak_mb": num(peak.get("authors_way")),
                     "fused_peak_mb": num(peak.get("fused")), "fused_stash_peak_mb": num(peak.get("fused_stash")),
                     "error": str(r.get("error") or "")})
    return rows


def _kernel_row(path: Path, label: str, phase: str, what: str, precision: str, measured_ms, measured_as: str,
                k: dict) -> dict:
    """One profile (benchmarks/campaign/breakdown.py) -> a row: its total beside the time the phase
    measured for the same work, and its kinds as "conv / GEMM 0.610 ms (14), norm 0.080 ms (22)"."""
    calls = k.get("calls_by_kind") or {}
    kinds = ", ".join(f"{kind} {ms:.3f} ms" + (f" ({calls[kind]:.0f})" if kind in calls else "")
                      for kind, ms in (k.get("by_kind_ms") or {}).items())
    return {"file": path.name, "device": label, "phase": phase, "what": what, "precision": precision,
            "measured_ms": num(measured_ms), "measured_as": measured_as, "total_ms": num(k.get("total_ms")),
            "unit": k.get("unit", "kernels"), "calls": num(k.get("calls_per_forward")),
            "by_kind": kinds if "error" not in k else f"not profiled: {str(k['error'])[:100]}"}


def _kernel_rows(path: Path, record: dict, kind: str, label: str) -> list[dict]:
    """Where the time goes: phase 2's fast-path profiles (forward and low-res stream) and phase 3's
    profile of our eager training step, each beside the time its phase measured."""
    rows = []
    result = record.get("result") or {}
    if kind == "inference":
        for r in result.get("rows", []):
            k = r.get("kernels")
            if not k or "error" in r:
                continue
            if "error" in k:
                rows.append(_kernel_row(path, label, PHASES[kind], f"fast path {r['size']}", r.get("precision"),
                                        None, "", k))
                continue
            b1 = (r.get("batch1_ms") or {}).get("median_ms")
            rows.append(_kernel_row(path, label, PHASES[kind], f"fast path {r['size']}, whole forward",
                                    r.get("precision"), b1, "batch 1, one CUDA graph replay" if r.get("cuda_graph")
                                    else "batch 1", k["forward"]))
            rows.append(_kernel_row(path, label, PHASES[kind], f"fast path {r['size']}, low-res stream",
                                    r.get("precision"), r.get("lr_ms"), "low-res stream alone, eager", k["lowres"]))
    elif kind == "training":
        for r in result.get("rows", []):
            ours = r.get("ours") or {}
            if not ours.get("kernels"):
                continue
            step = ours.get("step_s_median")
            rows.append(_kernel_row(path, label, PHASES[kind], f"our step {r['size']} batch {r['batch']}",
                                    r.get("precision"), None if step is None else step * 1e3, "eager step",
                                    ours["kernels"]))
    return rows


def read_campaign(metrics: Path, problems: list[str]) -> GpuCampaign:
    """Every metrics/gpu-<slug>-<kind>.json; a file that is not the campaign's is listed in ``problems``."""
    from asap.report.inputs import read_benchmarks, read_inference

    out = GpuCampaign()
    bench, inference, quality, training, pixelwise, targets, kernels = [], [], [], [], [], [], []
    order = {k: i for i, k in enumerate(KINDS)}
    paths = sorted((p for p in metrics.glob("gpu-*.json") if FILE_PATTERN.match(p.name)),
                   key=lambda p: (FILE_PATTERN.match(p.name)["slug"], order[FILE_PATTERN.match(p.name)["kind"]]))
    for path in paths:
        kind = FILE_PATTERN.match(path.name)["kind"]
        record = _load(path, problems)
        if record is None:
            continue
        schema = str(record.get("schema", ""))
        if not schema.startswith("asap-gpu-"):
            problems.append(f"{path.name}: schema {schema!r}, not a GPU campaign file (asap-gpu-campaign/1, "
                            "asap-gpu-quality/1)")
            continue
        out.files.append(path)
        smoke = bool(record.get("smoke"))
        info = ((record.get("env") or record.get("campaign") or {}).get("device")) or {}
        label = campaign_label(info, None, smoke)
        if kind == "inference":
            b, i = _benchmark_rows(path, record)
            bench += b
            inference += i
        elif kind == "quality":
            quality += _quality_rows(path, record, label)
        elif kind == "training":
            training += _training_rows(path, record, label)
            pixelwise += _pixelwise_rows(path, record, label)
        targets += _targets(path, record, kind, label)
        kernels += _kernel_rows(path, record, kind, label)
    devices = {t["slug"]: t["device"] for t in targets}
    devices |= {q["slug"]: q["device"] for q in quality}
    for slug, label in devices.items():  # the issue's targets no file of this device holds: "not measured"
        for kind, start, words in ISSUE_TARGETS:
            if not any(t["slug"] == slug and t["target"].startswith(start) for t in targets):
                targets.append({"file": f"gpu-{slug}-{kind}.json", "device": label, "slug": slug,
                                "phase": PHASES[kind], "target": f"{words} (not in the file)",
                                "measured": math.nan, "goal": math.nan, "met": None, "ratio_to_target": math.nan})
    columns = read_benchmarks([], []).columns
    out.benchmark = pd.DataFrame(bench, columns=columns)
    out.inference = pd.DataFrame(inference, columns=read_inference([], []).columns)
    out.quality = pd.DataFrame(quality, columns=QUALITY_COLUMNS)
    out.training = pd.DataFrame(training, columns=TRAINING_COLUMNS)
    out.pixelwise = pd.DataFrame(pixelwise, columns=PIXELWISE_COLUMNS)
    out.targets = pd.DataFrame(targets, columns=TARGET_COLUMNS)
    out.kernels = pd.DataFrame(kernels, columns=KERNEL_COLUMNS)
    return out


# ----------------------------------------------------------------------------------------------
# README tables
# ----------------------------------------------------------------------------------------------

def _value(x: float) -> str:
    """A target's measured value or goal: 3 significant digits; missing -> "not measured"."""
    return "not measured" if x != x else f"{x:.3g}"


def targets_table(targets: pd.DataFrame) -> str:
    """The issue's targets and any other the files state: measured, target, met / missed / not measured,
    and where the file gives one, the bound this device sets (a time floor from its measured matmul
    rate and copy bandwidth, or the ceiling of a speed-up from counted arithmetic)."""
    from asap.report.tables import md_table

    rows = []
    for _, t in targets.iterrows():
        verdict = {True: "**met**", False: "**missed**"}.get(t["met"], "not measured")
        if t["met"] is False and t["ratio_to_target"] == t["ratio_to_target"]:
            verdict += f" ({t['ratio_to_target']:.2f} x the target)"
        bound = (f"{t['bound']:.3g} {t['bound_is'].split(':')[0]}" if t["bound"] == t["bound"] else "n/a")
        rows.append([t["device"], t["phase"], t["target"], _value(t["measured"]), _value(t["goal"]), verdict, bound,
                     f"`metrics/{t['file']}`"])
    return md_table(["device", "phase", "target", "measured", "target value", "verdict", "bound on this device",
                     "file"], rows)


def quality_table(quality: pd.DataFrame, noise: dict[str, float]) -> str:
    """Phase 4 scored: a row per (device, generator) with its equal-time budget and its differences
    to ASAP-Net on that device (marked against the run-to-run noise, which was measured at another budget)."""
    from asap.report.tables import differences, fmt, md_table, pm

    rows = []
    for _, q in quality.iterrows():
        same = quality[(quality["file"] == q["file"]) & (quality["name"] == "asapnet")]
        if q["error"]:
            verdict = f"failed: {q['error'][:120]}"
        elif q["name"] == "asapnet" or same.empty:
            verdict = "reference"
        else:
            verdict = differences(q, same.iloc[0], noise) or "n/a"
        rows.append([q["device"], q["name"], fmt(q["fid"], 1), fmt(q["floor_fid"], 1), pm(q["kid_mean"], q["kid_std"]),
                     fmt(q["pixel_acc"], 3), fmt(q["miou"], 3), fmt(q["runtime_ms"], 3), fmt(q["steps"], 0),
                     fmt(q["train_seconds"], 1), f"{q['budget_s']:g} s" if q["budget_s"] == q["budget_s"] else "n/a",
                     fmt(q["num_images"], 0), verdict])
    return md_table(["device", "generator", "FID", "floor FID", "KID ± std", "pixel acc", "mIoU",
                     "runtime ms (best path, training size)", "steps", "train s", "budget", "test images",
                     "vs asapnet"], rows)


def training_table(training: pd.DataFrame) -> str:
    """Phase 3: ours against the authors' way of writing the training step, same run ("authors' way":
    their generator layout and their step, or, in files made before that was timed, their layout in
    our step); and the generator's forward + backward alone, where only the layout differs. Its share
    of the authors' step is what a generator alone could gain there: 1 / (1 - share) ("generator-alone
    bound"); our step's structure (one forward of G and of D) and the CUDA graph ("graphed": the whole
    step replayed as one, train.cuda_graph) gain outside the generator; so may the perceptual network
    in the channels-last layout ("VGG channels-last speed-up": ours with train.perceptual_channels_last
    against the authors' way). "FLOP ratio": the two steps'
    counted arithmetic, authors' / ours, the speed-up at an equal FLOP rate; "% of matmul
    peak": each step's counted FLOPs per second against a large matmul timed in the same run (far below
    it, a step is bound by launches or memory, not arithmetic)."""
    from asap.report.tables import fmt, md_table

    return md_table(["device", "size", "batch", "precision", "authors' way", "ours images/s", "authors' way images/s",
                     "speed-up", "ours graphed images/s", "graphed speed-up", "VGG channels-last speed-up",
                     "bf16 ours vs authors' fp32",
                     "generator fwd+bwd speed-up", "generator share of authors' step", "generator-alone bound",
                     "FLOP ratio (authors' / ours)", "% of matmul peak: ours / graphed / authors'"],
                    [[t["device"], t["size"], fmt(t["batch"], 0), t["precision"], t["authors_way"],
                      fmt(t["ours_images_per_s"], 2),
                      fmt(t["authors_images_per_s"], 2), fmt(t["speedup"], 2) if not t["error"] else t["error"][:80],
                      fmt(t["graphed_images_per_s"], 2), fmt(t["speedup_graphed"], 2),
                      fmt(t["speedup_channels_last"], 2), fmt(t["speedup_vs_authors_fp32"], 2), fmt(t["generator_speedup"], 2),
                      fmt(t["authors_generator_share"], 2), fmt(t["generator_alone_bound"], 2),
                      fmt(t["flop_ratio"], 2),
                      " / ".join(fmt(100 * t[f"{w}_peak_fraction"], 1) for w in ("ours", "graphed", "authors"))]
                     for _, t in training.iterrows()])


def pixelwise_table(pixelwise: pd.DataFrame) -> str:
    """Phase 3: the pixelwise MLP alone, forward + backward, three ways in the same run."""
    from asap.report.tables import fmt, md_table

    return md_table(["device", "size", "batch", "precision", "S", "reference ms", "authors' way ms",
                     "fused ms (recompute / stash)", "best fused vs authors' way",
                     "peak MB reference / authors' / fused (recompute / stash)"],
                    [[t["device"], t["size"], fmt(t["batch"], 0), t["precision"], fmt(t["S"], 0),
                      fmt(t["reference_ms"], 3) if not t["error"] else t["error"][:80], fmt(t["authors_ms"], 3),
                      f"{fmt(t['fused_ms'], 3)} / {fmt(t['fused_stash_ms'], 3)}", fmt(t["fused_vs_authors"], 2),
                      " / ".join(fmt(t[k], 0) for k in ("reference_peak_mb", "authors_peak_mb", "fused_peak_mb",
                                                         "fused_stash_peak_mb"))]
                     for _, t in pixelwise.iterrows()])


def kernels_table(kernels: pd.DataFrame) -> str:
    """Where the time goes: each profile's kernel time by kind, beside what its phase timed."""
    from asap.report.tables import fmt, md_table

    return md_table(["device", "phase", "what", "precision", "timed ms (how)", "kernel time ms", "kernels",
                     "by kind: ms (kernels)"],
                    [[t["device"], t["phase"], t["what"], t["precision"],
                      f"{fmt(t['measured_ms'], 3)} ({t['measured_as']})" if t["measured_as"] else "n/a",
                      fmt(t["total_ms"], 3), f"{fmt(t['calls'], 0)} {t['unit'] if t['unit'] != 'kernels' else ''}".strip(),
                      t["by_kind"]] for _, t in kernels.iterrows()])


def budget_line(quality: pd.DataFrame) -> str:
    """"NVIDIA H200 [GPU campaign]: 100 s of training per generator (steps asapnet 9000, ...), 60 test
    images": what the GPU quality points were made with."""
    parts = []
    for file, q in quality.groupby("file", sort=False):
        steps = ", ".join(f"{r['name']} {r['steps']:.0f}" for _, r in q.iterrows() if r["steps"] == r["steps"])
        secs = q["budget_s"].dropna()
        if q["graphed"].all():
            graphed = "every step as one CUDA graph"
        elif q["graphed"].any():
            graphed = f"as one CUDA graph: {', '.join(q.loc[q['graphed'], 'name'])}"
        else:
            graphed = "eager steps"
        parts.append(f"{q['device'].iloc[0]}: {f'{secs.iloc[0]:g} s' if not secs.empty else '?'} of training per "
                     f"generator (steps {steps or 'not recorded'}; {graphed}), {q['num_images'].max():.0f} test images")
    return "; ".join(parts)
