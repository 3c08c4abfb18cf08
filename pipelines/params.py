"""Check a whole params.yaml at once: every section becomes the typed config its stage takes.

    python -m pipelines.params                 # params.yaml; `make run` does this before `dvc repro`
    python -m pipelines.params --params other.yaml

Each stage validates the sections it reads when it starts (one error line naming the key, the value
and what is allowed); this checks them all up front, so a typo in `report:` fails in a second instead
of after the training stages. It imports every stage's config code, so no stage imports it (a stage's
DVC deps stay the code that stage runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asap.config import UserError, from_dict, require

from asap.data.prepared import MODEL_KEYS as DATASET_KEYS
from pipelines.common import SECTIONS


def check_generator_options(arch: str, options: dict, where: str) -> None:
    """The keys of a generator's options are fields of its config that params may set (the values are
    checked against the dataset when the stage resolves it)."""
    import dataclasses

    from asap.models.checkpoint import ARCHS, arch_classes

    require(arch in ARCHS, f"{where}.arch: unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    allowed = {f.name for f in dataclasses.fields(arch_classes(arch)[0])}.difference(DATASET_KEYS)
    clash = sorted(set(options).intersection(DATASET_KEYS))
    require(not clash, f"{where}: {clash} come from the prepared dataset, not from params; remove them")
    unknown = sorted(set(options) - allowed)
    require(not unknown, f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def check(p: dict) -> dict[str, object]:
    """params (a mapping) -> {section: its validated config}; the first problem is a ConfigError."""
    from asap.data.params import PrepareParams
    from asap.evaluation import EvalConfig, SegmenterTrainConfig
    from asap.losses import GANLossConfig
    from asap.training import generator_options, split_train_section
    from pipelines.benchmark import load_config
    from pipelines.report import ReportConfig
    from pipelines.sweep import SweepConfig

    unknown = sorted(set(p) - set(SECTIONS))
    require(not unknown, f"unknown section(s) {unknown} in params.yaml; allowed: {list(SECTIONS)}")
    dataset = p.get("dataset")
    require(isinstance(dataset, str) and bool(dataset),
            f"params.yaml dataset must be a prepared dataset name (e.g. facades-256x256), got {dataset!r}")
    out: dict[str, object] = {"dataset": dataset, "prepare": PrepareParams.from_section(p.get("prepare"))}
    out["train"] = split_train_section(p.get("train"))
    names = [out["train"][1].name, *(p.get("baselines") or {})]
    out["generators"] = {}
    for name in names:
        arch, options, where = generator_options(p, name)
        check_generator_options(arch, options, where)
        out["generators"][name] = (arch, options)
    out["loss"] = from_dict(GANLossConfig, p.get("loss"), "params.yaml loss")
    out["segmenter"] = from_dict(SegmenterTrainConfig, p.get("segmenter"), "params.yaml segmenter")
    out["evaluate"] = from_dict(EvalConfig, p.get("evaluate"), "params.yaml evaluate")
    out["benchmark"] = load_config(p.get("benchmark"), None)
    out["sweep"] = from_dict(SweepConfig, p.get("sweep"), "params.yaml sweep")
    out["report"] = from_dict(ReportConfig, p.get("report"), "params.yaml report")
    return out


def main(argv: list[str] | None = None) -> int:
    from asap.config import load_params

    ap = argparse.ArgumentParser(prog="python -m pipelines.params", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        checked = check(load_params(args.params))
    except UserError as err:  # a ConfigError, or a baseline whose arch is not registered (CheckpointError)
        print(f"error: {Path(args.params)}: {err}", file=sys.stderr)
        return 2
    print(f"{args.params}: every section valid ({', '.join(k for k in checked if k != 'generators')}; "
          f"generators {', '.join(checked['generators'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
