"""Shared plumbing of the DVC stages: params, paths, MLflow store, atomic result files.

Stages run from the project root (where dvc.yaml and params.yaml live). Every path handed to Ray is
made absolute first: Ray runs trials and workers in other working directories.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asap.config import ConfigError, UserError, load_params
from asap.files import write_text_atomic


def project_root() -> Path:
    """The directory holding params.yaml: the working directory of a DVC stage."""
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if (d / "params.yaml").is_file() and (d / "dvc.yaml").is_file():
            return d
    return cwd


# The sections of params.yaml (python -m pipelines.params checks them all).
SECTIONS = ("dataset", "prepare", "model", "train", "baselines", "loss", "segmenter", "evaluate", "benchmark",
            "sweep", "report")


def params(path: str | Path | None = None) -> dict:
    """params.yaml as read; a section name it does not know (a typo: `trian:`) is an error naming it."""
    path = path or project_root() / "params.yaml"
    p = load_params(path)
    unknown = sorted(set(p) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed: {list(SECTIONS)}")
    return p


def dataset_name(p: dict) -> str:
    """params.yaml's `dataset` (a prepared dataset name), required by every stage past prepare."""
    name = p.get("dataset")
    if not name:
        raise ConfigError("params.yaml: `dataset` (e.g. facades-256x256) is required")
    return name


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- MLflow -------------------------------------------------------------------------------------

def run_tags() -> dict[str, str]:
    """Tags every MLflow run of a stage gets, so the MLflow and the DVC records meet: the code's git
    commit and the DVC experiment (DVC sets DVC_EXP_NAME under `dvc exp run`; `dvc repro` and a
    direct run have none: "workspace")."""
    return {"git_commit": git_commit(), "dvc.exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV") or ""}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a server, another store); else the project's sqlite file."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def sqlite_store_dir(uri: str) -> Path:
    """The folder holding a sqlite store's file (`sqlite:///rel.db` is relative to the working
    directory, `sqlite:////abs.db` absolute). For the default store that is the project root;
    for a store handed to a Ray job it is that store's own folder, not the job's scratch copy."""
    path = Path(uri.split(":///", 1)[1]) if ":///" in uri else Path("mlflow.db")
    return (path if path.is_absolute() else Path.cwd() / path).parent.resolve()


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """For an http(s) tracking URI, one bounded request to the server's /health. MLflow's own client
    retries a dead server with backoff (247 s against a refused port, measured with MLflow 3.17);
    a stage should instead stop before training.
    Any HTTP answer (even 401/404 behind a proxy) counts as reachable: only no answer fails."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests  # an MLflow dependency

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.RequestException as err:
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri}: no MLflow server answers there ({type(err).__name__} within "
            f"{timeout_s:g} s). Start it (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db "
            f"--host 127.0.0.1 --port 5000`, see docs/cluster.md) or unset MLFLOW_TRACKING_URI to log "
            f"to the project's sqlite store") from None


def setup_mlflow(experiment: str) -> str:
    """Point MLflow at the store and create the experiment once, in the driver, before any worker
    starts (several processes creating a fresh sqlite DB at once fail: ../shared/STACK.md).
    Returns the experiment id. Exports MLFLOW_TRACKING_URI so Ray workers and trials inherit it."""
    import logging

    import mlflow

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables"
    uri = tracking_uri()
    check_tracking_server(uri)
    if uri.startswith(("http://", "https://")):  # a server that goes away costs seconds, not minutes
        for key, value in {"MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}.items():
            os.environ.setdefault(key, value)  # fail in seconds, before any training, if a server does not answer
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):  # keep artifacts beside the local store, as an absolute path
        artifact_location = (sqlite_store_dir(uri) / "mlartifacts" / experiment).as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


SUPERSEDED_FILTER = "tags.superseded_by IS NULL"  # the MLflow UI's search box: hide retrained runs


def supersede_runs(client, experiment_id: str, new_run_id: str, run_name: str, stage: str, why: str) -> list[str]:
    """A new MLflow run for a run name that already has runs (its run folder was removed and the run
    trained again, e.g. after a code change; or the folder was lost): tag each earlier run of the same
    name and stage ``superseded_by`` the new one, with ``why`` at the top of its note, and tag the new
    run ``supersedes``. The old runs stay (their metrics, models and artifacts are records), but the
    UI can hide them with ``SUPERSEDED_FILTER``. Returns the superseded run ids, oldest first."""
    from mlflow.entities import RunTag

    quoted = run_name.replace("\\", "\\\\").replace("'", "\\'")
    earlier = client.search_runs([experiment_id], f"tags.`mlflow.runName` = '{quoted}' AND tags.stage = '{stage}' "
                                 f"AND {SUPERSEDED_FILTER}", max_results=1000, order_by=["attributes.start_time ASC"])
    old = [r for r in earlier if r.info.run_id != new_run_id]
    for r in old:
        note = r.data.tags.get("mlflow.note.content", "")
        head = f"Superseded by run {new_run_id} ({why})."
        client.log_batch(r.info.run_id, tags=[RunTag("superseded_by", new_run_id),
                                              RunTag("mlflow.note.content", f"{head}\n\n{note}" if note else head)])
    if old:
        client.set_tag(new_run_id, "supersedes", ",".join(r.info.run_id for r in old))
    return [r.info.run_id for r in old]


@contextmanager
def mlflow_run_failed_on_error(uri: str, run_id: str):
    """A stage that fails (or is interrupted) ends its MLflow run as FAILED instead of leaving it
    RUNNING; the error itself goes on to the stage runner."""
    try:
        yield
    except BaseException:
        import mlflow

        try:
            mlflow.MlflowClient(uri).set_terminated(run_id, "FAILED")
        except mlflow.exceptions.MlflowException as err:  # the store is the problem: say so, keep the error
            print(f"warning: could not mark MLflow run {run_id} FAILED: {err}", file=sys.stderr)
        raise


# -- result files -------------------------------------------------------------------------------

def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a killed stage never leaves half a file."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fail(message: str, code: int = 2):
    """End a stage with a clear one-line error (no traceback) and a non-zero exit."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class MissingInput(UserError, FileNotFoundError):
    """A stage input is absent; the message names it and the stage that makes it."""


def ray_env() -> None:
    """Ray's settings for our stages, set before Ray is first imported (it reads some at import).
    A local Ray's servers listen on every interface (Ray 2.60 resolves loopback to the node's address
    on purpose), so anyone who reaches this machine could run code through them: token
    authentication (Ray generates the token in ~/.ray/auth_token) closes that for local runs. With
    RAY_ADDRESS (a cluster) the cluster's own mode applies (docs/cluster.md). Where stdout is not a
    terminal, the lines Ray forwards from its workers ("(RayTrainWorker pid=...) [train] step 10 ...")
    come without the colour codes it would wrap their prefix in (RAY_COLOR_PREFIX=0). Ray's log
    deduplication is off (RAY_DEDUP_LOGS=0): it folded lines that differ only in numbers and names
    into one, so the sweep's console lost which trials were reused ("full-S32: finished earlier ...
    [repeated 2x across cluster] (Ray deduplicates logs by default. Set RAY_DEDUP_LOGS=0 ...)")."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not sys.stdout.isatty():  # a log (`dvc repro | tee`, CI, a Ray job's log): workers' lines without ANSI colours
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def run_stage(main) -> None:
    """Run a stage's main(); an error a user can fix (asap.config.UserError: params, data, checkpoints,
    missing inputs) ends it with its one-line message; anything else is a bug and keeps its traceback."""
    ray_env()
    try:
        main()
    except UserError as err:
        fail(str(err))
