"""Turn a profile of params overrides (profiles/*.yaml) into `dvc exp run` flags.

    python -m pipelines.profile profiles/paper-gpu.yaml --run   # runs `dvc exp run -S ... -S ...`
    python -m pipelines.profile profiles/paper-gpu.yaml         # prints the flags

Prints one `-S key=value` per leaf (lists as compact YAML flow lists such as [16,32,64]), after
checking every key exists in params.yaml, so a typo fails here rather than silently adding an unused
parameter. Values must not contain whitespace: the flags are meant for the shell's word splitting.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import yaml

from asap.config import ConfigError, flatten, load_params


def flags(profile: dict, params: dict) -> list[str]:
    known = flatten(params)
    out = []
    for key, value in flatten(profile).items():
        if key not in known and not any(k.startswith(key + ".") for k in known):
            raise ConfigError(f"profile key {key!r} is not in params.yaml; known sections: {sorted(params)}")
        if isinstance(value, list):
            text = "[" + ",".join(_scalar(v) for v in value) + "]"
        else:
            text = _scalar(value)
        if any(c.isspace() for c in text):
            raise ConfigError(f"profile value of {key!r} contains whitespace ({text!r}); not expressible as a flag")
        out += ["-S", f"{key}={text}"]
    return out


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", action="store_true", help="run `dvc exp run` with the flags (no shell involved)")
    args = ap.parse_args(argv)
    try:
        with open(args.profile) as f:
            profile = yaml.safe_load(f) or {}
        args_out = flags(profile, load_params(args.params))
    except (OSError, ConfigError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.run:
        return subprocess.call(["dvc", "exp", "run", *args_out])
    print(" ".join(args_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
