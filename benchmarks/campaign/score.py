"""`score`: on the CPU, the images the GPU campaign brought back, scored with the evaluate stage's own
path (asap.evaluation.score_translation: FID and KID against the real test photos, pixel accuracy,
mIoU and per-class IoU of the scoring segmenter), beside the real-versus-real FID floor and the
segmenter's score on the real photos; the campaign's phase files are copied next to the scores.

    python -m benchmarks.gpu_campaign score RESULTS_DIR [--data data/prepared/facades-256x256]

writes ``<metrics-dir>/gpu-<device slug>-{quality,correctness,inference,training}.json``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from asap.files import file_sha1
from benchmarks.campaign.common import REPO, SCHEMA, commit_info, environment, phase_file, write_json

QUALITY_SCHEMA = "asap-gpu-quality/1"
COPIED = {1: "correctness", 2: "inference", 3: "training"}


def load_images(path: Path) -> tuple[list[str], np.ndarray, dict]:
    """An ``images-<name>.npz`` of the campaign -> (stems, (N, H, W, 3) uint8, meta)."""
    with np.load(path, allow_pickle=False) as data:
        images, stems, meta = data["images"], [str(s) for s in data["stems"]], json.loads(str(data["meta"]))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(stems) != len(images):
        raise ValueError(f"{path}: expected (N, H, W, 3) uint8 images with N stems, got {images.dtype} "
                         f"{images.shape} and {len(stems)} stems")
    return stems, images, meta


def image_translate(stems: list[str], images: np.ndarray):
    """A Translate (asap.evaluation) that returns the returned images of a batch's pairs, in [-1, 1]."""
    index = {stem: i for i, stem in enumerate(stems)}

    def translate(batch: dict) -> torch.Tensor:
        missing = [name for name in batch["name"] if name not in index]
        if missing:
            raise KeyError(f"no returned image for test pairs {missing[:5]}: the campaign translated another split")
        picked = images[[index[name] for name in batch["name"]]]               # (B, H, W, 3) uint8
        return torch.from_numpy(picked).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
    return translate


def evaluate_defaults() -> dict:
    """params.yaml's `evaluate` section (the evaluate stage's protocol), if there is one."""
    import yaml

    path = REPO / "params.yaml"
    params = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return dict(params.get("evaluate") or {})


def compare(generators: dict, floor: dict) -> dict:
    """ASAP-Net against each baseline: FID and KID differences, and whether the KID difference is
    inside the two KIDs' combined spread (then the two are not told apart on this test set)."""
    out = {}
    asap = generators.get("asapnet")
    for name, other in generators.items():
        if name == "asapnet" or asap is None or "fid" not in other or "fid" not in asap:
            continue
        spread = math.sqrt(asap["kid_std"] ** 2 + other["kid_std"] ** 2)
        out[f"asapnet_vs_{name}"] = {
            "fid_difference": asap["fid"] - other["fid"], "fid_ratio": asap["fid"] / other["fid"],
            "kid_difference": asap["kid_mean"] - other["kid_mean"], "kid_spread": spread,
            "kid_difference_within_spread": abs(asap["kid_mean"] - other["kid_mean"]) < spread,
            "fid_excess_over_floor": {"asapnet": asap["fid"] - floor["fid"], name: other["fid"] - floor["fid"]}}
    return out


def targets(generators: dict, inference_rows: list[dict]) -> dict:
    """The issue's equal-time quality targets, measured (None where a generator is missing)."""
    g = generators
    fid = {k: v.get("fid") for k, v in g.items()}
    out = {}
    if fid.get("asapnet") is not None and fid.get("pix2pixhd") is not None:
        out["ASAP-Net FID <= pix2pixHD FID"] = {"measured": fid["asapnet"], "target": fid["pix2pixhd"],
                                                "met": fid["asapnet"] <= fid["pix2pixhd"]}
    if fid.get("asapnet") is not None and fid.get("spade") is not None:
        out["ASAP-Net FID within 10% of SPADE FID"] = {"measured": fid["asapnet"] / fid["spade"], "target": 1.10,
                                                       "met": fid["asapnet"] <= 1.10 * fid["spade"]}
    speed = {k: (v.get("latency_train_size") or {}).get("best_ms") for k, v in g.items()}
    if speed.get("asapnet") and speed.get("spade"):
        out["ASAP-Net inference >= 5x faster than SPADE (trained generators, training size, best path each)"] = {
            "measured": speed["spade"] / speed["asapnet"], "target": 5.0, "met": speed["spade"] / speed["asapnet"] >= 5.0}
    for row in inference_rows:  # phase 2, at the paper's sizes: fast bf16 vs SPADE bf16
        if row.get("model") == "spade" and row.get("precision") == "bf16" and "error" not in row:
            fast = next((r for r in inference_rows if r.get("path") == "fast" and r.get("precision") == "bf16"
                         and r.get("size") == row["size"] and "error" not in r), None)
            if fast:
                ratio = row["batch1_ms"]["median_ms"] / fast["batch1_ms"]["median_ms"]
                out[f"ASAP-Net fast bf16 >= 5x faster than SPADE bf16 at {row['size']}"] = {
                    "measured": ratio, "target": 5.0, "met": ratio >= 5.0}
    return out


def score(run_dir: str | Path, data_root: str | Path | None = None, segmenter: str | Path | None = None,
          metrics_dir: str | Path = "metrics", fid_cache: str | Path | None = None, device: str = "auto",
          max_images: int | None = None, kid_subsets: int | None = None, kid_subset_size: int | None = None,
          batch_size: int | None = None, log=print) -> dict:
    from asap.devices import resolve_device
    from asap.evaluation import real_vs_real_floor, score_real_photos, score_translation
    from asap.metrics.fid import InceptionFeatures

    run_dir = Path(run_dir)
    quality_file = run_dir / phase_file(4)
    if not quality_file.is_file():
        raise FileNotFoundError(f"{quality_file} missing: nothing to score (did phase 4 run? see the other "
                                f"phase files in {run_dir})")
    phase4 = json.loads(quality_file.read_text())
    result4 = phase4.get("result") or {}
    dataset = result4.get("dataset")
    if not dataset:
        raise ValueError(f"{quality_file} has no result (phase 4 failed: {phase4.get('error', '?')[:300]})")
    data_root = Path(data_root) if data_root else REPO / "data" / "prepared" / dataset
    if not (data_root / "dataset.json").is_file() or data_root.name != dataset:
        raise FileNotFoundError(f"the campaign trained on {dataset}: pass --data <its prepared folder with the test "
                                f"photos> (tried {data_root})")
    defaults = evaluate_defaults()
    kid_subsets = kid_subsets or defaults.get("kid_subsets", 100)
    kid_subset_size = kid_subset_size or defaults.get("kid_subset_size", 1000)
    batch_size = batch_size or defaults.get("batch_size", 8)
    fid_cache = Path(fid_cache) if fid_cache else REPO / defaults.get("fid_cache", "data/cache")
    device = resolve_device(device)

    seg_model, seg_meta, seg_path = None, {}, None
    candidate = Path(segmenter) if segmenter else REPO / "models" / f"segmenter-{dataset}.pt"
    if candidate.is_file():
        from asap.models.segmenter import load_segmenter

        seg_model, seg_meta = load_segmenter(candidate, device)
        if seg_meta.get("dataset") not in (None, dataset):
            raise ValueError(f"{candidate} was trained on {seg_meta['dataset']!r}, not {dataset!r}")
        seg_path = str(candidate)
    elif segmenter:
        raise FileNotFoundError(f"segmenter {candidate} does not exist")

    inception = InceptionFeatures()
    protocol = dict(batch_size=batch_size, device=device, real_stats_cache=fid_cache, kid_subsets=kid_subsets,
                    kid_subset_size=kid_subset_size, max_images=max_images, inception=inception)
    generators, n_scored = {}, None
    for name, entry in result4.get("generators", {}).items():
        record = {k: entry.get(k) for k in ("arch", "params", "latency_train_size", "translate_s", "wall_s")}
        record.update({k: (entry.get("summary") or {}).get(k)
                       for k in ("steps", "train_seconds", "stopped_by", "cuda_graph")})
        if "images" not in entry:
            generators[name] = {**record, "error": entry.get("error", "no images")}
            continue
        path = run_dir / entry["images"]["file"]
        if file_sha1(path) != entry["images"]["sha1"]:
            raise ValueError(f"{path} differs from what the campaign wrote (sha1): a damaged transfer")
        stems, images, _ = load_images(path)
        log(f"[score] {name}: {len(stems)} images {images.shape[1:]}")
        scores = score_translation(image_translate(stems, images), data_root, seg_model, **protocol)
        n_scored = scores["num_images"]
        generators[name] = {**record, **{k: scores[k] for k in ("fid", "kid_mean", "kid_std", "kid_subset_size",
                                                                 "kid_subsets", "pixel_acc", "miou", "per_class",
                                                                 "num_images")}}
        log(f"[score] {name}: FID {scores['fid']:.1f}, KID {scores['kid_mean']:.4f} +- {scores['kid_std']:.4f}"
            + (f", acc {scores['pixel_acc']:.3f}, mIoU {scores['miou']:.3f}" if scores["pixel_acc"] is not None else ""))
    if n_scored is None:
        raise ValueError(f"{quality_file}: no generator brought images back")
    floor = real_vs_real_floor(data_root, n_scored, cache_dir=fid_cache, batch_size=batch_size, device=device,
                               kid_subsets=kid_subsets, kid_subset_size=kid_subset_size)
    log(f"[score] real-vs-real floor: FID {floor['fid']:.1f} ({n_scored} vs {n_scored} real photos)")
    ceiling = (score_real_photos(data_root, seg_model, batch_size=batch_size, device=device, max_images=max_images)
               if seg_model is not None else None)

    phase2 = run_dir / phase_file(2)
    inference_rows = ((json.loads(phase2.read_text()).get("result") or {}).get("rows", [])
                      if phase2.is_file() else [])
    slug = phase4["env"]["device"]["slug"]
    out = {"schema": QUALITY_SCHEMA, "campaign_schema": phase4.get("schema", SCHEMA), "smoke": phase4.get("smoke"),
           "campaign": {k: phase4["env"][k] for k in ("device", "versions", "commit")},
           "scored_with": {**environment(torch.device("cpu"), commit_info()), "device_used": str(device)},
           "dataset": dataset, "data_root": str(data_root), "budget_s": result4.get("budget_s"),
           "budget_s_requested": phase4.get("budget_s_requested"), "num_images": n_scored,
           "segmenter": seg_path, "segmenter_steps": seg_meta.get("steps"),
           "segmenter_note": None if seg_path else f"no models/segmenter-{dataset}.pt: run `dvc repro segmenter` "
                                                  "and score again for pixel accuracy and mIoU",
           "real_vs_real_floor": floor, "real_photos_segmentation": ceiling, "generators": generators,
           "comparisons": compare(generators, floor), "targets": targets(generators, inference_rows),
           "notes": ["FID on the test split is biased at this size: read it beside real_vs_real_floor",
                     "kid_difference_within_spread: the KID difference is smaller than the two KIDs' combined "
                     "std over subsets, so the two generators are not told apart on this test set",
                     "one training seed per generator: seed-to-seed noise is not measured"]}
    metrics_dir = Path(metrics_dir)
    written = [write_json(metrics_dir / f"gpu-{slug}-quality.json", out)]
    for phase, name in COPIED.items():
        src = run_dir / phase_file(phase)
        if src.is_file():
            dst = metrics_dir / f"gpu-{slug}-{name}.json"
            shutil.copyfile(src, dst)
            written.append(dst)
    out["written"] = [str(p) for p in written]
    log(f"[score] wrote {', '.join(str(p) for p in written)}")
    return out
