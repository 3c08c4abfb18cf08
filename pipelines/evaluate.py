"""`evaluate` and `evaluate-baseline` stages: FID / KID of a trained generator on the test split, the
real-versus-real floor FID sits on, and the pixel accuracy, mIoU and per-class IoU of the segmenter
run on its images, with the real photos' scores as the ceiling (Sec. 4.1 of the paper;
asap/evaluation.py does the work), and its batch-1 runtime.

    python -m pipelines.evaluate                       # train.name (ASAP-Net)
    python -m pipelines.evaluate --generator spade     # a key of params.yaml baselines

Reads models/<name>/generator.pt (train / train-baseline stage), models/segmenter-<dataset>.pt
(segmenter stage) and data/prepared/<dataset>/test/. Writes
    metrics/eval-<name>.json            numbers only (a DVC metric: what `dvc metrics show` compares)
    metrics/provenance/eval-<name>.json what they were measured on and where they come from: names,
                                        paths, run ids, commits, devices (a plain DVC out)
    metrics/eval_per_class-<name>.csv   class, name, pixel_share, iou, real_iou (Fig. 11 of the paper)
    metrics/samples/<name>/<stem>.png   label | generated | real rows for the first evaluate.num_samples pairs
and logs the measurements as eval_* metrics (settings as tags) and the files as artifacts into the
MLflow run that trained the generator (its checkpoint meta "mlflow_run_id"), without reopening it.
Real-photo Inception features are cached in evaluate.fid_cache (outside DVC's outputs, so they
survive `dvc repro`; keyed by the photos' bytes).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

from asap.config import ConfigError, from_dict
from asap.data.prepared import DEFAULT_ROOT, prepare_hint
from asap.devices import resolve_device
from asap.files import atomic_path
from asap.evaluation import (EvalConfig, batch1_runtime, evaluate_generator, generate_test_images, real_vs_real_floor,
                             score_real_photos)
from asap.training import generator_options, repeat_of, split_train_section
from pipelines import common
from pipelines.common import MissingInput


def eval_json(name: str) -> Path:
    return Path(f"metrics/eval-{name}.json")


def provenance_json(name: str) -> Path:
    return Path(f"metrics/provenance/eval-{name}.json")


def per_class_csv(name: str) -> Path:
    return Path(f"metrics/eval_per_class-{name}.csv")


def samples_dir(name: str) -> Path:
    return Path("metrics/samples") / name


def metric_key(name: str) -> str:
    """An MLflow-safe metric name part (class names such as 'traffic light' or 'cornice/sill')."""
    return re.sub(r"[^0-9A-Za-z_.\-]+", "_", name)


def check_inputs(root: Path, dataset: str, name: str, baseline: bool) -> tuple[Path, Path, Path]:
    data_root = root / DEFAULT_ROOT / dataset
    generator = root / "models" / name / "generator.pt"
    segmenter = root / "models" / f"segmenter-{dataset}.pt"
    if not (data_root / "dataset.json").is_file():
        raise MissingInput(f"{DEFAULT_ROOT / dataset} missing: {prepare_hint(dataset)}")
    if not generator.is_file():
        stage, module = ((f"train-baseline@{name}", f"pipelines.train --generator {name}") if baseline
                         else ("train", "pipelines.train"))
        raise MissingInput(f"{generator.relative_to(root)} missing: run `dvc repro {stage}` "
                           f"(or `python -m {module}`)")
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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "name", "pixel_share", "iou", "real_iou"])
        writer.writeheader()
        for row in rows:  # absent classes: empty IoU cells (pandas reads NaN)
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def numbers_only(record: dict, where: str = "") -> dict:
    """``record`` without its None values (a measurement not made, e.g. the runtime with
    evaluate.runtime_iters 0), nested mappings kept; anything else that is not a number is a bug here:
    the metrics file holds only what a user compares, provenance goes to the sidecar."""
    out = {}
    for key, value in record.items():
        if value is None:
            continue
        if isinstance(value, dict):
            out[key] = numbers_only(value, f"{where}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
        else:
            raise TypeError(f"eval metrics {where}{key} = {value!r} is not a number: it belongs in the provenance file")
    return out


def mlflow_metrics(metrics: dict, per_class: list[dict]) -> dict[str, float]:
    """eval-<name>.json (+ the per-class rows) -> flat eval_* measurements for MLflow (None IoUs of
    absent classes are left out; settings such as the image count are tags, see mlflow_tags)."""
    out = {f"eval_{k}": float(metrics[k]) for k in ("fid", "kid_mean", "kid_std", "pixel_acc", "miou",
                                                   "generate_ms_per_image", "runtime_ms", "runtime_host_matmul_tflops")
           if metrics.get(k) is not None}
    if metrics.get("real"):
        out.update({"eval_real_pixel_acc": metrics["real"]["pixel_acc"], "eval_real_miou": metrics["real"]["miou"]})
    if metrics.get("fid_floor"):
        out.update({"eval_fid_floor": metrics["fid_floor"]["fid"], "eval_kid_floor": metrics["fid_floor"]["kid_mean"]})
    for c in per_class:
        key = metric_key(c["name"])
        out[f"eval_pixel_share_{key}"] = c["pixel_share"]
        for field in ("iou", "real_iou"):
            if c.get(field) is not None:
                out[f"eval_{field}_{key}"] = c[field]
    return out


def mlflow_tags(metrics: dict, provenance: dict, dataset: str, linked: bool) -> dict[str, str]:
    """The settings a measurement was made with: tags, not one-point metric charts."""
    tags = {"eval.dataset": dataset, "eval.segmenter": provenance.get("segmenter"),
            "eval.num_images": metrics.get("num_images"), "eval.kid_subset_size": metrics.get("kid_subset_size"),
            "eval.kid_subsets": metrics.get("kid_subsets"), "eval.runtime_device": provenance.get("runtime_device"),
            "eval.runtime_threads": metrics.get("runtime_threads"), "eval.git_commit": common.git_commit(),
            "eval.dvc_exp_name": common.run_tags()["dvc.exp_name"], "eval.linked_to_training_run": str(linked).lower()}
    return {k: str(v) for k, v in tags.items() if v is not None}


def log_to_mlflow(metrics: dict, provenance: dict, per_class: list[dict], dataset: str, name: str, root: Path) -> str:
    """Log into the generator's training run (provenance "generator_mlflow_run_id"; through the
    client: the run is not reopened, so its duration stays the training's); a new
    `evaluate-<name>-<dataset>` run when that run is unknown to this store (e.g. a checkpoint from
    elsewhere). Returns the run id used."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    experiment_id = common.setup_mlflow(f"asapnet-{dataset}")
    client = mlflow.MlflowClient(common.tracking_uri())
    run_id = provenance.get("generator_mlflow_run_id") or ""
    linked = False
    if run_id:
        try:
            client.get_run(run_id)
            linked = True
        except mlflow.exceptions.MlflowException:
            print(f"[evaluate] warning: the generator's MLflow run {run_id} is not in {common.tracking_uri()}; "
                  "logging to a new run", flush=True)
    if not linked:
        run_id = client.create_run(experiment_id, run_name=f"evaluate-{name}-{dataset}",
                                   tags={**common.run_tags(), "stage": "evaluate", "generator": name}).info.run_id
    step, now = int(metrics.get("generator_steps") or 0), int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in mlflow_metrics(metrics, per_class).items()],
                     tags=[RunTag(k, v) for k, v in mlflow_tags(metrics, provenance, dataset, linked).items()])
    for path, folder in ((eval_json(name), "eval"), (per_class_csv(name), "eval"),
                         (provenance_json(name), "eval/provenance")):  # (two files named eval-<name>.json)
        if (root / path).is_file():
            client.log_artifact(run_id, str(root / path), artifact_path=folder)
    if (root / samples_dir(name)).is_dir():
        client.log_artifacts(run_id, str(root / samples_dir(name)), artifact_path="eval/samples")
    if not linked:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def main(argv: list[str] | None = None) -> None:
    import shutil

    from asap.models.checkpoint import load_generator
    from asap.models.segmenter import load_segmenter

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default=None, help="train.name (default) or a key of params.yaml baselines")
    args = ap.parse_args(argv)
    root = common.project_root()
    p = common.params()
    dataset = common.dataset_name(p)
    asapnet_name = split_train_section(p.get("train"))[1].name
    name = args.generator or asapnet_name
    arch, _, _ = generator_options(p, name)  # an unknown name fails here, naming the params keys
    cfg = from_dict(EvalConfig, p.get("evaluate"), "params.yaml evaluate")
    data_root, generator_path, segmenter_path = check_inputs(root, dataset, name, baseline=name != asapnet_name)
    # never leave a stale result DVC would count
    for stale in (root / eval_json(name), root / provenance_json(name), root / per_class_csv(name)):
        stale.unlink(missing_ok=True)
    shutil.rmtree(root / samples_dir(name), ignore_errors=True)

    generator, meta = load_generator(generator_path)
    if meta.get("dataset") not in (None, dataset):
        raise ConfigError(f"{generator_path.relative_to(root)} was trained on {meta['dataset']!r} but params.yaml "
                          f"`dataset` is {dataset!r}: run `dvc repro` to retrain it on {dataset!r}")
    segmenter, seg_meta = load_segmenter(segmenter_path)
    if seg_meta.get("dataset") not in (None, dataset):
        raise ConfigError(f"{segmenter_path.relative_to(root)} was trained on {seg_meta['dataset']!r}, not "
                          f"{dataset!r}: run `dvc repro segmenter`")
    fid_cache = cache_dir(root, cfg.fid_cache)
    print(f"[evaluate] {generator_path.relative_to(root)} ({meta.get('steps', '?')} steps) on {dataset} test "
          f"split{f' (first {cfg.max_images})' if cfg.max_images else ''}; segmenter "
          f"{segmenter_path.relative_to(root)}; real FID features cached in {fid_cache}", flush=True)

    t0 = time.time()

    def progress(done: int, total: int) -> None:
        print(f"[evaluate] {name}: generated and scored {done}/{total} images ({time.time() - t0:.0f}s)", flush=True)

    result = evaluate_generator(generator, data_root, segmenter, batch_size=cfg.batch_size, device=cfg.device,
                                real_stats_cache=fid_cache, kid_subset_size=cfg.kid_subset_size,
                                kid_subsets=cfg.kid_subsets, max_images=cfg.max_images, progress=progress)
    floor = real_vs_real_floor(data_root, result["num_images"], cache_dir=fid_cache, batch_size=cfg.batch_size,
                               device=cfg.device, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size)
    real = score_real_photos(data_root, segmenter, batch_size=cfg.batch_size, device=cfg.device,
                             max_images=cfg.max_images)
    per_class = merge_per_class(result["per_class"], real["per_class"])
    cache_file = Path(result["fid_real_cache"])
    # numbers a user compares (the DVC metric) ...
    metrics = {
        **{k: result[k] for k in ("num_images", "height", "width", "fid", "kid_mean", "kid_std", "kid_subset_size",
                                  "kid_subsets", "pixel_acc", "miou", "segmented_pixels", "generate_ms_per_image",
                                  "timing")},
        "params": sum(t.numel() for t in generator.parameters()),
        "width_mult": getattr(generator.config, "width_mult", None),
        "fid_floor": {k: floor[k] for k in ("fid", "kid_mean", "kid_std", "num_images")},
        "real": {"pixel_acc": real["pixel_acc"], "miou": real["miou"]},
        "generator_steps": meta.get("steps"), "generator_train_seconds": meta.get("train_seconds"),
        "generator_time_budget_s": meta.get("time_budget_s"), "generator_global_batch": meta.get("global_batch"),
        "generator_host_matmul_tflops": meta.get("host_matmul_tflops"),  # how fast its host was (train_loop)
        "segmenter_steps": seg_meta.get("steps"), "wall_s": round(time.time() - t0, 1),
    }
    # ... and what they were measured on, where they come from (metrics/provenance/eval-<name>.json)
    repeat, seed = repeat_of(p, name)
    provenance = {
        "name": name, "arch": meta.get("arch", arch), "dataset": dataset, "split": result["split"],
        "generator": str(generator_path.relative_to(root)), "generator_stopped_by": meta.get("stopped_by"),
        "generator_run_name": meta.get("run_name"), "generator_mlflow_run_id": meta.get("mlflow_run_id", ""),
        "generator_git_commit": meta.get("git_commit"), "generator_train_device": meta.get("train_device"),
        "repeat_of": repeat, "train_seed": split_train_section(p.get("train"))[0].seed if seed is None else seed,
        "segmenter": str(segmenter_path.relative_to(root)), "fid_floor_reference_split": floor["reference_split"],
        "fid_real_cache": str(cache_file.relative_to(root)) if cache_file.is_relative_to(root) else str(cache_file),
        "fid_real_cached": result["fid_real_cached"], "git_commit": common.git_commit(),
    }
    if cfg.runtime_iters:  # the paper's speed measure: one image at a time (Fig. 6 plots quality vs it)
        from asap.metrics.runtime import device_info, device_slug, with_host_rate

        device = resolve_device(cfg.device)
        # between two samples of the host's matmul rate at the same threads: a shared machine's speed moves
        # from minute to minute, and the runtime with it
        timing = with_host_rate(lambda: batch1_runtime(generator, data_root, device=device, iters=cfg.runtime_iters,
                                                       threads=cfg.runtime_threads),
                                device, threads=cfg.runtime_threads)
        metrics.update(runtime_ms=timing["median_ms"], runtime_p10_ms=timing["p10_ms"],
                       runtime_p90_ms=timing["p90_ms"], runtime_threads=timing["threads"], runtime_iters=timing["n"],
                       runtime_host_matmul_tflops=timing["host_matmul_tflops"])
        provenance.update(runtime_device=device_slug(device_info(device)), runtime_timer=timing["timer"],
                          runtime_allocator=timing["allocator"],  # the CPU allocator policy it was timed with
                          runtime_host_matmul_tflops_start=timing["host_matmul_tflops_start"],
                          runtime_host_matmul_tflops_end=timing["host_matmul_tflops_end"])
        threads = f", {timing['threads']} threads" if device.type == "cpu" else ""
        print(f"[evaluate] {name}: batch-1 runtime {timing['median_ms']:.1f} ms on {provenance['runtime_device']}"
              f"{threads}; host fp32 matmul at {timing['host_matmul_tflops_start']:.4f} TFLOP/s before, "
              f"{timing['host_matmul_tflops_end']:.4f} after", flush=True)
    metrics = numbers_only(metrics)
    if cfg.num_samples:
        generate_test_images(generator, data_root, root / samples_dir(name), batch_size=cfg.batch_size,
                             device=cfg.device, max_images=cfg.num_samples, triptych=True)
    write_per_class_csv(root / per_class_csv(name), per_class)
    common.write_json(root / provenance_json(name), provenance)
    common.write_json(root / eval_json(name), metrics)
    run_id = log_to_mlflow(metrics, provenance, per_class, dataset, name, root)
    print(f"[evaluate] {name}: FID {metrics['fid']:.1f} (real-vs-real floor {floor['fid']:.1f}), KID "
          f"{metrics['kid_mean']:.4f} +- {metrics['kid_std']:.4f}, pixel acc {metrics['pixel_acc']:.3f} (real "
          f"{real['pixel_acc']:.3f}), mIoU {metrics['miou']:.3f} (real {real['miou']:.3f}) on {metrics['num_images']} "
          f"images; wrote {eval_json(name)}, {provenance_json(name)}, {per_class_csv(name)}, {samples_dir(name)}/; "
          f"MLflow run {run_id}",
          flush=True)


if __name__ == "__main__":
    common.run_stage(lambda: main(sys.argv[1:]))
