"""DVC stages `prepare-<dataset>@<H>x<W>`: raw data -> data/prepared/<dataset>-<H>x<W>/.

    python -m pipelines.prepare facades 256x256       # reads data/raw/CMP_facade_DB_base.zip (fetch stage)
    python -m pipelines.prepare cityscapes 256x512    # reads prepare.cityscapes.root
    python -m pipelines.prepare nyu 256x256           # reads prepare.nyu.mat
    python -m pipelines.prepare folders 256x256       # reads prepare.folders.root -> <name>-256x256

Settings come from params.yaml `prepare` (see asap/data/*.py for each dataset's config); `--source`
overrides where the raw data is read from and `--out-root` where prepared folders go. The format is
described in asap/data/prepared.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asap.config import ConfigError, require
from asap.data import cityscapes, facades, folders, nyu
from asap.data.common import DataError, PrepareOptions, parse_size, prepared_name
from asap.data.params import DATASETS, PrepareParams
from pipelines.common import params, project_root, run_stage
from pipelines.fetch import RAW_ARCHIVE

SOURCE_KIND = {"facades": "CMP_facade_DB_base.zip archive", "cityscapes": "folder holding leftImg8bit/ and gtFine/",
               "nyu": "nyu_depth_v2_labeled.mat file", "folders": "folder of your pairs (see asap/data/folders.py)"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("size", help="<height>x<width>, e.g. 256x256")
    parser.add_argument("--source", default=None, help="raw data to read instead of the params' setting")
    parser.add_argument("--out-root", default=None, help="parent of the prepared folder (data/prepared)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: prepare.workers)")
    parser.add_argument("--params", default=None, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)

    section = PrepareParams.from_section(params(args.params).get("prepare"))
    try:
        height, width = parse_size(args.size)
    except DataError as err:
        raise ConfigError(str(err)) from None
    opts = dict(height=height, width=width, workers=args.workers or section.workers, skip_bad=section.skip_bad)
    root = project_root()
    out_root = Path(args.out_root) if args.out_root else root / "data" / "prepared"
    cfg = getattr(section, args.dataset)
    if args.source and not Path(args.source).exists():
        raise DataError(f"--source {args.source} does not exist: pass the path of the "
                        f"{SOURCE_KIND[args.dataset]}")
    if args.dataset == "facades":
        source = args.source or root / RAW_ARCHIVE
        if not Path(source).is_file():
            raise DataError(f"facades archive {source} not found: run `dvc repro fetch-facades` "
                            "(or `python -m pipelines.fetch facades`) first, or pass --source"
                            if not args.source else
                            f"--source {source} is not a file: pass the path of the {SOURCE_KIND['facades']}")
        out = out_root / prepared_name("facades", height, width)
        facades.prepare_facades(source, out, cfg, PrepareOptions(fit=cfg.fit, **opts))
    elif args.dataset == "cityscapes":
        source = args.source or cfg.root
        require(bool(source), "prepare.cityscapes.root is null: set it to the folder holding "
                              "leftImg8bit/ and gtFine/ (or pass --source)")
        out = out_root / prepared_name("cityscapes", height, width)
        cityscapes.prepare_cityscapes(source, out, PrepareOptions(fit=cfg.fit, **opts))
    elif args.dataset == "nyu":
        source = args.source or cfg.mat
        require(bool(source), "prepare.nyu.mat is null: set it to the path of nyu_depth_v2_labeled.mat "
                              "(or pass --source)")
        out = out_root / prepared_name("nyu", height, width)
        nyu.prepare_nyu(source, out, cfg, PrepareOptions(fit=cfg.fit, **opts))
    else:
        source = args.source or cfg.root
        require(bool(source), "prepare.folders.root is null: set it to your folder (or pass --source)")
        out = out_root / prepared_name(cfg.name, height, width)
        folders.prepare_folders(source, out, cfg, PrepareOptions(fit=cfg.fit, **opts))


if __name__ == "__main__":
    run_stage(main)
