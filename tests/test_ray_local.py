"""A local Ray started by a stage is not open to whoever reaches the machine: its dashboard listens on
loopback only, and its other servers (which Ray 2.60 binds to every interface; it resolves loopback
to the node's address on purpose) require the token Ray generated. A client without that token is
refused; one with it gets in."""

import os
import signal
import subprocess
import time

import psutil
import pytest

from project_helpers import PYTHON, REPO

pytestmark = pytest.mark.slow

HOST = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # exit through atexit: ray.shutdown() stops its servers
sys.path.insert(0, {repo!r})
from pipelines.train import init_ray   # as every stage does: Ray's settings, then ray itself
init_ray()
import ray
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
time.sleep(600)
"""

CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
@ray.remote
def answer():
    return 6 * 7
print("RAN", ray.get(answer.remote(), timeout=60), flush=True)
"""


def client_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def test_local_ray_wants_its_token_and_shows_its_dashboard_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    host = subprocess.Popen([PYTHON, "-c", HOST.format(repo=str(REPO))], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        gcs = None
        deadline = time.monotonic() + 120
        while gcs is None and time.monotonic() < deadline:
            line = host.stdout.readline()
            assert line or host.poll() is None, "the host exited"
            if line.startswith("GCS "):
                gcs = line.split()[1]
        assert gcs, "no local Ray came up"

        # without a token, or with a wrong one: refused (the client keeps retrying until killed)
        for extra in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}):
            try:
                out = subprocess.run([PYTHON, "-c", CLIENT, gcs], env=client_env(**extra), capture_output=True,
                                     text=True, timeout=25)
                text = out.stdout + out.stderr
            except subprocess.TimeoutExpired as err:
                text = (err.stdout or b"").decode() + (err.stderr or b"").decode()
            assert "RAN 42" not in text, extra
            assert "Unauthenticated" in text or "InvalidAuthToken" in text or "auth" in text.lower(), text[-2000:]

        # with the token Ray generated for this machine (~/.ray/auth_token): in
        ok = subprocess.run([PYTHON, "-c", CLIENT, gcs], env=client_env(RAY_AUTH_MODE="token"), capture_output=True,
                            text=True, timeout=120)
        assert "RAN 42" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]

        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert {ip for ip, port in listening if port == 8265} == {"127.0.0.1"}, sorted(listening)
    finally:
        host.terminate()
        try:
            host.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait()


WORKER_LINES = """
import sys, time
sys.path.insert(0, {repo!r})
from pipelines.train import init_ray   # as every stage does
init_ray()
import ray

@ray.remote(max_calls=1, num_cpus=0.5)  # one worker process per trial, as Tune's trials run
def trial(name):
    import hashlib
    run = f"sweep-{{name}}-facades-256x256-{{hashlib.sha1(name.encode()).hexdigest()[:10]}}"
    print(f"[sweep] {{name}}: finished earlier ({{run}}), reusing its results", flush=True)
    time.sleep(1)
    return name

names = ["full-S8", "full-S16", "full-S32", "no_pe-S16", "uniform-S16"]
ray.get([trial.remote(n) for n in names])
time.sleep(3)  # the log monitor forwards workers' lines about once a second
ray.shutdown()
"""


def test_every_workers_line_reaches_the_console(tmp_path):
    """Lines Ray forwards from workers that differ only in names and numbers (the sweep's trials)
    each reach the stage's console: Ray's deduplication would fold them into one line and a notice
    ("[repeated 4x across cluster] (Ray deduplicates logs by default ...)")."""
    env = client_env()
    env.pop("RAY_DEDUP_LOGS", None)
    proc = subprocess.run([PYTHON, "-c", WORKER_LINES.format(repo=str(REPO))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for name in ("full-S8", "full-S16", "full-S32", "no_pe-S16", "uniform-S16"):
        assert f"[sweep] {name}: finished earlier" in out, out[-3000:]
    assert "repeated" not in out and "deduplicates" not in out, out[-3000:]
