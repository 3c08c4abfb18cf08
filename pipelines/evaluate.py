"""`evaluate` stage: FID / KID of the trained generator on the test split, and the pixel accuracy, mIoU
and per-class IoU of the segmenter run on its images, with the real photos' scores as the ceiling
(Sec. 4.1 of the paper; asap/evaluation.py does the work).

    python -m pipelines.evaluate         # params.yaml: dataset, train.name, evaluate

Reads models/<train.name>/generator.pt (train stage), models/segmenter-<dataset>.pt (segmenter stage)
and data/prepared/<dataset>/test/. Writes
    metrics/eval.json            every number (a DVC metric)
    metrics/eval_per_class.csv   class, name, pixel_share, iou, real_iou (Fig. 11 of the paper)
    metrics/samples/<stem>.png   label | generated | real rows for the first evaluate.num_samples pairs
and logs all of it as eval_* metrics, tags and artifacts into the MLflow run that trained the generator
(its checkpoint meta "mlflow_run_id"). Real-photo Inception features are cached in evaluate.fid_cache
(outside DVC's outputs, so they survive `dvc repro`; keyed by the photos' bytes).
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

from asap.config import ConfigError, from_dict
from asap.data.prepared import DEFAULT_ROOT, prepare_hint
from asap.evaluation import (EvalConfig, batch1_runtime, evaluate_generator, generate_test_images, resolve_device,
                             score_real_photos)
from pipelines import common
from pipelines.common import MissingInput

EVAL_JSON = Path("metrics/eval.json")
PER_CLASS_CSV = Path("metrics/eval_per_class.csv")
SAMPLES = Path("metrics/samples")


def metric_key(name: str) -> str:
    """An MLflow-safe metric name part (class names such as 'traffic light' or 'cornice/sill')."""
    return re.sub(r"[^0-9A-Za-z_.\-]+", "_", name)


def check_inputs(root: Path, dataset: str, name: str) -> tuple[Path, Path, Path]:
    data_root = root / DEFAULT_ROOT / dataset
    generator = root / "models" / name / "generator.pt"
    segmenter = root / "models" / f"segmenter-{dataset}.pt"
    if not (data_root / "dataset.json").is_file():
        raise MissingInput(f"{DEFAULT_ROOT / dataset} missing: {prepare_hint(dataset)}")
    if not generator.is_file():
        raise MissingInput(f"{generator.relative_to(root)} missing: run `dvc repro train` "
                           "(or `python -m pipelines.train`)")
    if not segmenter.is_file():
        raise MissingInput(f"{segmenter.relative_to(root)} missing: run `dvc repro segmenter` "
                           "(or `python -m pipelines.segmenter`)")
    return data_root, generator, segmenter


def cache_dir(root: Path, setting: str) -> Path:
    """evaluate.fid_cache, relative to the project root; git-ignored from the inside (as pytest's
    cache is) so nobody commits the features by accident."""
    path = Path(setting) if Path(setting).is_absolute() else root / setting
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# real-photo Inception features written by the evaluate stage\n*\n")
    return path


def merge_per_class(generated: list[dict], real: list[dict]) -> list[dict]:
    """Per class: pixel share, IoU on the generated images and on the real photos (the ceiling)."""
    real_iou = {c["class"]: c["iou"] for c in real}
    return [{"class": c["class"], "name": c["name"], "pixel_share": c["pixel_share"], "iou": c["iou"],
             "real_iou": real_iou.get(c["class"])} for c in generated]


def write_per_class_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "name", "pixel_share", "iou", "real_iou"])
        writer.writeheader()
        for row in rows:  # absent classes: empty IoU cells (pandas reads NaN)
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    tmp.replace(path)


def mlflow_metrics(metrics: dict) -> dict[str, float]:
    """eval.json -> flat eval_* numbers for MLflow (None IoUs of absent classes are left out)."""
    out = {f"eval_{k}": float(metrics[k]) for k in ("fid", "kid_mean", "kid_std", "pixel_acc", "miou",
                                                   "generate_ms_per_image", "runtime_ms")
           if metrics.get(k) is not None}
    out.update({"eval_real_pixel_acc": metrics["real"]["pixel_acc"], "eval_real_miou": metrics["real"]["miou"],
                "eval_num_images": float(metrics["num_images"])})
    for c in metrics["per_class"]:
        key = metric_key(c["name"])
        out[f"eval_pixel_share_{key}"] = c["pixel_share"]
        for field in ("iou", "real_iou"):
            if c[field] is not None:
                out[f"eval_{field}_{key}"] = c[field]
    return out


def log_to_mlflow(metrics: dict, dataset: str, name: str, root: Path) -> str:
    """Log into the generator's training run; a new `evaluate-<name>-<dataset>` run when that run is
    unknown to this store (e.g. a checkpoint from elsewhere). Returns the run id used."""
    import mlflow

    experiment_id = common.setup_mlflow(f"asapnet-{dataset}")
    client = mlflow.MlflowClient(common.tracking_uri())
    run_id = metrics.get("generator_mlflow_run_id") or ""
    linked = False
    if run_id:
        try:
            client.get_run(run_id)
            linked = True
        except Exception:
            print(f"[evaluate] warning: the generator's MLflow run {run_id} is not in {common.tracking_uri()}; "
                  "logging to a new run", flush=True)
    tags = {"eval.dataset": dataset, "eval.segmenter": metrics["segmenter"], "eval.num_images": metrics["num_images"],
            "eval.git_commit": common.git_commit(), "eval.linked_to_training_run": str(linked).lower()}
    kwargs = {"run_id": run_id} if linked else {"experiment_id": experiment_id,
                                                 "run_name": f"evaluate-{name}-{dataset}",
                                                 "tags": {"stage": "evaluate"}}
    with mlflow.start_run(**kwargs) as run:
        mlflow.log_metrics(mlflow_metrics(metrics), step=int(metrics.get("generator_steps") or 0))
        mlflow.set_tags(tags)
        mlflow.log_artifact(str(root / EVAL_JSON), artifact_path="eval")
        mlflow.log_artifact(str(root / PER_CLASS_CSV), artifact_path="eval")
        if (root / SAMPLES).is_dir():
            mlflow.log_artifacts(str(root / SAMPLES), artifact_path="eval/samples")
        return run.info.run_id


def main() -> None:
    import shutil

    from asap.models.checkpoint import load_generator
    from asap.models.segmenter import load_segmenter

    root = common.project_root()
    p = common.params()
    dataset = common.dataset_name(p)
    name = (p.get("train") or {}).get("name", "asapnet")
    cfg = from_dict(EvalConfig, p.get("evaluate"), "params.yaml evaluate")
    data_root, generator_path, segmenter_path = check_inputs(root, dataset, name)
    for stale in (root / EVAL_JSON, root / PER_CLASS_CSV):  # never leave a stale result DVC would count
        stale.unlink(missing_ok=True)
    shutil.rmtree(root / SAMPLES, ignore_errors=True)

    generator, meta = load_generator(generator_path)
    if meta.get("dataset") not in (None, dataset):
        raise ConfigError(f"{generator_path.relative_to(root)} was trained on {meta['dataset']!r} but params.yaml "
                          f"`dataset` is {dataset!r}: run `dvc repro train` for {dataset!r}")
    segmenter, seg_meta = load_segmenter(segmenter_path)
    if seg_meta.get("dataset") not in (None, dataset):
        raise ConfigError(f"{segmenter_path.relative_to(root)} was trained on {seg_meta['dataset']!r}, not "
                          f"{dataset!r}: run `dvc repro segmenter`")
    fid_cache = cache_dir(root, cfg.fid_cache)
    print(f"[evaluate] {generator_path.relative_to(root)} (step {meta.get('steps', '?')}) on {dataset} test "
          f"split{f' (first {cfg.max_images})' if cfg.max_images else ''}; segmenter "
          f"{segmenter_path.relative_to(root)}; real FID features cached in {fid_cache}", flush=True)

    t0 = time.time()

    def progress(done: int, total: int) -> None:
        print(f"[evaluate] generated and scored {done}/{total} images ({time.time() - t0:.0f}s)", flush=True)

    result = evaluate_generator(generator, data_root, segmenter, batch_size=cfg.batch_size, device=cfg.device,
                                real_stats_cache=fid_cache, kid_subset_size=cfg.kid_subset_size,
                                kid_subsets=cfg.kid_subsets, max_images=cfg.max_images, progress=progress)
    real = score_real_photos(data_root, segmenter, batch_size=cfg.batch_size, device=cfg.device,
                             max_images=cfg.max_images)
    per_class = merge_per_class(result["per_class"], real["per_class"])
    metrics = {
        **{k: v for k, v in result.items() if k != "per_class"},
        "per_class": per_class,
        "real": {"pixel_acc": real["pixel_acc"], "miou": real["miou"]},
        "generator": str(generator_path.relative_to(root)), "generator_steps": meta.get("steps"),
        "generator_run_name": meta.get("run_name"), "generator_mlflow_run_id": meta.get("mlflow_run_id", ""),
        "segmenter": str(segmenter_path.relative_to(root)), "segmenter_steps": seg_meta.get("steps"),
        "fid_real_cache": str(Path(result["fid_real_cache"]).relative_to(root))
        if Path(result["fid_real_cache"]).is_relative_to(root) else result["fid_real_cache"],
        "wall_s": round(time.time() - t0, 1),
    }
    if cfg.runtime_iters:  # the paper's speed measure: one image at a time (Fig. 6 plots quality vs it)
        from asap.metrics.runtime import device_info, device_slug

        device = resolve_device(cfg.device)
        timing = batch1_runtime(generator, data_root, device=device, iters=cfg.runtime_iters)
        metrics.update(runtime_ms=timing["median_ms"], runtime_p10_ms=timing["p10_ms"],
                       runtime_p90_ms=timing["p90_ms"], runtime_timer=timing["timer"],
                       runtime_device=device_slug(device_info(device)))
    if cfg.num_samples:
        generate_test_images(generator, data_root, root / SAMPLES, batch_size=cfg.batch_size, device=cfg.device,
                             max_images=cfg.num_samples, triptych=True)
    write_per_class_csv(root / PER_CLASS_CSV, per_class)
    common.write_json(root / EVAL_JSON, metrics)
    run_id = log_to_mlflow(metrics, dataset, name, root)
    print(f"[evaluate] FID {metrics['fid']:.2f}, KID {metrics['kid_mean']:.4f} +- {metrics['kid_std']:.4f}, "
          f"pixel acc {metrics['pixel_acc']:.3f} (real {real['pixel_acc']:.3f}), mIoU {metrics['miou']:.3f} "
          f"(real {real['miou']:.3f}) on {metrics['num_images']} images; wrote {EVAL_JSON}, {PER_CLASS_CSV}, "
          f"{SAMPLES}/; MLflow run {run_id}", flush=True)


if __name__ == "__main__":
    common.run_stage(main)
