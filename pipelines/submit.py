"""Run a pipeline stage on a Ray cluster and bring its outputs back into the stage's DVC outputs.

    python -m pipelines.submit train [--address http://<head>:8265] [--timeout 3600]
    python -m pipelines.submit --attach <submission id>     # follow a job again after Ctrl-C

The stage (its `cmd`, `deps` and `outs` as dvc.yaml declares them, read through DVC itself) runs as a
Ray job (`ray.job_submission.JobSubmissionClient`, the API behind `ray job submit`; the cluster needs
`ray[default]`, which brings the dashboard and its job server):

1. Driver (here): checks that the cluster and the MLflow store answer (nothing is touched if not),
   removes the stage's old outputs (as `dvc repro` does), submits the job with a runtime_env whose
   working_dir is this project's code and params (data, outputs, checkpoints and stores left out),
   streams the job's log, and waits for the end.
2. Job (on the cluster, `--in-job`): links the stage's deps that were left out of the upload (e.g.
   data/prepared/<dataset>) and checkpoints/ to the same paths in the project, runs the stage's cmd in
   its scratch working dir, and on success moves the outputs into checkpoints/jobs/<id>/ of the project.
3. Driver: once the job SUCCEEDED, moves those outputs to their DVC paths. A failed, stopped or
   timed-out job installs nothing, so DVC never counts a failed stage as done.

Assumption (docs/cluster.md): the project folder is on a filesystem that every Ray node and the
submitting machine see at the same absolute path (NFS, a cluster home, or one machine). Ray Train
needs that anyway for checkpoints that survive a node. MLflow: MLFLOW_TRACKING_URI is passed to the
job; use an `mlflow server` on a real cluster (the project's sqlite file is passed as an absolute path
and is fine on one host).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asap.config import ConfigError
from pipelines import common

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
JOBS_DIR = Path("checkpoints") / "jobs"        # staging of each job's outputs, and its log
LINKED_STATE = ("checkpoints",)                # persisted state the job shares with the project
# Left out of the working_dir upload (gitignore patterns, anchored at the project root: an unanchored
# `data` would also drop the asap/data package). .gitignore is honoured by Ray on top of these.
UPLOAD_EXCLUDES = ["/.git", "/.venv", "/.dvc/cache", "/.dvc/tmp", "/data", "/models", "/metrics",
                   "/checkpoints", "/reports", "/mlartifacts", "/mlruns", "/mlflow.db", "/tests",
                   "*.egg-info", "__pycache__", ".pytest_cache"]
# Environment passed to the job (its driver and, through the runtime_env, every Ray worker).
PASS_PREFIXES = ("MLFLOW_", "ASAP_")
PASS_NAMES = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOG_TAIL_LINES = 40


class SubmitError(Exception):
    """A failure reported as one clear line (no traceback); exit code 1 for a job that ran and
    failed, 2 for anything that stopped the submission before or around the job."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------
# The stage, as dvc.yaml declares it
# ----------------------------------------------------------------------------------------------

@dataclass
class StageSpec:
    name: str                 # DVC address, e.g. train or prepare-facades@256x256
    cmd: str                  # the shell command DVC would run
    deps: list[str]           # paths relative to the project (absolute ones are left as they are)
    outs: list[str]           # outs and metrics/plots files, relative to the project


def stage_spec(root: Path, stage: str) -> StageSpec:
    """Resolve one stage of root/dvc.yaml (params interpolated, foreach expanded) with DVC's parser."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    # DVC resolves params.yaml against the working directory, not root_dir (measured: DVC 3.67)
    with contextlib.chdir(root), Repo(str(root), uninitialized=True) as repo:
        try:
            stages = repo.stage.collect(stage)
        except DvcException as err:
            names = sorted(s.addressing for s in repo.index.stages)
            raise SubmitError(f"{root / 'dvc.yaml'}: no stage {stage!r} ({err}); stages: {', '.join(names)}") from None
    if len(stages) != 1:
        raise SubmitError(f"{root / 'dvc.yaml'}: {stage!r} names {len(stages)} stages "
                          f"({', '.join(s.addressing for s in stages)}): submit one of them")
    s = stages[0]
    if not s.cmd:
        raise SubmitError(f"{root / 'dvc.yaml'}: stage {stage!r} has no cmd")
    cmd = s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd)
    return StageSpec(s.addressing, cmd, [str(d.def_path) for d in s.deps], [str(o.def_path) for o in s.outs])


# ----------------------------------------------------------------------------------------------
# The job side (runs on the cluster: python -m pipelines.submit --in-job ...)
# ----------------------------------------------------------------------------------------------

def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _link_missing(workdir: Path, project: Path, rel: str) -> bool:
    """Link workdir/rel -> project/rel when the upload left it out; True if a link was made."""
    if Path(rel).is_absolute() or (workdir / rel).exists() or not (project / rel).exists():
        return False
    (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
    (workdir / rel).symlink_to(project / rel, target_is_directory=(project / rel).is_dir())
    return True


def run_in_job(stage: str, project: Path, staging: Path) -> int:
    """Inside the Ray job: run the stage in the job's working dir, stage its outputs on success."""
    workdir = Path.cwd().resolve()
    for name in LINKED_STATE:
        (project / name).mkdir(parents=True, exist_ok=True)
        _link_missing(workdir, project, name)
    spec = stage_spec(workdir, stage)
    linked = [d for d in spec.deps if _link_missing(workdir, project, d)]
    print(f"[job] stage {spec.name} in {workdir}; linked from {project}: {', '.join(linked) or 'nothing'}",
          flush=True)
    for out in spec.outs:  # a scratch dir reused by Ray must not hand over an old output
        _remove(workdir / out)

    # `python` in a DVC cmd means the cluster's interpreter: the one running this job
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    code = subprocess.run(spec.cmd, shell=True, cwd=workdir, env=env).returncode
    if code != 0:
        print(f"[job] stage {spec.name} failed with exit code {code}: nothing staged", flush=True)
        return code

    missing = [o for o in spec.outs if not (workdir / o).exists()]
    if missing:
        print(f"[job] stage {spec.name} exited 0 but did not write {', '.join(missing)}: nothing staged", flush=True)
        return 3
    staging.mkdir(parents=True, exist_ok=True)
    placed = {}
    for out in spec.outs:
        src = workdir / out
        if not src.resolve().is_relative_to(workdir):  # written through a linked folder: already in place
            placed[out] = "in_place"
            continue
        dst = staging / out
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove(dst)
        shutil.move(str(src), str(dst))
        placed[out] = "staged"
    # written last: the driver installs outputs only from a staging folder that has it
    common.write_json(staging / "outputs.json", {"stage": spec.name, "outs": placed})
    print(f"[job] staged {', '.join(placed)} in {staging}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# The driver side
# ----------------------------------------------------------------------------------------------

def dashboard_address(arg: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else an http RAY_ADDRESS, else the local default."""
    address = arg or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address and os.environ.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = os.environ["RAY_ADDRESS"]
    address = address or DEFAULT_ADDRESS
    return address if "://" in address else f"http://{address}"


def check_cluster(address: str, timeout_s: float = 10.0) -> None:
    """One bounded request to the job server (the Ray client itself would wait without a limit)."""
    import requests

    try:
        r = requests.get(f"{address.rstrip('/')}/api/version", timeout=timeout_s)
    except requests.RequestException as err:
        raise SubmitError(
            f"no Ray cluster answers at {address} ({type(err).__name__} within {timeout_s:g} s): start one "
            f"(`ray start --head --dashboard-host 0.0.0.0`, needs ray[default]) or pass --address "
            f"http://<head node>:8265 (docs/cluster.md); nothing was submitted or changed") from None
    if r.status_code != 200 or "ray_version" not in r.text:
        raise SubmitError(f"{address}/api/version answered HTTP {r.status_code}, not a Ray job server: "
                          f"pass the dashboard address of the head node (port 8265 by default)")


def job_env(root: Path, extra: list[str]) -> dict[str, str]:
    """Environment of the job: the MLflow store (absolute), pass-through settings, --env pairs."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASS_PREFIXES) or k in PASS_NAMES}
    uri = common.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_absolute():
        uri = f"sqlite:///{root / uri[len('sqlite:///'):]}"  # the job runs in another directory
    env.update({"MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"})
    for pair in extra:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SubmitError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def submission_id(stage: str) -> str:
    return f"asap-{re.sub(r'[^A-Za-z0-9_-]+', '-', stage)}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def submit(client, root: Path, spec: StageSpec, env: dict, python: str) -> tuple[str, Path]:
    sid = submission_id(spec.name)
    staging = root / JOBS_DIR / sid
    entrypoint = (f"{python} -m pipelines.submit --in-job {shlex.quote(spec.name)} --project {shlex.quote(str(root))} "
                  f"--staging {shlex.quote(str(staging))}")
    runtime_env = {"working_dir": str(root), "excludes": UPLOAD_EXCLUDES, "env_vars": env}
    client.submit_job(entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env,
                      metadata={"stage": spec.name, "project": str(root), "staging": str(staging)})
    return sid, staging


async def _tail(client, sid: str) -> None:
    async for chunk in client.tail_job_logs(sid):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def follow(client, sid: str, timeout_s: float | None) -> str:
    """Stream the job's log until it ends; returns its final status. Raises TimeoutError."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = None  # characters of the log printed by polling; None while the stream does it
    try:
        asyncio.run(asyncio.wait_for(_tail(client, sid), timeout_s))
    except (asyncio.TimeoutError, TimeoutError):
        raise TimeoutError from None
    except Exception as err:  # no websocket (e.g. behind a proxy): poll the log instead
        print(f"[submit] log stream unavailable ({type(err).__name__}); polling the log", flush=True)
        shown = 0
    # the stream closes as the job ends, and the status follows within moments; a stream that closed
    # early (a dropped connection) must not be read as the end of the job
    while True:
        status = str(client.get_job_status(sid))
        if shown is not None:
            logs = client.get_job_logs(sid)
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(1 if shown is None else 2)


def install_outputs(root: Path, spec_name: str, staging: Path) -> list[str]:
    """Move the staged outputs to their DVC paths (rename within the project's filesystem)."""
    manifest = staging / "outputs.json"
    if not manifest.is_file():
        raise SubmitError(f"job for {spec_name} SUCCEEDED but left no {manifest}: the project folder is "
                          f"probably not shared with the cluster's nodes (docs/cluster.md)")
    placed = json.loads(manifest.read_text())["outs"]
    installed = []
    for out, how in placed.items():
        dst = root / out
        if how == "in_place":
            installed.append(out)
            continue
        tmp = dst.with_name(dst.name + ".submit-tmp")
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        shutil.move(str(staging / out), str(tmp))
        _remove(dst)
        os.replace(tmp, dst)
        installed.append(out)
    for d in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):  # the folders the outputs were staged in
            d.rmdir()
    return installed


def finish(client, root: Path, sid: str, stage: str, staging: Path, status: str) -> None:
    logs = client.get_job_logs(sid)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "job.log").write_text(logs)
    if status != "SUCCEEDED":
        info = client.get_job_info(sid)
        tail = "\n".join(logs.rstrip().splitlines()[-LOG_TAIL_LINES:])
        print(f"--- last {LOG_TAIL_LINES} log lines of job {sid} ---\n{tail}\n---", file=sys.stderr)
        reason = (info.message or "").strip().splitlines()[:1]
        raise SubmitError(f"job {sid} ({stage}) {status}: {reason[0] if reason else 'no message'}; "
                          f"no outputs were installed; full log in {staging / 'job.log'}", code=1)
    installed = install_outputs(root, stage, staging)
    print(f"[submit] job {sid} SUCCEEDED; installed {', '.join(installed)}; log in {staging / 'job.log'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", nargs="?", help="a dvc.yaml stage, e.g. train or prepare-facades@256x256")
    ap.add_argument("--address", help=f"Ray dashboard/job server URL (default: $RAY_API_SERVER_ADDRESS, "
                                      f"an http $RAY_ADDRESS, or {DEFAULT_ADDRESS})")
    ap.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra job environment")
    ap.add_argument("--python", default="python", help="the cluster's interpreter (default: python on its PATH)")
    ap.add_argument("--attach", metavar="ID", help="follow and collect an earlier submission")
    ap.add_argument("--in-job", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--staging", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.in_job:
        return run_in_job(args.stage, Path(args.project), Path(args.staging))
    if not args.stage and not args.attach:
        ap.error("name a stage (e.g. train) or --attach ID")

    root = common.project_root()
    address = dashboard_address(args.address)
    spec = stage_spec(root, args.stage) if args.stage else None  # a bad stage name fails before any contact
    check_cluster(address)
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as err:
        raise SubmitError(f"Ray job server at {address}: {err}") from None

    if args.attach:
        try:
            meta = client.get_job_info(args.attach).metadata or {}
        except Exception as err:  # the client raises RuntimeError with the HTTP answer
            raise SubmitError(f"no job {args.attach!r} on {address} ({str(err).splitlines()[0][:200]})") from None
        sid, stage, staging = args.attach, meta.get("stage", "?"), Path(meta.get("staging", root / JOBS_DIR / args.attach))
    else:
        env = job_env(root, args.env)
        common.check_tracking_server(env["MLFLOW_TRACKING_URI"])  # before anything is removed
        for out in spec.outs:  # as `dvc repro` does: a failed job must leave no old output behind
            _remove(root / out)
        sid, staging = submit(client, root, spec, env, args.python)
        stage = spec.name
        print(f"[submit] job {sid} ({stage}) submitted to {address}; Ctrl-C leaves it running "
              f"(python -m pipelines.submit --attach {sid} --address {address})", flush=True)
    try:
        status = follow(client, sid, args.timeout)
    except TimeoutError:
        client.stop_job(sid)
        raise SubmitError(f"job {sid} ({stage}) ran past --timeout {args.timeout:g} s and was stopped; "
                          f"no outputs were installed (checkpoints, if any, are kept)", code=1) from None
    except KeyboardInterrupt:
        print(f"\n[submit] job {sid} goes on on the cluster: python -m pipelines.submit --attach {sid} "
              f"--address {address} (or `ray job stop {sid}`)", file=sys.stderr)
        return 130
    finish(client, root, sid, stage, staging, status)
    return 0


def entry() -> None:
    try:
        code = main(sys.argv[1:])
    except SubmitError as err:
        common.fail(str(err), code=err.code)
    except ConfigError as err:
        common.fail(str(err))
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
