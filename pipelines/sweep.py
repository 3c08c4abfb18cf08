"""`sweep` stage: a Ray Tune grid over the downsampling factor S and the ablations (paper Fig. 9).

    python -m pipelines.sweep            # params.yaml: dataset, model, train, loss, sweep

Every grid point is trained to the same budget (FIFO, no early stopping: the runtime-vs-quality plot
needs all of them). Each trial is a driver function that builds a Ray Train TorchTrainer (Train V2
inside Tune), exports its generator, then scores it: FID/KID, segmentation accuracy/mIoU (when the
segmenter exists). Once every trial is done and Ray has shut down, the driver times each trial's
batch-1 CPU runtime, split into low-res and high-res streams (Fig. 4), one after another in one process
(every sweep run re-times every trial, reused ones too), so that the trials' runtimes compare.

MLflow: one parent run per sweep, one child run per trial whose params are the trial's own resolved
config (its S, switches, steps, budget and worker count), with S and the variant as sweep.* params.
Resume: a trial whose result file matches its configuration is not trained again (the console says
when the training code changed since it trained); a trial killed mid-training resumes from its last
Ray Train checkpoint (same run name and storage).
Outputs: metrics/sweep.csv + metrics/sweep.json (one row per trial), models/sweep/<trial>/generator.pt.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from asap.config import from_dict, require, require_power_of_two
from asap.evaluation import EvalConfig
from asap.training import check_fits
from pipelines import common, tracking
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
    steps: int = 100                    # training steps of every trial (the cap when time_budget_s is set)
    time_budget_s: float | None = None  # wall-clock seconds of training per trial; null: steps decide
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
        require(self.time_budget_s is None or (isinstance(self.time_budget_s, (int, float))
                                               and math.isfinite(self.time_budget_s) and self.time_budget_s > 0),
                f"sweep.time_budget_s must be null or a number of seconds > 0, got {self.time_budget_s!r}")
        require(isinstance(self.num_workers, int) and self.num_workers >= 1,
                f"sweep.num_workers must be a positive integer, got {self.num_workers!r}")
        require(self.max_concurrent_trials >= 1, f"sweep.max_concurrent_trials must be >= 1, got {self.max_concurrent_trials}")


def grid(sweep: SweepConfig, default_s: int) -> list[dict]:
    """Trial specs: the full model at each S, plus each ablation at the default S."""
    points = [{"variant": "full", "downsampling": s} for s in sweep.downsampling]
    points += [{"variant": v, "downsampling": default_s} for v in sweep.variants]
    for pt in points:
        pt["trial"] = f"{pt['variant']}-S{pt['downsampling']}"
    return points


def trial_job(base: train_stage.Job, spec: dict, sweep: SweepConfig) -> train_stage.Job:
    """The train stage's resolved job, changed to this grid point: its S and switches, the sweep's
    steps, budget and workers. Everything a trial's records show comes from here."""
    run = base.run
    generator = {**run.generator, "downsampling": spec["downsampling"], **VARIANTS[spec["variant"]]}
    from asap.models.asapnet import ASAPNetConfig
    config = ASAPNetConfig(**generator)
    info_h, info_w = _size(run.data_root)
    check_fits("asapnet", config, info_h, info_w, f"sweep trial {spec['trial']}")
    trial = replace(run, name=spec["trial"], generator=config.to_dict(), world_size=sweep.num_workers,
                    train=replace(run.train, steps=sweep.steps, time_budget_s=sweep.time_budget_s))
    runner = replace(base.runner, num_workers=sweep.num_workers, cpus_per_worker=sweep.cpus_per_worker,
                     use_gpu=sweep.use_gpu)
    return replace(base, run=trial, runner=runner, run_name=trial.run_name(prefix="sweep"))


# ----------------------------------------------------------------------------------------------
# One trial (runs as a Ray Tune function trainable, in another working directory)
# ----------------------------------------------------------------------------------------------

def run_trial(config: dict) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    spec = config["spec"]
    job = replace(trial_job(config["base"], spec, config["sweep"]), tracking_uri=config["tracking_uri"])
    trial_dir = Path(config["sweep_dir"]) / spec["trial"]
    result_file = trial_dir / "result.json"
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if done.get("run_name") == job.run_name:
            print(f"[sweep] {spec['trial']}: finished earlier ({job.run_name}), reusing its results", flush=True)
            note = reused_code_note(trial_dir, Path(config["storage"]) / job.run_name)
            if note:
                print(f"[sweep] {spec['trial']}: {note}", flush=True)
            if done.get("mlflow_run_id"):
                adopt_reused_trial(config["tracking_uri"], done["mlflow_run_id"], config["parent_run_id"])
            tune.report({k: v for k, v in done.items() if isinstance(v, (int, float))})
            return

    sweep_params = {"sweep.S": spec["downsampling"], "sweep.variant": spec["variant"], "sweep.trial": spec["trial"]}
    job = replace(job, mlflow_run_id=train_stage.mlflow_run(job, Path(config["storage"]),
                                                            parent_run_id=config["parent_run_id"],
                                                            extra_params=sweep_params))
    import mlflow
    client = mlflow.MlflowClient(config["tracking_uri"])

    budget = (f"{job.run.train.time_budget_s:g} s" if job.run.train.time_budget_s is not None
              else f"{job.run.train.steps} steps")
    print(f"[sweep] {spec['trial']}: training for {budget} (run {job.run_name})", flush=True)
    t0 = time.time()
    result = train_stage.fit(job, Path(config["storage"]), callbacks=[TuneReportCallback()])
    if result.error:
        raise result.error
    out = trial_dir / "generator.pt"
    meta = train_stage.export_generator(result, job, out)
    tracking.send_spool(job.tracking_uri, job.mlflow_run_id, Path(config["storage"]) / job.run_name)
    row = {"trial": spec["trial"], "variant": spec["variant"], "S": spec["downsampling"],
           "steps": meta["steps"], "train_seconds": meta["train_seconds"],
           "train_wall_s": round(time.time() - t0, 1), "run_name": job.run_name, "mlflow_run_id": job.mlflow_run_id,
           # the matmul rate its host trained at: the mean of the samples before its first step and after its last
           "host_matmul_tflops": meta["host_matmul_tflops"]}
    row.update(score_trial(out, job.run.data_root, config))
    with mlflow.start_run(run_id=job.mlflow_run_id):
        mlflow.log_metrics({f"eval_{k}": float(v) for k, v in row.items()
                            if k in TRIAL_MEASURES and isinstance(v, (int, float)) and v == v})
        mlflow.set_tags({"eval.num_images": row["num_images"],
                         "code_history": train_stage.code_tag(meta["code_history"]),
                         "host_history": train_stage.code_tag(meta["host_history"])})
    client.log_artifact(job.mlflow_run_id, str(out), artifact_path="checkpoint")  # the trial's generator
    client.set_terminated(job.mlflow_run_id, "FINISHED")
    common.write_json(result_file, row)
    print(f"[sweep] {spec['trial']}: {row['steps']} steps in {row['train_seconds']:.0f} s; FID {row['fid']:.1f}",
          flush=True)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float))})


def reused_code_note(trial_dir: Path, run_folder: Path) -> str | None:
    """A reused trial trained by other training code than the current (``asap.engine.training_code``:
    the run name covers the config, not the code): one line that says so and how to train it afresh;
    None when the code is the same. Read from its generator's ``meta.code_history``."""
    from asap.engine import code_sha1, training_code
    from asap.models.checkpoint import load_as_data

    generator = trial_dir / "generator.pt"
    history = (load_as_data(generator).get("meta") or {}).get("code_history") if generator.is_file() else None
    afresh = f"To train it afresh with this code, remove {trial_dir} and {run_folder}"
    if not history:
        return f"note: its generator records no training code, so it may be older than this code. {afresh}"
    then, now = history[-1]["code_sha1"], code_sha1(training_code())
    if then == now:
        return None
    return (f"note: the training code changed since it trained (code {then}, now {now}); its steps, weights "
            f"and scores stay those of the earlier code (its runtime is timed again). {afresh}")


def adopt_reused_trial(uri: str, run_id: str, parent_run_id: str) -> None:
    """A finished trial reused by a sweep whose parent MLflow run is new (the old one superseded: its
    folder was removed, or the store reset) becomes a child of the new parent, so the current sweep
    shows all its trials; the tag ``sweep.earlier_parent`` keeps where it was. A trial whose run is not
    in this store is left alone (its results still count)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    try:
        tags = client.get_run(run_id).data.tags
    except mlflow.exceptions.MlflowException:
        print(f"[sweep] the reused trial's MLflow run {run_id} is not in {uri}; its results count, "
              "the current parent run does not list it", flush=True)
        return
    earlier = tags.get("mlflow.parentRunId")
    if earlier == parent_run_id:
        return
    client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
    if earlier:
        client.set_tag(run_id, "sweep.earlier_parent", earlier)


# The measurements of a trial that become eval_* metrics of its MLflow run (settings become tags).
TRIAL_MEASURES = ("fid", "kid_mean", "kid_std", "pixel_acc", "miou", "runtime_ms", "lr_ms", "hr_ms", "steps",
                  "train_seconds", "P", "params", "generate_ms_per_image", "runtime_host_matmul_tflops")


def summarize_parent(uri: str, parent: str, table, csv_path: Path, sweep: SweepConfig) -> None:
    """The sweep's parent run shows the sweep: the table of trials (CSV and a markdown description),
    FID against runtime as a figure, and the best trial by FID as metrics and tags."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    client = mlflow.MlflowClient(uri)
    best = table.loc[table["fid"].idxmin()]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.scatter(table["runtime_ms"], table["fid"])
    for _, row in table.iterrows():
        ax.annotate(row["trial"], (row["runtime_ms"], row["fid"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    budget = f"{sweep.time_budget_s:g} s" if sweep.time_budget_s is not None else f"{sweep.steps} steps"
    ax.set(xlabel=f"runtime per image, CPU, {int(table['runtime_threads'].iloc[0])} threads (ms)", ylabel="FID",
           title=f"Sweep: FID vs runtime ({budget} of training per trial)")
    fig.tight_layout()
    columns = [c for c in ("trial", "S", "steps", "train_seconds", "fid", "kid_mean", "pixel_acc", "miou", "runtime_ms")
               if c in table]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    note = (f"Sweep over S and the ablations (paper Fig. 9), {budget} of training per trial. Best FID: "
            f"{best['trial']} ({best['fid']:.1f}). FID on {int(table['num_images'].iloc[0])} test images is "
            f"strongly biased: compare trials with each other, not with the paper.\n\n" + "\n".join(lines))
    client.log_figure(parent, fig, "sweep_fid_vs_runtime.png")
    plt.close(fig)
    client.log_artifact(parent, str(csv_path))
    client.log_metric(parent, "best_fid", float(best["fid"]))
    client.log_metric(parent, "trials", float(len(table)))
    for key, value in {"best_trial": best["trial"], "best_run_id": best["mlflow_run_id"],
                       "mlflow.note.content": note}.items():
        client.set_tag(parent, key, str(value))
    client.set_terminated(parent, "FINISHED")


def score_trial(generator_path: Path, data_root: str, config: dict) -> dict:
    """Quality (FID/KID, acc/mIoU) with the evaluate section's settings (the runtime: ``time_trials``)."""
    from asap.evaluation import evaluate_generator
    from asap.models.checkpoint import load_generator

    ev: EvalConfig = config["evaluate"]
    model, meta = load_generator(generator_path)
    scores: dict = {"P": model.config.num_params,
                    "params": sum(p.numel() for p in model.parameters())}
    segmenter = None
    if config.get("segmenter_path") and Path(config["segmenter_path"]).is_file():
        from asap.models.segmenter import load_segmenter
        segmenter, _ = load_segmenter(config["segmenter_path"])
    quality = evaluate_generator(model, data_root, segmenter, batch_size=ev.batch_size, device=ev.device,
                                 real_stats_cache=config["fid_cache"], kid_subsets=ev.kid_subsets,
                                 kid_subset_size=ev.kid_subset_size, max_images=config.get("eval_max_images"))
    scores.update({k: v for k, v in quality.items() if isinstance(v, (int, float))})
    return scores


TIMING_ROUNDS = 2  # time_trials' passes over the trials; each trial keeps its fastest


def time_trials(rows: list[dict], sweep_dir: Path, threads: int | None, iters: int, uri: str) -> None:
    """Batch-1 CPU runtime of every trial's generator, split into its streams (Fig. 4), added to its row and
    its MLflow run. Timed here in the driver once Ray has shut down, in TIMING_ROUNDS passes over the trials,
    each trial keeping its fastest pass (noise only ever adds time; the first pass may still share the CPU
    with Ray's exiting processes): inside the trials, beside Ray's own processes, the host's matmul rate
    measured a third lower than in the evaluate stage and one trial's generator (full-S16) timed 178 and
    214 ms in two sweeps, 87 ms here. Each timing sits between two samples of the host's matmul rate at its
    threads (with_host_rate), as the evaluate stage times."""
    import mlflow
    from mlflow.entities import Metric

    from asap.metrics.runtime import time_asapnet, with_host_rate
    from asap.models.checkpoint import load_generator

    inputs = {}
    for row in rows:
        model, meta = load_generator(sweep_dir / row["trial"] / "generator.pt")
        inputs[row["trial"]] = model, torch.randint(1, model.config.num_classes, (1, meta["height"], meta["width"]),
                                                    generator=torch.Generator().manual_seed(0))
    best: dict[str, dict] = {}
    for _ in range(TIMING_ROUNDS):
        for row in rows:
            model, labels = inputs[row["trial"]]
            timing = with_host_rate(lambda: time_asapnet(model, labels, warmup=2, iters=iters, threads=threads),
                                    "cpu", threads=threads)
            if row["trial"] not in best or timing["median_ms"] < best[row["trial"]]["median_ms"]:
                best[row["trial"]] = timing
    client = mlflow.MlflowClient(uri)
    for row in rows:
        timing = best[row["trial"]]
        row.update({"runtime_ms": timing["median_ms"], "lr_ms": timing["lr_ms"], "hr_ms": timing["hr_ms"],
                    "runtime_device": "cpu", "runtime_threads": timing["threads"],
                    "runtime_host_matmul_tflops": timing["host_matmul_tflops"],
                    "runtime_allocator": timing["allocator"]})
        now = int(time.time() * 1000)
        client.log_batch(row["mlflow_run_id"], metrics=[
            Metric(f"eval_{k}", float(row[k]), now, int(row["steps"]))
            for k in ("runtime_ms", "lr_ms", "hr_ms", "runtime_host_matmul_tflops")])
        client.set_tag(row["mlflow_run_id"], "eval.runtime_threads", str(row["runtime_threads"]))
        print(f"[sweep] {row['trial']}: batch-1 runtime {row['runtime_ms']:.1f} ms (low-res {row['lr_ms']:.1f} + "
              f"pixelwise {row['hr_ms']:.1f}) on cpu, {row['runtime_threads']} threads; host fp32 matmul at "
              f"{row['runtime_host_matmul_tflops']:.4f} TFLOP/s (the faster of {TIMING_ROUNDS} passes)", flush=True)


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    import pandas as pd
    from ray import tune

    root = common.project_root()
    p = common.params()
    base = train_stage.resolve(p)
    sweep = from_dict(SweepConfig, p.get("sweep") or {}, "params.yaml sweep")
    evaluate = from_dict(EvalConfig, p.get("evaluate") or {}, "params.yaml evaluate")
    default_s = base.run.generator["downsampling"]
    points = grid(sweep, default_s)
    for spec in points:  # every grid point must fit the image size before anything starts
        trial_job(base, spec, sweep)

    csv_path, json_path = root / "metrics" / "sweep.csv", root / "metrics" / "sweep.json"
    provenance_path = root / "metrics" / "provenance" / "sweep.json"  # dataset, MLflow parent run, commit
    for stale in (csv_path, json_path, provenance_path):
        stale.unlink(missing_ok=True)
    sweep_dir = (root / "models" / "sweep").resolve()
    storage = (root / "checkpoints" / "sweep").resolve()
    dataset = base.run.dataset
    experiment = f"asapnet-{dataset}"
    common.setup_mlflow(experiment)  # once, in the driver, before any trial
    uri = common.tracking_uri()
    parent = parent_run(uri, experiment, f"sweep-{dataset}", storage, sweep, points)
    budget = (f"{sweep.time_budget_s:g} s (at most {sweep.steps} steps)" if sweep.time_budget_s is not None
              else f"{sweep.steps} steps")
    print(f"[sweep] {len(points)} trials on {dataset}: {[s['trial'] for s in points]}, "
          f"{budget} each; MLflow parent run {parent}", flush=True)

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new console output ignores verbose=0 for its header
    train_stage.init_ray()
    first = trial_job(base, points[0], sweep)
    train_stage.wait_for_resources(first.runner, train_stage.use_gpu(sweep.use_gpu), extra_cpus=sweep.trial_driver_cpus,
                                   what="sweep")
    seg = root / "models" / f"segmenter-{dataset}.pt"
    fid_cache = Path(evaluate.fid_cache)
    trainable = tune.with_resources(run_trial, {"CPU": sweep.trial_driver_cpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"spec": tune.grid_search(points), "base": base, "sweep": sweep, "evaluate": evaluate,
                     "storage": str(storage), "sweep_dir": str(sweep_dir), "tracking_uri": uri,
                     "parent_run_id": parent, "segmenter_path": str(seg) if seg.is_file() else None,
                     "fid_cache": str(fid_cache if fid_cache.is_absolute() else (root / fid_cache).resolve()),
                     "eval_max_images": sweep.eval_max_images},
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent_trials),
        # verbose=0: no status tables, per-trial config dumps or TensorBoard hint (925 lines in a
        # default run); the trials print one line when they start and one when they are scored
        run_config=tune.RunConfig(name=f"sweep-{dataset}", storage_path=str(storage / "tune"), verbose=0),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} sweep trial(s) failed; finished trials keep their results and "
                           f"are skipped on the next run. First error: {errors[0]}")

    import ray

    ray.shutdown()  # the trials' runtimes are timed with Ray's processes gone (a local instance) or idle
    rows = [json.loads((sweep_dir / s["trial"] / "result.json").read_text()) for s in points]
    time_trials(rows, sweep_dir, evaluate.runtime_threads, sweep.runtime_iters, uri)
    table = pd.DataFrame(rows).sort_values(["variant", "S"]).reset_index(drop=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    # trials keyed by name with their numbers only, so `dvc metrics show` / `dvc exp show` list them
    # (a list of rows is not shown); run names and ids stay in sweep.csv and MLflow
    trials = {row["trial"]: {k: v for k, v in row.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}  # NaN: not recorded
              for row in table.to_dict(orient="records")}
    budget = {"time_budget_s": sweep.time_budget_s} if sweep.time_budget_s is not None else {}
    common.write_json(json_path, {"trials": trials, "steps": sweep.steps, **budget})  # numbers only
    common.write_json(provenance_path, {"dataset": dataset, "mlflow_parent_run_id": parent,
                                        "git_commit": common.git_commit(), "csv": str(csv_path.relative_to(root))})
    summarize_parent(uri, parent, table, csv_path, sweep)
    shown = [c for c in ("trial", "steps", "train_seconds", "host_matmul_tflops", "fid", "kid_mean", "pixel_acc", "miou",
                         "runtime_ms", "runtime_host_matmul_tflops") if c in table]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    print(f"[sweep] wrote {csv_path} and {json_path}", flush=True)


def _size(data_root: str) -> tuple[int, int]:
    from asap.data.prepared import DatasetInfo
    info = DatasetInfo.load(data_root)
    return info.height, info.width


def parent_run(uri: str, experiment: str, name: str, storage: Path, sweep: SweepConfig, points) -> str:
    """The sweep's parent MLflow run (deterministic name; reused when the sweep is resumed)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    id_file = storage / name / "mlflow_parent_run_id"
    if id_file.is_file():
        try:
            return client.get_run(id_file.read_text().strip()).info.run_id
        except mlflow.exceptions.MlflowException:  # the store was reset: a new parent run
            print(f"[sweep] the parent MLflow run in {id_file} is not in {uri}; starting a new one", flush=True)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name=name,
                            tags={**common.run_tags(), "stage": "sweep", "mlflow.runName": name})
    common.supersede_runs(client, exp.experiment_id, run.info.run_id, name, "sweep",
                          f"{id_file} named a run this store does not have" if id_file.is_file() else
                          f"{storage / name} held no record of it: the sweep's folder was removed and it ran again")
    client.log_param(run.info.run_id, "sweep.grid", json.dumps([s["trial"] for s in points]))
    client.log_param(run.info.run_id, "sweep.steps", sweep.steps)
    client.log_param(run.info.run_id, "sweep.time_budget_s", sweep.time_budget_s)
    id_file.parent.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


if __name__ == "__main__":
    common.run_stage(lambda: main(sys.argv[1:]))
