"""`asap` command line: user-facing tools that are not pipeline stages.

    asap convert-authors latest_net_G.pth generator.pt [--num-classes 13 ...]
    asap translate ...            (inference; see asap/infer.py)
    asap train DATA [--generator NAME] ...   (in-process training; see asap/train_command.py)
    asap export CHECKPOINT [--format onnx|pt2]  (ONNX / torch.export files; see asap/export.py)
    asap demo CHECKPOINT [--port 7860]       (a live label-painting page; see asap/demo.py)

Each subcommand lives in its own module and registers itself through COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from asap.config import UserError

# name -> module that defines add_arguments(parser) and run(args)
COMMANDS = {
    "convert-authors": "asap.convert",
    "translate": "asap.infer",
    "train": "asap.train_command",
    "export": "asap.export",
    "demo": "asap.demo",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asap", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().split("\n")[0])
        module.add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args) or 0
    except (UserError, ValueError, OSError) as err:  # UserError: params, data, checkpoints; OSError: files
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
