"""Phase 1: correctness on the device. The `gpu`-marked tests of tests/test_pixelwise_fused.py (the
fused kernel and the fast path against the reference, per precision), tests/test_graphed_step.py
(the training step captured as one CUDA graph against the eager step) and tests/test_channels_last.py
(the perceptual network channels-last against NCHW, cuDNN's kernels) run in a pytest subprocess
whose JUnit XML is summarised; then every case of that file runs once more in this process to record
its error against its tolerance (pytest says pass/fail, the table says by how much).

Triton compiles each kernel variant the first time a test runs it (~1-30 s each, ~80 s for the ~30
variants on 2 shared cores); where pytest-xdist is installed (the GPU machine has it) the tests run
in ``pytest_workers`` processes, so the compiles run side by side, and the error table that follows
finds them in Triton's cache.

On a CPU the gpu tests skip (the summary then counts skips), and with TRITON_INTERPRET=1 the error
table runs a few small cases through Triton's interpreter, so the smoke mode still exercises the
kernels.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from benchmarks.campaign.common import REPO, log
from benchmarks.campaign.settings import CorrectnessSettings

TEST_FILE = "tests/test_pixelwise_fused.py"  # its cases also make the error table
TEST_FILES = (TEST_FILE, "tests/test_graphed_step.py", "tests/test_channels_last.py")  # pytest -m gpu runs these


def junit_summary(path: Path) -> dict:
    """pytest's JUnit XML -> counts and one entry per test (outcome, seconds, message)."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "")[:500]
                break
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0.0)),
                      "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"total": len(tests), **counts, "seconds": float(suite.get("time", 0.0)), "tests": tests}


# pytest -v: "path::test[id] PASSED  [ 3%]"; with xdist: "[gw0] [  3%] PASSED path::test[id]"
VERBOSE_LINE = re.compile(r"^(?:(?P<name>\S+::\S+) (?P<outcome>PASSED|FAILED|SKIPPED|ERROR)"
                          r"|\[gw\d+\] \[\s*\d+%\] (?P<outcome_x>PASSED|FAILED|SKIPPED|ERROR) (?P<name_x>\S+::\S+))")


def verbose_summary(output: str) -> dict:
    """Outcomes from pytest -v's console lines: what a killed run (no JUnit file) still tells."""
    tests = [{"name": (m["name"] or m["name_x"]).split("::")[-1], "outcome": (m["outcome"] or m["outcome_x"]).lower()}
             for m in map(VERBOSE_LINE.match, output.splitlines()) if m]
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"total": len(tests), **counts, "tests": tests, "from": "console (the run was cut short)"}


def xdist_workers(wanted: int) -> int:
    """How many pytest-xdist workers phase 1 uses: ``wanted``, at most the CPU count; 0 (one pytest
    process) when that is under 2 or xdist is not installed."""
    workers = min(wanted, os.cpu_count() or 1)
    return workers if workers >= 2 and importlib.util.find_spec("xdist") is not None else 0


# A test whose kernel faults ends its xdist worker (tests/conftest.py) and xdist starts another: the H200
# saw ~60 faulting tests in one run.
MAX_WORKER_RESTARTS = 100


def run_pytest(timeout_s: float, device: torch.device, workers: int = 0) -> dict:
    """``pytest -m gpu`` on TEST_FILES in a subprocess (``-n workers`` unless 0), summarised."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    if device.type == "cuda":
        env.pop("TRITON_INTERPRET", None)  # the real kernels, not the interpreter
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *TEST_FILES, "-v", "-p", "no:cacheprovider",
               f"--junitxml={xml}"] + (["-n", str(workers), "--max-worker-restart", str(MAX_WORKER_RESTARTS)]
                                        if workers else [])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
            rc, out, timed_out = proc.returncode, proc.stdout + proc.stderr, False
        except subprocess.TimeoutExpired as err:
            rc, timed_out = None, True
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        result = {"command": " ".join(cmd[2:]), "workers": workers, "returncode": rc, "timed_out": timed_out,
                  "wall_s": round(time.perf_counter() - t0, 2), "output_tail": out[-3000:]}
        result["junit"] = junit_summary(xml) if xml.is_file() else verbose_summary(out)
    # pytest exit codes: 0 all passed, 1 some failed, 5 none collected; only 0 is a pass here
    result["ok"] = rc == 0 and result.get("junit", {}).get("failed", 1) == 0
    return result


def load_test_module():
    """tests/test_pixelwise_fused.py as a module (its run_case / check_result / CASES)."""
    spec = importlib.util.spec_from_file_location("campaign_pixelwise_cases", REPO / TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONTEXT_LOST = ("illegal memory access", "Triton Error [CUDA]", "CUDA error")  # the process's CUDA is gone


def error_table(settings: CorrectnessSettings, device: torch.device, until: float) -> dict:
    """Each case's max / mean abs error against its tolerance. On CUDA in a subprocess: a kernel that
    faults takes its process's CUDA context with it, and that must not be the campaign's."""
    from asap.models.pixelwise_fused import interpret_mode

    if device.type == "cuda":
        return _isolated_table(settings, until)
    if not interpret_mode():
        return {"note": "CPU without TRITON_INTERPRET=1: the kernel cannot run here", "cases": {}}
    return _table(list(settings.interpreter_cases), "cpu", until)


MAX_CONTEXT_LOSSES = 8  # fresh processes for the error table after faults; then the rest is not run


def case_order(module, names: list[str] | None) -> list[str]:
    """The error table's cases: the given ones, or every case, the default path's first and the
    diagnostics (forms that are not the defaults, which may fault) last."""
    names = list(names) if names is not None else sorted(module.CASES) + sorted(module.GPU_ONLY_CASES)
    return sorted(names, key=lambda n: n.endswith(module.DIAGNOSTIC_SUFFIXES))


def _isolated_table(settings: CorrectnessSettings, until: float) -> dict:
    """The table in subprocesses: one runs the cases until one loses its CUDA context; the next
    process goes on from the case after it (at most MAX_CONTEXT_LOSSES processes after a loss)."""
    module = load_test_module()
    names = case_order(module, settings.cases)
    cases, lost, note = {}, [], None
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    while names and time.perf_counter() < until:
        if len(lost) > MAX_CONTEXT_LOSSES:
            note = f"stopped after {len(lost)} lost CUDA contexts"
            break
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "table.json"
            request = {"cases": names, "seconds": until - time.perf_counter(), "out": str(out)}
            try:
                subprocess.run([sys.executable, "-m", "benchmarks.campaign.correctness", json.dumps(request)],
                               cwd=REPO, env=env, timeout=max(5.0, until - time.perf_counter() + 10.0))
            except subprocess.TimeoutExpired:
                pass
            try:
                part = json.loads(out.read_text())
            except (OSError, ValueError) as err:
                note = f"no table from the subprocess: {err}"
                break
        ran = {n: c for n, c in part["cases"].items() if c.get("ok") is not None}
        cases.update(ran)
        if not part.get("context_lost_at"):
            break
        lost.append(part["context_lost_at"])
        names = [n for n in names if n not in cases]
        log(f"[phase 1] the CUDA context was lost at {lost[-1]}; {len(names)} cases left for a fresh process")
    left = [n for n in names if n not in cases]
    for name in left:
        cases[name] = {"ok": None, "error": f"not run: {note or 'out of time'}",
                       "diagnostic": name.endswith(module.DIAGNOSTIC_SUFFIXES)}
    table = {"device": "cuda", "cases": cases, "context_lost_at": lost, "not_run": left, **_verdicts(cases)}
    if note:
        table["error"] = note
    return table


def _table(names: list[str], where: str, until: float, out: Path | None = None) -> dict:
    """Run ``names`` in this process (``out``: the table so far, rewritten after each case). After a
    case that lost the CUDA context the rest are not run (ok None): the caller's next process runs them."""
    module = load_test_module()
    cases, skipped, lost = {}, [], None
    for name in names:
        if lost:
            cases[name] = {"ok": None, "error": f"not run: the CUDA context was lost at {lost}"}
            continue
        if time.perf_counter() > until:
            skipped.append(name)
            continue
        t0 = time.perf_counter()
        try:
            result = module.run_case(name, where)
            try:
                module.check_result(name, result)
                result["ok"] = True
            except AssertionError as err:
                result.update(ok=False, failure=str(err)[:300])
        except Exception as err:  # a case that crashes is a failed case, not a failed phase
            result = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            if where == "cuda" and any(m in str(err) for m in CONTEXT_LOST):
                lost = name
        result["seconds"] = round(time.perf_counter() - t0, 3)
        result["precision"] = {**module.CASES, **module.GPU_ONLY_CASES}[name].get("precision")
        result["diagnostic"] = name.endswith(module.DIAGNOSTIC_SUFFIXES)
        cases[name] = result
        log(f"[phase 1] {name:32s} {'ok ' if result['ok'] else 'BAD'} max err "
            f"{result.get('err', float('nan')):.2e} (tol {result.get('tol', ['?'])[0]})")
        if out is not None:
            out.write_text(json.dumps(_summary(where, cases, skipped, lost)))
    return _summary(where, cases, skipped, lost)


def _verdicts(cases: dict) -> dict:
    """all_ok: every case of the default path passed (one not run is not a pass); diagnostics_ok: the
    same for the diagnostics (forms that are not the defaults: they may fail without failing phase 1)."""
    return {"all_ok": all(c["ok"] for c in cases.values() if not c.get("diagnostic")),
            "diagnostics_ok": all(c["ok"] for c in cases.values() if c.get("diagnostic"))}


def _summary(where: str, cases: dict, skipped: list[str], lost: str | None) -> dict:
    verdicts = _verdicts(cases)
    return {"device": where, "cases": cases, "skipped_for_time": skipped, "context_lost_at": lost,
            **verdicts, "all_ok": verdicts["all_ok"] and not skipped}


def _main(request: dict) -> None:
    """The subprocess of _isolated_table: the cases on CUDA, the table written to request["out"]."""
    _table(request["cases"], "cuda", time.perf_counter() + request["seconds"], Path(request["out"]))


def run_phase(settings: CorrectnessSettings, device: torch.device, until: float, on_progress=None) -> dict:
    pytest_s = max(10.0, min(settings.pytest_timeout_s, until - time.perf_counter() - 5.0))
    workers = xdist_workers(settings.pytest_workers)
    log(f"[phase 1] pytest -m gpu {' '.join(TEST_FILES)} (timeout {pytest_s:.0f} s, "
        f"{f'{workers} xdist workers' if workers else 'one process'})")
    tests = run_pytest(pytest_s, device, workers)
    junit = tests.get("junit", {})
    log(f"[phase 1] pytest: {junit.get('passed', '?')} passed, {junit.get('failed', '?')} failed, "
        f"{junit.get('skipped', '?')} skipped, rc {tests['returncode']} in {tests['wall_s']} s")
    if on_progress:
        on_progress({"pytest": tests})
    table = error_table(settings, device, until)
    by_precision: dict = {}
    for name, case in table.get("cases", {}).items():
        entry = by_precision.setdefault(case.get("precision") or "?", {"cases": 0, "ok": 0, "worst_err_over_tol": 0.0})
        entry["cases"] += 1
        entry["ok"] += bool(case.get("ok"))
        if "err" in case:
            entry["worst_err_over_tol"] = max(entry["worst_err_over_tol"], case["err"] / case["tol"][0])
    return {"pytest": tests, "error_table": table, "by_precision": by_precision,
            "ok": bool(tests["ok"] and table.get("all_ok", True)) if device.type == "cuda" else None}


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
