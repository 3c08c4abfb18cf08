"""`train` and `train-baseline` stages: distributed GAN training with Ray Train (Train V2) around the
in-process trainer (asap/training.py), for ASAP-Net and for every baseline.

    python -m pipelines.train                         # train.name (ASAP-Net; params: model, train, loss)
    python -m pipelines.train --generator pix2pixhd   # a key of params.yaml `baselines` (same train, loss)

- DDP across `train.num_workers` workers (gloo on CPU, NCCL on GPU), bf16 autocast on GPU.
- `train.time_budget_s` stops training after that much wall-clock time (equal-time comparisons);
  `train.steps` is then the cap. Steps reached and seconds spent go to the metrics file and MLflow.
- Checkpoints every `train.checkpoint_every` steps / `checkpoint_every_s` seconds under
  checkpoints/ray/<run name> (outside DVC's outputs, so `dvc repro` never deletes them). The run name
  ends in a hash of everything that shapes the weights (asap.training.TrainingRun.identity, the
  worker count included): re-running the stage after a kill resumes from the last checkpoint with
  the same model, optimiser, step and seconds spent; worker failures restart from it.
- MLflow from rank 0: the resolved config that runs, losses, learning rates, images/s, sample grids;
  the driver logs the final model. Default store: sqlite in the project (MLFLOW_TRACKING_URI overrides).
- Outputs: models/<name>/generator.pt (asap.models.checkpoint format), metrics/train-<name>.json.
Local Ray by default; RAY_ADDRESS points at a cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from asap.config import ConfigError
from asap.data.prepared import DEFAULT_ROOT, prepare_hint
from asap.files import exclusive
from asap.models.checkpoint import weights_sha1
from asap.training import (STATE_FILE, RunnerConfig, TrainingRun, load_newest_good, split_train_section,
                           write_checkpoint)
from pipelines import common, serving, tracking


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One Ray Train run: what it computes (``run``), how it executes (``runner``), where it logs."""
    run: TrainingRun
    runner: RunnerConfig
    run_name: str
    tracking_uri: str = ""
    mlflow_run_id: str = ""
    git_commit: str = ""


def resolve(p: dict, name: str | None = None, dataset: str | None = None) -> Job:
    """params.yaml -> the validated Job of generator ``name`` (default train.name), before Ray starts."""
    root = common.project_root()
    dataset = dataset or common.dataset_name(p)
    data_root = (root / DEFAULT_ROOT / dataset).resolve()
    if not (data_root / "dataset.json").is_file():
        raise common.MissingInput(f"{DEFAULT_ROOT / dataset} missing: {prepare_hint(dataset)}")
    _, runner = split_train_section(p.get("train"))
    run = TrainingRun.from_params(p, data_root, name)
    return Job(run=run, runner=runner, run_name=run.run_name(), git_commit=common.git_commit())


def manifest_hash(data_root: str) -> str:
    import hashlib

    path = Path(data_root) / "manifest.csv"
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "none"


# ----------------------------------------------------------------------------------------------
# The per-worker loop (runs inside Ray Train workers)
# ----------------------------------------------------------------------------------------------

def quiet_train_reports() -> None:
    """Ray Train 2.60 logs every ray.train.report as an INFO line holding the whole TrainingReport,
    under a logger named by its file path, which LoggingConfig does not reach: raise that one to WARNING."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to quiet here
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def restore(trainer, latest: Path, run_name: str, printer=None) -> None:
    """Load the checkpoint Ray hands over, or, when it is damaged, the newest one before it in the
    same run folder (Ray keeps train.keep_checkpoints of them). One line names each bad file; when
    none loads, one error says which run folder to remove to start afresh."""
    def step_of(folder: Path) -> int:
        try:
            return int(json.loads((folder / "meta.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            return -1

    others = sorted((d for d in latest.parent.glob("checkpoint_*") if d.is_dir() and d != latest),
                    key=step_of, reverse=True)
    if load_newest_good(trainer, [latest, *others], printer or print) is None:
        raise ConfigError(f"no checkpoint of training run {run_name} loads (each is named above); remove "
                          f"{latest.parent} to start that run afresh")


def prune_unrecorded(run_dir: Path) -> list[Path]:
    """Remove checkpoint folders Ray Train never registered in its snapshot: a kill while one was being
    copied in leaves a partial folder that no resume uses and nothing else removes. Returns them; one
    line names each. Called under the run's lock, so no live run is writing there."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        recorded = {r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"]}
    except FileNotFoundError:
        recorded = set()
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: leave everything for Ray to judge
        return []
    removed = []
    for folder in sorted(run_dir.glob("checkpoint_*")):
        if folder.is_dir() and folder.name not in recorded:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            print(f"[train] removed {folder}: a checkpoint Ray Train never registered (left by a kill)", flush=True)
    return removed


def train_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from asap.data.prepared import PreparedDataset
    from asap.engine import sample_grid, train_loop
    from asap.training import build_trainer

    job: Job = config["job"]
    quiet_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    dataset = PreparedDataset(job.run.data_root, "train")
    wrap = (lambda m: ray.train.torch.prepare_model(m, move_to_device=device)) if world > 1 else None
    trainer = build_trainer(job.run, device, wrap=wrap)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restore(trainer, Path(checkpoint.path), job.run_name, printer=None if rank == 0 else (lambda *a, **k: None))
        if rank == 0:
            print(f"[train] resuming {job.run_name} from step {trainer.step} ({trainer.elapsed_s:.0f} s spent)",
                  flush=True)
            note = trainer.describe_code_change(Path(config["storage"]) / job.run_name)
            if note:
                print(f"[train] note: {note}", flush=True)

    logger = None
    if rank == 0 and job.mlflow_run_id:  # off the training path: a dead server never stalls a step
        import mlflow

        client = mlflow.MlflowClient(job.tracking_uri)
        skip = tracking.logged_up_to(client, job.mlflow_run_id, "G_total") if trainer.step else 0
        logger = tracking.BackgroundLogger(job.tracking_uri, job.mlflow_run_id, Path(config["storage"]) / job.run_name,
                                           skip_up_to=skip)
    session = None  # this session's host_history entry: the host's matmul rate at its start and end
    if not trainer.done():  # every rank at once, as they train: the rate under the same sharing of the host
        session = trainer.record_host()  # train_loop prints it (and does not measure again)
        if logger:  # at the first step this session trains (a resumed run's earlier steps are logged)
            logger.log_metrics({"host_matmul_tflops": session["matmul_tflops"]}, trainer.step + 1)
    last: dict = {}

    def on_log(step: int, losses: dict) -> None:
        last.update(losses)
        if logger:
            logger.log_metrics(losses, step)

    def on_sample(step: int, batch: dict) -> None:
        if logger:
            logger.log_image(sample_grid(trainer.generator, batch), f"samples/step_{step:06d}.png", step)

    from asap.metrics.runtime import device_info, device_slug
    train_device = device_slug(device_info(device))

    def on_checkpoint(step: int) -> None:
        metrics = {"step": step, "elapsed_s": trainer.elapsed_s, **{k: float(v) for k, v in last.items()}}
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                write_checkpoint(trainer, Path(d), run_name=job.run_name, device=train_device, world_size=world,
                                 cuda_graph=trainer.graph_status())
            # every rank reports (a barrier); only rank 0 hands over the checkpoint
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)

    try:
        train_loop(trainer, dataset, rank=rank, world=world, on_log=on_log, on_sample=on_sample,
                   on_checkpoint=on_checkpoint)
        if logger and session and session["matmul_tflops_end"] is not None:  # its second sample, at its last step
            logger.log_metrics({"host_matmul_tflops": session["matmul_tflops_end"]}, trainer.step)
    finally:
        if logger:
            logger.close()  # what it cannot send waits in a spool file the driver sends (send_spool)


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

def init_ray() -> None:
    common.ray_env()  # before ray is imported: it reads its auth mode then
    import ray

    if not ray.is_initialized():
        # "local": always a fresh local instance unless RAY_ADDRESS names a cluster (a plain
        # ray.init() would attach to whatever cluster `ray start` left registered on this machine)
        # The dashboard serves Ray's state API: without it Train's placement-group cleaner warns once a
        # second that it cannot query the controller (1,018 console lines in one `make run`). It
        # listens on loopback only.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=True,
                 dashboard_host="127.0.0.1", log_to_driver=True, configure_logging=False)


def use_gpu(setting) -> bool:
    import ray

    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(setting)


def wait_for_resources(r: RunnerConfig, gpu: bool, extra_cpus: float = 0.0, what: str = "train") -> None:
    """Fail with one clear line, before Ray Train starts, when the workers cannot be placed: at once
    on a local Ray (its resources are fixed), after ``r.startup_timeout_s`` on a cluster (an
    autoscaler may add nodes meanwhile). Ray Train itself would retry the start every 60 s, forever."""
    import ray

    need_cpu = r.num_workers * r.cpus_per_worker + extra_cpus
    need_gpu = r.num_workers if gpu else 0
    cluster = bool(os.environ.get("RAY_ADDRESS"))
    deadline = time.monotonic() + (r.startup_timeout_s if cluster else 0.0)
    while True:
        total = ray.cluster_resources()
        node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        have_cpu, have_gpu = total.get("CPU", 0.0), total.get("GPU", 0.0)
        if have_cpu + 1e-9 >= need_cpu and have_gpu >= need_gpu and max(node_cpus, default=0) >= r.cpus_per_worker:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(5)
    where = f"the Ray cluster (waited {r.startup_timeout_s:g} s, train.startup_timeout_s)" if cluster else "this machine"
    gpus = f" and {need_gpu} GPU(s)" if need_gpu else ""
    fit_workers = int((have_cpu - extra_cpus) // r.cpus_per_worker) if r.cpus_per_worker else 0
    raise ConfigError(
        f"{what}.num_workers={r.num_workers} x {what}.cpus_per_worker={r.cpus_per_worker:g}"
        f"{f' + {extra_cpus:g} for the trial driver' if extra_cpus else ''} needs {need_cpu:g} CPUs{gpus}, but "
        f"{where} has {have_cpu:g} CPUs and {have_gpu:g} GPUs (largest node: {max(node_cpus, default=0):g} CPUs): "
        f"lower {what}.num_workers (at most {max(fit_workers, 0)} fit) or {what}.cpus_per_worker")


def fit(job: Job, storage_path: Path, callbacks=None):
    """Build the TorchTrainer for ``job`` and run it; returns ray.train.Result.
    Re-running with the same run name and storage resumes from the last checkpoint (Train V2)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    r = job.runner
    gpu = use_gpu(r.use_gpu)
    if not callbacks:  # a sweep trial is checked by the sweep's driver, with the trial driver's CPUs
        wait_for_resources(r, gpu)
    scaling = ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=gpu,
                                      resources_per_worker={"CPU": r.cpus_per_worker, **({"GPU": 1} if gpu else {})})
    run_config = ray.train.RunConfig(
        name=job.run_name, storage_path=str(storage_path),
        failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=r.keep_checkpoints),
        callbacks=callbacks or None,
        # Ray Train's own INFO lines (resource requests, worker-group start, every report's full
        # TrainingReport) drown the progress lines; its warnings and errors still show.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        # Train V2 reroutes print() into logging and also tees it to stdout: every progress line
        # would reach the driver twice. Our workers print plain progress lines; keep them single.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                                         **tracking.worker_env(job.tracking_uri)}})
    trainer = TorchTrainer(train_worker, train_loop_config={"job": job, "storage": str(storage_path)},
                           scaling_config=scaling, run_config=run_config)
    return trainer.fit()


def export_generator(result, job: Job, out: Path) -> dict:
    """Final Ray checkpoint -> models/<name>/generator.pt; returns the saved meta."""
    from asap.engine import code_record, describe_graph, host_matmul_tflops
    from asap.models.checkpoint import build_generator, save_generator
    from asap.training import generator_meta

    if result.checkpoint is None:
        raise RuntimeError(f"training run {job.run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        written = json.loads((Path(d) / "meta.json").read_text())
    generator = build_generator(job.run.arch, job.run.generator)
    generator.load_state_dict(state["generator"])
    # which code trained which steps (none recorded by checkpoints written before runs recorded it)
    code = code_record(state.get("code_history", []))
    # where and how fast each session ran (none recorded by checkpoints written before runs recorded it)
    hosts = state.get("host_history", [])
    meta = generator_meta(job.run, int(state["step"]), float(state["elapsed_s"]), run_name=job.run_name,
                          git_commit=job.git_commit, mlflow_run_id=job.mlflow_run_id,
                          train_device=written.get("device", "unknown"),
                          cuda_graph=describe_graph(written.get("cuda_graph")), code_history=code,
                          host_history=hosts, host_matmul_tflops=host_matmul_tflops(hosts, int(state["step"])))
    save_generator(out, generator, meta=meta)
    return meta


def mlflow_run(job: Job, storage: Path, parent_run_id: str | None = None, extra_params: dict | None = None) -> str:
    """The MLflow run of this training run: created once (deterministic name), reused on resume.
    Its params are the resolved config that runs (``TrainingRun.flat_params``), not params.yaml."""
    import mlflow

    id_file = storage / job.run_name / "mlflow_run_id"
    client = mlflow.MlflowClient(job.tracking_uri)
    if id_file.is_file():
        run_id = id_file.read_text().strip()
        try:
            client.get_run(run_id)
            return run_id
        except mlflow.exceptions.MlflowException:  # the store was reset: a new MLflow run for the same run
            print(f"[train] MLflow run {run_id} of {job.run_name} is not in {job.tracking_uri}; starting a new one",
                  flush=True)
    experiment_id = common.setup_mlflow(f"asapnet-{job.run.dataset}")
    tags = {**common.run_tags(), "mlflow.runName": job.run_name, "stage": "sweep-trial" if parent_run_id else "train",
            "generator": job.run.name, "arch": job.run.arch}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=job.run_name, tags=tags)
    why = (f"{id_file} named a run this store does not have" if id_file.is_file() else
           f"{storage / job.run_name} held no record of it: the run folder was removed and the run trained again")
    old = common.supersede_runs(client, experiment_id, run.info.run_id, job.run_name, tags["stage"], why)
    if old:
        print(f"[train] MLflow: {job.run_name} logs to a new run {run.info.run_id}; its earlier run(s) "
              f"{', '.join(old)} are tagged superseded_by it (the UI hides them with: {common.SUPERSEDED_FILTER})",
              flush=True)
    r = job.runner
    params = {**job.run.flat_params(), "dataset.manifest_sha1": manifest_hash(job.run.data_root),
              "train.num_workers": r.num_workers, "train.cpus_per_worker": r.cpus_per_worker,
              "train.use_gpu": r.use_gpu, "train.max_failures": r.max_failures, **(extra_params or {})}
    if job.run.arch == "asapnet":
        from asap.models.asapnet import ASAPNetConfig
        params["model.num_params_P"] = ASAPNetConfig(**job.run.generator).num_params
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:500]) for k, v in params.items()])
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


def code_tag(code: list[dict] | None) -> str:
    """An MLflow tag of a run's record list: ``code_history`` (which code, asap.engine.training_code,
    trained which steps) or ``host_history`` (where and at what matmul rate each session ran)."""
    return json.dumps(code) if code else "not recorded"


def log_final_model(run_id: str, generator_path: Path, metrics: dict) -> None:
    """The run's final records: the measured metrics, the served model (pipelines/serving.py: label map
    in, image out; registered in the Model Registry as ``<generator>-<dataset>``) and the checkpoint.
    A rerun of the stage that resumes a finished run (same MLflow run, same weights; its checkpoint may
    record a later commit) finds the version it registered then (tag ``weights_sha1``,
    asap.models.checkpoint.weights_sha1) and registers nothing new."""
    import mlflow

    sha1 = weights_sha1(generator_path)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_id=run_id):
        # measurements only: the settings (budget, workers, batch) are the run's params already
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()
                            if k in MEASURED and isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlflow.set_tag("stopped_by", metrics.get("stopped_by", ""))
        mlflow.set_tag("cuda_graph", metrics.get("cuda_graph", "not recorded"))  # how the steps ran
        mlflow.set_tag("code_history", code_tag(metrics.get("code_history")))
        mlflow.set_tag("host_history", code_tag(metrics.get("host_history")))  # where and how fast each session ran
        earlier = [v for v in client.search_model_versions(f"run_id = '{run_id}'")
                   if v.tags.get("weights_sha1") == sha1]
        if earlier:
            uri = f"models:/{earlier[0].name}/{earlier[0].version}"
            print(f"[train] {uri} already holds these weights (run {run_id}, weights SHA-1 {sha1[:12]}): "
                  "not logged or registered again", flush=True)
            return
        served = serving.log_generator_model(generator_path, name="generator", register=True)
        mlflow.log_artifact(str(generator_path), artifact_path="checkpoint")
    if served.registry_uri:
        client.set_model_version_tag(served.registered_name, str(served.version), "weights_sha1", sha1)
        uri = served.registry_uri
        print(f"[train] registered {uri}; serve it with `mlflow models serve -m {uri} --env-manager local "
              f"--host 127.0.0.1 --port 5001`", flush=True)


# What the final_* metrics of a training run are: measurements and the last logged losses.
MEASURED = {"steps", "train_seconds", "wall_s", "G_total", "G_gan", "G_feat", "G_vgg", "D", "it_per_s", "images_per_s",
            "host_matmul_tflops"}


def metrics_path(root: Path, name: str) -> Path:
    """metrics/train-<name>.json: numbers only (a DVC metric); its provenance sidecar (run, device,
    commit, how training stopped) is metrics/provenance/train-<name>.json beside it (a plain out)."""
    return root / "metrics" / f"train-{name}.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default=None, help="train.name (default) or a key of params.yaml baselines")
    args = ap.parse_args(argv)
    root = common.project_root()
    p = common.params()
    job = resolve(p, args.generator)
    run = job.run
    storage = (root / "checkpoints" / "ray").resolve()
    out = root / "models" / run.name / "generator.pt"
    result_path = metrics_path(root, run.name)
    sidecar = result_path.parent / "provenance" / result_path.name
    for stale in (out, result_path, sidecar):  # a failed run must not leave outputs DVC would count as done
        stale.unlink(missing_ok=True)

    common.setup_mlflow(f"asapnet-{run.dataset}")  # create the store once, before any worker
    job = replace(job, tracking_uri=common.tracking_uri())
    with exclusive(storage / f"{job.run_name}.lock", f"training run {job.run_name}"):
        prune_unrecorded(storage / job.run_name)
        init_ray()
        wait_for_resources(job.runner, use_gpu(job.runner.use_gpu))
        job = replace(job, mlflow_run_id=mlflow_run(job, storage))
        budget = (f"a {run.train.time_budget_s:g} s time budget (at most {run.train.steps} steps)"
                  if run.train.time_budget_s is not None else f"{run.train.steps} steps")
        detail = (f"S={run.generator['downsampling']}" if run.arch == "asapnet"
                  else f"width x{run.generator['width_mult']:g}")
        print(f"[train] {run.name} ({run.arch}, {detail}) on {run.dataset}: {budget} x {job.runner.num_workers} "
              f"workers; checkpoints in {storage / job.run_name}; MLflow run {job.mlflow_run_id} at {job.tracking_uri}",
              flush=True)
        t0 = time.time()
        with common.mlflow_run_failed_on_error(job.tracking_uri, job.mlflow_run_id):
            result = fit(job, storage)
            if result.error:
                raise result.error
            finish(job, result, out, result_path, t0, storage)


def finish(job: Job, result, out: Path, result_path: Path, t0: float, storage: Path) -> None:
    """The trained generator, its metrics file and the final MLflow records."""
    run = job.run
    meta = export_generator(result, job, out)
    sent = tracking.send_spool(job.tracking_uri, job.mlflow_run_id, storage / job.run_name)
    if sent:
        print(f"[train] sent {sent} metric record(s) the workers could not send while MLflow was away", flush=True)
    # numbers a user compares across runs (the DVC metric) ...
    metrics = {"steps": meta["steps"], "train_seconds": meta["train_seconds"], "wall_s": round(time.time() - t0, 1),
               "num_workers": job.runner.num_workers, "global_batch": meta["global_batch"],
               **({"time_budget_s": run.train.time_budget_s} if run.train.time_budget_s is not None else {}),
               **({"host_matmul_tflops": round(meta["host_matmul_tflops"], 4)}
                  if meta["host_matmul_tflops"] is not None else {}),
               **{k: v for k, v in (result.metrics or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "elapsed_s")}}
    # ... and what they come from (metrics/provenance/train-<name>.json)
    provenance = {"name": run.name, "arch": run.arch, "dataset": run.dataset, "train_seed": run.train.seed,
                  "stopped_by": meta["stopped_by"], "train_device": meta["train_device"], "run_name": job.run_name,
                  "mlflow_run_id": job.mlflow_run_id, "git_commit": job.git_commit,
                  "generator": str(Path("models") / run.name / out.name), "cuda_graph": meta["cuda_graph"],
                  "code_history": meta["code_history"] or "not recorded (checkpoint older than the record)",
                  "host_history": meta["host_history"] or "not recorded (checkpoint older than the record)"}
    log_final_model(job.mlflow_run_id, out, {**metrics, "stopped_by": meta["stopped_by"],
                                             "cuda_graph": meta["cuda_graph"], "code_history": meta["code_history"],
                                             "host_history": meta["host_history"]})
    import mlflow
    mlflow.MlflowClient(job.tracking_uri).set_terminated(job.mlflow_run_id, "FINISHED")
    sidecar = result_path.parent / "provenance" / result_path.name
    common.write_json(sidecar, provenance)
    common.write_json(result_path, metrics)
    print(f"[train] wrote {out} ({meta['steps']} steps, {meta['train_seconds']:.0f} s, stopped by "
          f"{meta['stopped_by'].replace('_', ' ')}), {result_path} and {sidecar}", flush=True)


if __name__ == "__main__":
    common.run_stage(lambda: main(sys.argv[1:]))
