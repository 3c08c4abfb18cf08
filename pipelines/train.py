"""`train` stage: distributed ASAP-Net training with Ray Train (Train V2) around asap.engine.

    python -m pipelines.train            # params.yaml: dataset, model, train, loss

- DDP across `train.num_workers` workers (gloo on CPU, NCCL on GPU), bf16 autocast on GPU.
- Checkpoints every `train.checkpoint_every` steps under checkpoints/ray/<run name> (outside DVC's
  outputs, so `dvc repro` never deletes them). The run name is a hash of everything that shapes
  the weights: re-running the stage after a kill resumes from the last checkpoint with the same
  model, optimiser, scheduler and step; worker failures restart from it (`train.max_failures`).
- MLflow from rank 0: params, losses, learning rates, images/s, sample grids; the driver logs the
  final model. Default store: sqlite in the project (MLFLOW_TRACKING_URI overrides).
- Outputs: models/<train.name>/generator.pt (asap.models.checkpoint format), metrics/train.json.
Local Ray by default; RAY_ADDRESS points at a cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from asap.config import ConfigError, flatten, from_dict
from asap.data.prepared import DEFAULT_ROOT, DatasetInfo
from asap.engine import TrainConfig
from asap.losses import GANLossConfig
from asap.models.asapnet import ASAPNetConfig, default_downsampling
from pipelines import common

STATE_FILE = "state.pt"
# Keys of the `train` section that do not change the weights (left out of the run's identity).
RAY_KEYS = {"name", "num_workers", "use_gpu", "cpus_per_worker", "max_failures", "keep_checkpoints"}
CADENCE_KEYS = {"log_every", "checkpoint_every", "sample_every"}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

def resolve(p: dict, dataset: str | None = None) -> dict:
    """params.yaml -> a plain, validated dict every Ray worker can rebuild its configs from."""
    root = common.project_root()
    dataset = dataset or common.dataset_name(p)
    data_root = (root / DEFAULT_ROOT / dataset).resolve()
    info = DatasetInfo.load(data_root)
    model = dict(p.get("model") or {})
    if model.get("downsampling") is None:
        model["downsampling"] = default_downsampling(info.height, info.width)
    gen = from_dict(ASAPNetConfig, {**model, **info.model_kwargs()}, "params.yaml model")
    gen.check_size(info.height, info.width)
    train = dict(p.get("train") or {})
    runtime = {k: train.pop(k) for k in list(train) if k in RAY_KEYS}
    tcfg = from_dict(TrainConfig, train, "params.yaml train")
    weights_identity = {k: v for k, v in tcfg.to_dict().items() if k not in CADENCE_KEYS}
    lcfg = from_dict(GANLossConfig, p.get("loss") or {}, "params.yaml loss")
    num_workers = int(runtime.get("num_workers", 1))
    if num_workers < 1:
        raise ConfigError(f"train.num_workers must be >= 1, got {num_workers}")
    identity = {"dataset": dataset, "generator": gen.to_dict(), "train": weights_identity, "loss": lcfg.to_dict()}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    name = runtime.get("name", "asapnet")
    return {
        "dataset": dataset, "data_root": str(data_root), "generator": gen.to_dict(),
        "train": tcfg.to_dict(), "loss": lcfg.to_dict(),
        "name": name, "run_name": f"train-{name}-{dataset}-{digest}",
        "num_workers": num_workers, "use_gpu": runtime.get("use_gpu", "auto"),
        "cpus_per_worker": float(runtime.get("cpus_per_worker", 1)),
        "max_failures": int(runtime.get("max_failures", 2)),
        "keep_checkpoints": int(runtime.get("keep_checkpoints", 2)),
    }


def manifest_hash(data_root: str) -> str:
    path = Path(data_root) / "manifest.csv"
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "none"


# ----------------------------------------------------------------------------------------------
# The per-worker loop (runs inside Ray Train workers)
# ----------------------------------------------------------------------------------------------

def train_worker(cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    from asap.data.prepared import PreparedDataset
    from asap.engine import GANTrainer, sample_grid, train_loop
    from asap.losses import build_perceptual_loss
    from asap.models.asapnet import ASAPNetGenerator
    from asap.models.discriminator import DiscriminatorConfig, MultiscaleDiscriminator

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tcfg, lcfg = TrainConfig(**cfg["train"]), GANLossConfig(**cfg["loss"])
    gcfg = ASAPNetConfig(**cfg["generator"])
    torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
    device = ray.train.torch.get_device()
    dataset = PreparedDataset(cfg["data_root"], "train")
    generator = ASAPNetGenerator(gcfg)
    discriminator = MultiscaleDiscriminator(DiscriminatorConfig.for_inputs(
        gcfg.in_channels, ndf=tcfg.ndf, n_layers=tcfg.d_layers, num_scales=tcfg.d_scales))
    wrap = (lambda m: ray.train.torch.prepare_model(m, move_to_device=device)) if world > 1 else None
    trainer = GANTrainer(generator, discriminator, tcfg, lcfg, build_perceptual_loss(lcfg), device, wrap=wrap)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / STATE_FILE)
        if rank == 0:
            print(f"[train] resuming {cfg['run_name']} from step {trainer.step}", flush=True)

    mlflow = None
    if rank == 0 and cfg.get("mlflow_run_id"):
        import mlflow
        mlflow.set_tracking_uri(cfg["tracking_uri"])
        mlflow.start_run(run_id=cfg["mlflow_run_id"])
        mlflow.set_tag("ray.world_size", world)
    last: dict = {}

    def on_log(step: int, losses: dict) -> None:
        last.update(losses)
        if mlflow:
            mlflow.log_metrics({k: float(v) for k, v in losses.items()}, step=step)

    def on_sample(step: int, batch: dict) -> None:
        if mlflow:
            mlflow.log_image(sample_grid(trainer.generator, batch), artifact_file=f"samples/step_{step:06d}.png")

    def on_checkpoint(step: int) -> None:
        metrics = {"step": step, **{k: float(v) for k, v in last.items()}}
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                trainer.save(Path(d) / STATE_FILE)
                (Path(d) / "meta.json").write_text(json.dumps({"step": step, "run_name": cfg["run_name"]}))
            # every rank reports (a barrier); only rank 0 hands over the checkpoint
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)

    try:
        train_loop(trainer, dataset, rank=rank, world=world, on_log=on_log, on_sample=on_sample,
                   on_checkpoint=on_checkpoint)
    finally:
        if mlflow:
            mlflow.end_run(status="RUNNING")  # the driver closes the run once the result is exported


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

def init_ray() -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters; a real cluster sets its own
    if not ray.is_initialized():
        # "local": always a fresh local instance unless RAY_ADDRESS names a cluster (a plain
        # ray.init() would attach to whatever cluster `ray start` left registered on this machine)
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=True, configure_logging=False)


def use_gpu(setting) -> bool:
    import ray

    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(setting)


def fit(cfg: dict, storage_path: Path, callbacks=None):
    """Build the TorchTrainer for ``cfg`` (see resolve) and run it; returns ray.train.Result.
    Re-running with the same run name and storage resumes from the last checkpoint (Train V2)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    gpu = use_gpu(cfg["use_gpu"])
    scaling = ray.train.ScalingConfig(num_workers=cfg["num_workers"], use_gpu=gpu,
                                      resources_per_worker={"CPU": cfg["cpus_per_worker"],
                                                            **({"GPU": 1} if gpu else {})})
    run_config = ray.train.RunConfig(
        name=cfg["run_name"], storage_path=str(storage_path),
        failure_config=ray.train.FailureConfig(max_failures=cfg["max_failures"]),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg["keep_checkpoints"]),
        callbacks=callbacks or None,
        # Train V2 reroutes print() into logging and also tees it to stdout: every progress line
        # would reach the driver twice. Our workers print plain progress lines; keep them single.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    trainer = TorchTrainer(train_worker, train_loop_config=cfg, scaling_config=scaling, run_config=run_config)
    return trainer.fit()


def export_generator(result, cfg: dict, out: Path) -> dict:
    """Final Ray checkpoint -> models/<name>/generator.pt; returns the saved meta."""
    from asap.models.asapnet import ASAPNetGenerator
    from asap.models.checkpoint import save_generator

    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg['run_name']} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    generator = ASAPNetGenerator(ASAPNetConfig(**cfg["generator"]))
    generator.load_state_dict(state["generator"])
    meta = {"dataset": cfg["dataset"], "steps": int(state["step"]), "run_name": cfg["run_name"],
            "git_commit": cfg.get("git_commit") or common.git_commit(), "mlflow_run_id": cfg.get("mlflow_run_id", ""),
            "height": DatasetInfo.load(cfg["data_root"]).height, "width": DatasetInfo.load(cfg["data_root"]).width}
    save_generator(out, generator, meta=meta)
    return meta


def mlflow_run(cfg: dict, p: dict, storage: Path, parent_run_id: str | None = None) -> str:
    """The MLflow run of this training run: created once (deterministic name), reused on resume."""
    import mlflow

    id_file = storage / cfg["run_name"] / "mlflow_run_id"
    client = mlflow.MlflowClient(common.tracking_uri())
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        try:
            client.get_run(run_id)
            return run_id
        except Exception:  # the store was reset: start a new MLflow run for the same training run
            pass
    experiment_id = common.setup_mlflow(f"asapnet-{cfg['dataset']}")
    tags = {"mlflow.runName": cfg["run_name"], "stage": "sweep-trial" if parent_run_id else "train",
            "git_commit": cfg.get("git_commit") or common.git_commit()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=cfg["run_name"], tags=tags)
    params = {**flatten({k: v for k, v in p.items() if k in ("model", "train", "loss")}),
              "dataset": cfg["dataset"], "dataset.manifest_sha1": manifest_hash(cfg["data_root"]),
              "model.downsampling_resolved": cfg["generator"]["downsampling"],
              "model.num_params_P": ASAPNetConfig(**cfg["generator"]).num_params}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:500])
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


def log_final_model(run_id: str, generator_path: Path, metrics: dict) -> None:
    import mlflow

    from asap.models.checkpoint import load_generator

    model, meta = load_generator(generator_path)
    c = model.config
    # pt2 (torch.export) needs an example: one encoded input at the trained size
    example = torch.zeros(1, c.in_channels, meta["height"], meta["width"])
    example[:, 0] = 1
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        mlflow.pytorch.log_model(model, name="generator", input_example=example.numpy(),
                                 serialization_format="pt2")
        mlflow.log_artifact(str(generator_path), artifact_path="checkpoint")


def main(argv: list[str] | None = None) -> None:
    root = common.project_root()
    p = common.params()
    cfg = resolve(p)
    storage = (root / "checkpoints" / "ray").resolve()
    out = root / "models" / cfg["name"] / "generator.pt"
    metrics_path = root / "metrics" / "train.json"
    for stale in (out, metrics_path):  # a failed run must not leave outputs DVC would count as done
        stale.unlink(missing_ok=True)

    common.setup_mlflow(f"asapnet-{cfg['dataset']}")  # create the store once, before any worker
    cfg["tracking_uri"] = common.tracking_uri()
    cfg["mlflow_run_id"] = mlflow_run(cfg, p, storage)
    print(f"[train] run {cfg['run_name']} on {cfg['dataset']}: S={cfg['generator']['downsampling']}, "
          f"{cfg['train']['steps']} steps x {cfg['num_workers']} workers; checkpoints in {storage / cfg['run_name']}; "
          f"MLflow run {cfg['mlflow_run_id']} at {cfg['tracking_uri']}", flush=True)

    init_ray()
    t0 = time.time()
    result = fit(cfg, storage)
    if result.error:
        raise result.error
    meta = export_generator(result, cfg, out)
    metrics = {**{k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
               "steps": meta["steps"], "wall_s": round(time.time() - t0, 1), "num_workers": cfg["num_workers"],
               "run_name": cfg["run_name"], "mlflow_run_id": cfg["mlflow_run_id"]}
    log_final_model(cfg["mlflow_run_id"], out, metrics)
    import mlflow
    mlflow.MlflowClient(common.tracking_uri()).set_terminated(cfg["mlflow_run_id"], "FINISHED")
    common.write_json(metrics_path, metrics)
    print(f"[train] wrote {out} (step {meta['steps']}) and {metrics_path}", flush=True)


if __name__ == "__main__":
    common.run_stage(lambda: main(sys.argv[1:]))
