"""Train a generator in this process (no Ray, MLflow or DVC): ASAP-Net or a baseline, one GPU or CPU.

    asap train data/prepared/facades-256x256                               # params.yaml's ASAP-Net
    asap train data/prepared/facades-256x256 --generator pix2pixhd         # a params.yaml baselines key
    asap train data/prepared/facades-256x256 --arch spade --set baselines.spade.width_mult=0.5 \
        --time-budget 600 --device cuda --run-dir runs/spade

Settings come from params.yaml (the `model`, `train`, `loss` and `baselines` sections; built-in
defaults where there is none), changed by ``--set section.key=value`` (values read as YAML) and the
shortcuts ``--steps`` / ``--time-budget``. The run folder (default ``runs/<run name>``, the name
ending in a hash of the config) holds checkpoints, metrics.jsonl, sample grids and the generator:
run the same command again to resume after a kill; a folder of another config is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from asap.config import ConfigError, load_params


def apply_override(p: dict, assignment: str) -> None:
    """'train.steps=10' -> p['train']['steps'] = 10 (the value read as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {assignment!r}: expected section.key=value, e.g. train.steps=100")
    *path, last = key.split(".")
    node = p
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is a value, not a section")
    node[last] = yaml.safe_load(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="a prepared dataset folder, e.g. data/prepared/facades-256x256")
    parser.add_argument("--params", default=None,
                        help="params.yaml to read (default: ./params.yaml when present, else built-in defaults)")
    parser.add_argument("--generator", default=None,
                        help="train.name (ASAP-Net, the `model` section) or a key of `baselines` (default: train.name)")
    parser.add_argument("--arch", default=None, choices=("asapnet", "pix2pixhd", "spade"),
                        help="train this architecture: asapnet = train.name; a baseline = baselines.<arch>, "
                             "created as {arch: <arch>} when params has none")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change a setting, e.g. --set train.lr_g=2e-4 --set baselines.spade.width_mult=0.25")
    parser.add_argument("--steps", type=int, default=None, help="= --set train.steps=N")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="= --set train.time_budget_s=SECONDS: stop when this much training time is spent")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    parser.add_argument("--run-dir", default=None, help="checkpoints, metrics and outputs (default runs/<run name>)")
    parser.add_argument("--out", default=None, help="the trained generator (default <run dir>/generator.pt)")


def run(args: argparse.Namespace) -> int:
    from asap.devices import resolve_device
    from asap.training import TrainingRun, split_train_section, train

    path = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    p = load_params(path) if path else {}
    for assignment in args.overrides:
        apply_override(p, assignment)
    if args.steps is not None:
        apply_override(p, f"train.steps={args.steps}")
    if args.time_budget is not None:
        apply_override(p, f"train.time_budget_s={args.time_budget}")
    name = args.generator
    if args.arch and not name:
        if args.arch == "asapnet":
            name = split_train_section(p.get("train"))[1].name
        else:
            name = args.arch
            entry = p.setdefault("baselines", {}).setdefault(name, {})
            entry.setdefault("arch", args.arch)
    run_spec = TrainingRun.from_params(p, args.data, name, world_size=1)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / run_spec.run_name()
    keep = split_train_section(p.get("train"))[1].keep_checkpoints
    train(run_spec, run_dir, device=resolve_device(args.device), keep_checkpoints=keep, out=args.out)
    return 0
