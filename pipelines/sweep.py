"""`sweep` stage: a Ray Tune grid over the downsampling factor S and the ablations (paper Fig. 9).

    python -m pipelines.sweep            # params.yaml: dataset, model, train, loss, sweep

Every grid point is trained to the same budget (FIFO, no early stopping: the runtime-vs-quality plot
needs all of them). Each trial is a driver function that builds a Ray Train TorchTrainer (Train V2
inside Tune), exports its generator, then scores it: FID/KID, segmentation accuracy/mIoU (when the
segmenter exists) and batch-1 runtime split into low-res and high-res streams (Fig. 4).

MLflow: one parent run per sweep, one child run per trial (S and the variant as params).
Resume: a trial whose result file matches its configuration is not trained again; a trial killed
mid-training resumes from its last Ray Train checkpoint (same run name and storage).
Outputs: metrics/sweep.csv + metrics/sweep.json (one row per trial), models/sweep/<trial>/generator.pt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asap.config import ConfigError, from_dict, require, require_power_of_two
from asap.models.asapnet import ASAPNetConfig
from pipelines import common
from pipelines import train as train_stage

VARIANTS = {  # Fig. 9: (b) no positional encoding, (c) spatially uniform MLP, (f) the full model
    "full": {"positional_encoding": True, "spatially_uniform": False},
    "no_pe": {"positional_encoding": False, "spatially_uniform": False},
    "uniform": {"positional_encoding": True, "spatially_uniform": True},
}


@dataclass(frozen=True)
class SweepConfig:
    """The `sweep` section of params.yaml."""
    downsampling: list = field(default_factory=lambda: [8, 16, 32])  # S values for the full model (Fig. 9d-f)
    variants: list = field(default_factory=lambda: ["no_pe", "uniform"])  # ablations, at the default S
    steps: int = 100                    # training budget of every trial
    num_workers: int = 1                # Ray Train workers per trial
    cpus_per_worker: float = 0.9        # 2-core machines: 0.2 (driver) + workers must fit
    use_gpu: str | bool = "auto"        # auto: one GPU per Ray Train worker when the cluster has GPUs
    trial_driver_cpus: float = 0.2
    max_concurrent_trials: int = 1      # a GPU cluster: the number of GPUs / (num_workers * gpus_per_worker)
    eval_max_images: int | None = None  # test images scored per trial (null = all)
    runtime_iters: int = 5              # batch-1 timing iterations per trial (after 2 warm-ups)

    def __post_init__(self):
        require(isinstance(self.downsampling, list) and self.downsampling,
                f"sweep.downsampling must be a non-empty list of S values, got {self.downsampling!r}")
        for s in self.downsampling:
            require_power_of_two("sweep.downsampling entry", s, minimum=2)
        unknown = sorted(set(self.variants) - (set(VARIANTS) - {"full"}))
        require(not unknown, f"sweep.variants {unknown} unknown; allowed: {sorted(set(VARIANTS) - {'full'})}")
        require(isinstance(self.steps, int) and self.steps >= 1, f"sweep.steps must be >= 1, got {self.steps!r}")
        require(self.max_concurrent_trials >= 1, f"sweep.max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")


def grid(sweep: SweepConfig, default_s: int) -> list[dict]:
    """Trial specs: the full model at each S, plus each ablation at the default S."""
    points = [{"variant": "full", "downsampling": s} for s in sweep.downsampling]
    points += [{"variant": v, "downsampling": default_s} for v in sweep.variants]
    for pt in points:
        pt["trial"] = f"{pt['variant']}-S{pt['downsampling']}"
    return points


def trial_cfg(base: dict, spec: dict, steps: int) -> dict:
    """The train stage's resolved config, changed to this grid point."""
    gen = {**base["generator"], "downsampling": spec["downsampling"], **VARIANTS[spec["variant"]]}
    config = ASAPNetConfig(**gen)
    config.check_size(base["height"], base["width"])
    cfg = {**base, "generator": config.to_dict(), "train": {**base["train"], "steps": steps}}
    identity = {k: cfg[k] for k in ("dataset", "generator", "loss")}
    identity["train"] = {k: v for k, v in cfg["train"].items() if k not in train_stage.CADENCE_KEYS}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    cfg["run_name"] = f"sweep-{spec['trial']}-{base['dataset']}-{digest}"
    cfg["trial"] = spec["trial"]
    return cfg


# ----------------------------------------------------------------------------------------------
# One trial (runs as a Ray Tune function trainable, in another working directory)
# ----------------------------------------------------------------------------------------------

def run_trial(config: dict) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    spec, base = config["spec"], config["base"]
    cfg = trial_cfg(base, spec, config["steps"])
    cfg["tracking_uri"] = config["tracking_uri"]
    trial_dir = Path(config["sweep_dir"]) / spec["trial"]
    result_file = trial_dir / "result.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("run_name") == cfg["run_name"]:
            print(f"[sweep] {spec['trial']}: finished earlier ({cfg['run_name']}), reusing its results", flush=True)
            tune.report({k: v for k, v in done.items() if isinstance(v, (int, float))})
            return

    cfg["mlflow_run_id"] = train_stage.mlflow_run(cfg, config["params"], Path(config["storage"]),
                                                  parent_run_id=config["parent_run_id"])
    import mlflow
    client = mlflow.MlflowClient(config["tracking_uri"])
    for key, value in {"sweep.S": spec["downsampling"], "sweep.variant": spec["variant"],
                       "sweep.trial": spec["trial"]}.items():
        try:
            client.log_param(cfg["mlflow_run_id"], key, str(value))
        except Exception:  # already logged by an earlier, interrupted attempt
            pass

    t0 = time.time()
    result = train_stage.fit(cfg, Path(config["storage"]), callbacks=[TuneReportCallback()])
    if result.error:
        raise result.error
    out = trial_dir / "generator.pt"
    meta = train_stage.export_generator(result, cfg, out)
    row = {"trial": spec["trial"], "variant": spec["variant"], "S": spec["downsampling"],
           "steps": meta["steps"], "train_wall_s": round(time.time() - t0, 1), "run_name": cfg["run_name"],
           "mlflow_run_id": cfg["mlflow_run_id"]}
    row.update(score_trial(out, base, config))
    with mlflow.start_run(run_id=cfg["mlflow_run_id"]):
        mlflow.log_metrics({f"eval_{k}": float(v) for k, v in row.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v})
    client.set_terminated(cfg["mlflow_run_id"], "FINISHED")
    common.write_json(result_file, row)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float))})


def score_trial(generator_path: Path, base: dict, config: dict) -> dict:
    """Quality (FID/KID, acc/mIoU) and batch-1 CPU runtime of one trial's generator."""
    from asap.metrics.runtime import time_asapnet
    from asap.models.checkpoint import load_generator

    torch.set_num_threads(max(1, int(config.get("score_threads", 1))))
    model, _ = load_generator(generator_path)
    scores: dict = {"P": model.config.num_params,
                    "params": sum(p.numel() for p in model.parameters())}
    labels = torch.randint(1, model.config.num_classes, (1, base["height"], base["width"]))
    timing = time_asapnet(model, labels, warmup=2, iters=config["runtime_iters"])
    scores.update({"runtime_ms": timing["median_ms"], "lr_ms": timing["lr_ms"], "hr_ms": timing["hr_ms"],
                   "runtime_device": "cpu"})
    from asap.evaluation import evaluate_generator
    segmenter = None
    if config.get("segmenter_path") and Path(config["segmenter_path"]).is_file():
        from asap.models.segmenter import load_segmenter
        segmenter, _ = load_segmenter(config["segmenter_path"])
    quality = evaluate_generator(model, base["data_root"], segmenter, batch_size=8, device="cpu",
                                 real_stats_cache=config.get("fid_cache"), max_images=config.get("eval_max_images"))
    scores.update({k: v for k, v in quality.items() if isinstance(v, (int, float))})
    return scores


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    import mlflow
    import pandas as pd
    from ray import tune

    root = common.project_root()
    p = common.params()
    base = train_stage.resolve(p)
    info_h, info_w = _size(base)
    base.update(height=info_h, width=info_w, git_commit=common.git_commit())
    sweep = from_dict(SweepConfig, p.get("sweep") or {}, "params.yaml sweep")
    base.update(num_workers=sweep.num_workers, cpus_per_worker=sweep.cpus_per_worker, use_gpu=sweep.use_gpu)
    default_s = base["generator"]["downsampling"]
    points = grid(sweep, default_s)
    for spec in points:  # every grid point must fit the image size before anything starts
        trial_cfg(base, spec, sweep.steps)

    csv_path, json_path = root / "metrics" / "sweep.csv", root / "metrics" / "sweep.json"
    for stale in (csv_path, json_path):
        stale.unlink(missing_ok=True)
    sweep_dir = (root / "models" / "sweep").resolve()
    storage = (root / "checkpoints" / "sweep").resolve()
    experiment = f"asapnet-{base['dataset']}"
    common.setup_mlflow(experiment)  # once, in the driver, before any trial
    uri = common.tracking_uri()
    parent = parent_run(uri, experiment, f"sweep-{base['dataset']}", storage, sweep, points)
    print(f"[sweep] {len(points)} trials on {base['dataset']}: {[s['trial'] for s in points]}, "
          f"{sweep.steps} steps each; MLflow parent run {parent}", flush=True)

    train_stage.init_ray()
    seg = root / "models" / f"segmenter-{base['dataset']}.pt"
    trainable = tune.with_resources(run_trial, {"CPU": sweep.trial_driver_cpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"spec": tune.grid_search(points), "base": base, "params": p, "steps": sweep.steps,
                     "storage": str(storage), "sweep_dir": str(sweep_dir), "tracking_uri": uri,
                     "parent_run_id": parent, "segmenter_path": str(seg) if seg.is_file() else None,
                     "fid_cache": str((root / "data" / "cache").resolve()),
                     "eval_max_images": sweep.eval_max_images, "runtime_iters": sweep.runtime_iters},
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name=f"sweep-{base['dataset']}", storage_path=str(storage / "tune"), verbose=1),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} sweep trial(s) failed; finished trials keep their results and "
                           f"are skipped on the next run. First error: {errors[0]}")

    rows = [json.loads((sweep_dir / s["trial"] / "result.json").read_text()) for s in points]
    table = pd.DataFrame(rows).sort_values(["variant", "S"]).reset_index(drop=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    common.write_json(json_path, {"trials": table.to_dict(orient="records"), "dataset": base["dataset"],
                                  "steps": sweep.steps, "mlflow_parent_run_id": parent})
    with mlflow.start_run(run_id=parent):
        mlflow.log_artifact(str(csv_path))
    mlflow.MlflowClient(uri).set_terminated(parent, "FINISHED")
    print(table.to_string(index=False), flush=True)
    print(f"[sweep] wrote {csv_path} and {json_path}", flush=True)


def _size(base: dict) -> tuple[int, int]:
    from asap.data.prepared import DatasetInfo
    info = DatasetInfo.load(base["data_root"])
    return info.height, info.width


def parent_run(uri: str, experiment: str, name: str, storage: Path, sweep: SweepConfig, points) -> str:
    """The sweep's parent MLflow run (deterministic name; reused when the sweep is resumed)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    id_file = storage / name / "mlflow_parent_run_id"
    if id_file.is_file():
        try:
            return client.get_run(id_file.read_text().strip()).info.run_id
        except Exception:
            pass
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name=name, tags={"stage": "sweep", "mlflow.runName": name})
    client.log_param(run.info.run_id, "sweep.grid", json.dumps([s["trial"] for s in points]))
    client.log_param(run.info.run_id, "sweep.steps", sweep.steps)
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


if __name__ == "__main__":
    common.run_stage(lambda: main(sys.argv[1:]))
