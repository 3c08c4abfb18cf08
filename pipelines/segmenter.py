"""`segmenter` stage: train the segmentation network that scores generated images (Sec. 4.1: the paper
runs a DRN-D-22 trained on each dataset's real photos; no pretrained one exists for facades).

    python -m pipelines.segmenter        # params.yaml: dataset, segmenter

Reads data/prepared/<dataset>/ (the real training photos + labels; the test photos for its scores).
Writes models/segmenter-<dataset>.pt (asap.models.segmenter format; meta: dataset, steps, recipe,
test scores, MLflow run id) and metrics/segmenter.json (training loss, pixel accuracy / mIoU / per-class
IoU on the real test photos). MLflow: experiment `asapnet-<dataset>`, run `segmenter-<dataset>`.
"""

from __future__ import annotations

import time

from asap.config import flatten, from_dict
from asap.data.prepared import DEFAULT_ROOT, DatasetInfo, prepare_hint
from asap.evaluation import SegmenterTrainConfig, score_real_photos, train_scoring_segmenter
from pipelines import common
from pipelines.common import MissingInput


def _eta(elapsed: float, done: int, total: int) -> str:
    left = elapsed / max(done, 1) * (total - done)
    return f"{int(left // 60)}m{int(left % 60):02d}s"


def main() -> None:
    root = common.project_root()
    p = common.params()
    dataset = common.dataset_name(p)
    cfg = from_dict(SegmenterTrainConfig, p.get("segmenter"), "params.yaml segmenter")
    data_root = root / DEFAULT_ROOT / dataset
    if not (data_root / "dataset.json").is_file():
        raise MissingInput(f"{DEFAULT_ROOT / dataset} missing: {prepare_hint(dataset)}")
    info = DatasetInfo.load(data_root)
    out = root / "models" / f"segmenter-{dataset}.pt"
    metrics_path = root / "metrics" / "segmenter.json"
    sidecar = root / "metrics" / "provenance" / "segmenter.json"  # dataset, run, commit, per-class IoU
    for stale in (out, metrics_path, sidecar):  # a failed run must not leave outputs DVC would count as done
        stale.unlink(missing_ok=True)

    import mlflow

    from asap.models.segmenter import save_segmenter

    experiment_id = common.setup_mlflow(f"asapnet-{dataset}")
    run_name = f"segmenter-{dataset}"
    print(f"[segmenter] {run_name}: width x{cfg.width_mult}, {cfg.steps} steps, batch {cfg.batch_size}, "
          f"crop {cfg.crop or 'none'} on {info.splits.get('train')} real training pairs", flush=True)
    t0 = time.time()
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                          tags={**common.run_tags(), "stage": "segmenter"}) as run:
        mlflow.log_params({**flatten({"segmenter": cfg.to_dict()}), "dataset": dataset})

        def on_log(step: int, loss: float) -> None:
            elapsed = time.time() - t0
            print(f"[segmenter] step {step}/{cfg.steps} loss {loss:.3f} "
                  f"({elapsed:.0f}s, eta {_eta(elapsed, step, cfg.steps)})", flush=True)
            mlflow.log_metric("train_loss", loss, step=step)

        model, history = train_scoring_segmenter(data_root, cfg, callback=on_log)
        train_s = time.time() - t0
        test = score_real_photos(data_root, model, batch_size=cfg.batch_size, device=cfg.device)
        tail = history[-min(10, len(history)):]
        metrics = {  # numbers a user compares (the DVC metric); what they come from: the sidecar
            "steps": cfg.steps, "train_s": round(train_s, 1),
            "train_loss_first": history[0], "train_loss_last10": sum(tail) / len(tail),
            "test_pixel_acc": test["pixel_acc"], "test_miou": test["miou"],
            "test_images": test["num_images"], "num_params": sum(t.numel() for t in model.parameters()),
        }
        provenance = {"dataset": dataset, "mlflow_run_id": run.info.run_id, "git_commit": common.git_commit(),
                      "segmenter": str(out.relative_to(root)), "test_per_class": test["per_class"]}
        mlflow.log_metrics({"test_pixel_acc": test["pixel_acc"], "test_miou": test["miou"],
                            "train_loss_last10": metrics["train_loss_last10"], "train_s": train_s})
        mlflow.log_metrics({f"test_iou_{c['name']}": c["iou"] for c in test["per_class"] if c["iou"] is not None})
        meta = {"dataset": dataset, "steps": cfg.steps, "recipe": cfg.to_dict(), "git_commit": common.git_commit(),
                "test_pixel_acc": test["pixel_acc"], "test_miou": test["miou"], "mlflow_run_id": run.info.run_id}
        save_segmenter(out, model, meta=meta)
        common.write_json(sidecar, provenance)
        common.write_json(metrics_path, metrics)
        mlflow.log_artifact(str(metrics_path))
        mlflow.log_artifact(str(sidecar), artifact_path="provenance")
    print(f"[segmenter] real test photos: pixel acc {test['pixel_acc']:.3f}, mIoU {test['miou']:.3f}; "
          f"wrote {out.relative_to(root)} and {metrics_path.relative_to(root)} ({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    common.run_stage(main)
