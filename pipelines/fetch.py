"""DVC stage `fetch-facades`: put the CMP facades archive at data/raw/CMP_facade_DB_base.zip.

    python -m pipelines.fetch facades

The archive comes from params.yaml `prepare.facades.archive` when set, else from the environment
variable ASAP_FACADES_ARCHIVE when set (the Makefile sets it to ../shared/data/... on machines that
have that copy), else it is downloaded from the official address (`prepare.facades.url`). The copy is
a DVC output: `prepare-facades@<size>` depends on its content, so an unchanged archive prepares
nothing again. DVC does not watch the environment variable: `dvc repro -f fetch-facades` re-fetches.
"""

from __future__ import annotations

import argparse

from asap.data.facades import ARCHIVE_NAME, fetch_archive, resolve_archive
from asap.data.params import PrepareParams
from pipelines.common import params, project_root, run_stage

RAW_ARCHIVE = f"data/raw/{ARCHIVE_NAME}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["facades"], help="the dataset whose archive to fetch")
    parser.add_argument("--dest", default=None, help=f"where to put it (default: {RAW_ARCHIVE})")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    cfg = PrepareParams.from_section(params(args.params).get("prepare")).facades
    dest = args.dest or project_root() / RAW_ARCHIVE
    fetch_archive(dest, resolve_archive(cfg.archive), cfg.url)  # a DataError: one line, by run_stage


if __name__ == "__main__":
    run_stage(main)
