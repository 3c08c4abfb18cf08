"""MLflow off the training path: a Ray Train worker queues its metrics and sample grids, and a
background thread sends them. A tracking server that stops answering never stalls or fails training:
the thread keeps the unsent records (and appends them to a spool file beside the run's checkpoints),
prints one warning line, tries again now and then, and whatever is still unsent when training ends is
sent by the stage's driver (`send_spool`), or left in the spool file for the next run to send.

Steps redone after a resume (those between the last checkpoint and a kill) are not logged twice: the
worker starts logging above the highest step the run already has in MLflow.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

# Short client timeouts for the workers when the store is a server: MLflow's defaults retry a dead
# server for minutes (247 s measured against a refused port with MLflow 3.17).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
SPOOL = "mlflow_unsent.jsonl"


def worker_env(uri: str) -> dict[str, str]:
    """Environment for Ray Train workers that log to ``uri``."""
    return dict(HTTP_ENV) if uri.startswith(("http://", "https://")) else {}


def logged_up_to(client, run_id: str, key: str) -> int:
    """The highest step of metric ``key`` the run already has (0 if none, or the store is down)."""
    try:
        return max((m.step for m in client.get_metric_history(run_id, key)), default=0)
    except Exception:  # noqa: BLE001  (any client error: then nothing is skipped)
        return 0


class BackgroundLogger:
    """Queue-and-return metric and image logging for one MLflow run (see the module docstring)."""

    def __init__(self, uri: str, run_id: str, spool_dir: Path, skip_up_to: int = 0, retry_every_s: float = 30.0,
                 printer=print):
        import mlflow

        self.client = mlflow.MlflowClient(uri)
        self.run_id, self.uri, self.printer = run_id, uri, printer
        self.spool = Path(spool_dir) / SPOOL
        self.skip_up_to, self.retry_every_s = skip_up_to, retry_every_s
        self.queue: queue.Queue = queue.Queue()
        self.pending: list[dict] = []        # records not yet accepted by the store, oldest first
        self.down_since: float | None = None
        self.thread = threading.Thread(target=self._run, name="mlflow-background", daemon=True)
        self.thread.start()

    # -- what the training loop calls (never blocks on the network) ------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step > self.skip_up_to:
            self.queue.put({"kind": "metrics", "step": step, "time_ms": int(time.time() * 1000),
                            "metrics": {k: float(v) for k, v in metrics.items()}})

    def log_image(self, image, artifact_file: str, step: int) -> None:
        if step > self.skip_up_to:
            self.queue.put({"kind": "image", "step": step, "image": image, "artifact_file": artifact_file})

    def close(self, timeout_s: float = 20.0) -> int:
        """Send what is queued, waiting at most ``timeout_s``; returns the records left unsent (they
        are in the spool file, for ``send_spool``)."""
        self.queue.put(None)
        self.thread.join(timeout_s)
        left = len(self.pending) + self.queue.qsize()
        if left:
            self.printer(f"[train] warning: {left} MLflow record(s) not sent yet, kept in {self.spool}", flush=True)
        return left

    # -- the sender thread -----------------------------------------------------------------------
    def _run(self) -> None:
        closing = False
        while True:
            timeout = self.retry_every_s if self.pending else None
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                item = "retry"
            if item is None:
                closing = True
            elif item != "retry":
                self.pending.append(item)
                if self.down_since is not None:  # the store is down: keep the record on disk too
                    self._spool([item])
            if self.down_since is None or item == "retry" or closing:
                self._send_pending()
            if closing:
                return

    def _send_pending(self) -> None:
        from mlflow.entities import Metric

        while self.pending:
            item = self.pending[0]
            try:
                if item["kind"] == "metrics":
                    self.client.log_batch(self.run_id, metrics=[Metric(k, v, item["time_ms"], item["step"])
                                                                for k, v in item["metrics"].items()])
                else:
                    self.client.log_image(self.run_id, item["image"], artifact_file=item["artifact_file"])
            except Exception as err:  # noqa: BLE001  (any client or network error: keep and retry)
                if self.down_since is None:
                    self.down_since = time.time()
                    self.printer(f"[train] warning: MLflow at {self.uri} does not answer ({type(err).__name__}); "
                                 f"training goes on, metrics wait in {self.spool} and are sent when it is back",
                                 flush=True)
                    self._spool([p for p in self.pending if p["kind"] == "metrics"])
                return
            self.pending.pop(0)
            if self.down_since is not None:
                self.printer(f"[train] MLflow at {self.uri} answers again; sending the waiting metrics", flush=True)
                self.down_since = None

    def _spool(self, items: list[dict]) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a") as f:
            for item in items:
                if item["kind"] == "metrics":
                    f.write(json.dumps({k: item[k] for k in ("step", "time_ms", "metrics")}) + "\n")


def send_spool(uri: str, run_id: str, spool_dir: Path) -> int:
    """Send metrics a worker could not (its spool file), skipping steps the run already has; the file
    goes away once everything is accepted. Returns the number of records sent."""
    import mlflow
    from mlflow.entities import Metric

    path = Path(spool_dir) / SPOOL
    if not path.is_file():
        return 0
    client = mlflow.MlflowClient(uri)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    have = {key: {m.step for m in client.get_metric_history(run_id, key)}
            for key in {k for r in records for k in r["metrics"]}}
    sent = 0
    for r in records:
        fresh = [Metric(k, v, r["time_ms"], r["step"]) for k, v in r["metrics"].items() if r["step"] not in have[k]]
        if fresh:
            client.log_batch(run_id, metrics=fresh)
            sent += 1
    os.remove(path)
    return sent
