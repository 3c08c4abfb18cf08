"""Typed configuration: validation at the edge, errors that say what was given and what is allowed.

Each part of the library owns a small frozen dataclass (the model config lives beside the model);
this module holds the shared helpers and reads ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, TypeVar

import yaml


class UserError(Exception):
    """The base of every error a user can fix (bad params, data, checkpoints, missing inputs): its
    message names the file or key, what was found and what to do. The stage runner and the `asap`
    command print it as one line, never a traceback; any other exception is a bug and shows one."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


T = TypeVar("T")


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def require_power_of_two(name: str, value: Any, minimum: int = 2) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and is_power_of_two(value)
            and value >= minimum,
            f"{name} must be a power of two >= {minimum}, got {value!r} "
            f"(allowed: {', '.join(str(2 ** k) for k in range(int(math.log2(minimum)), 8))}, ...)")


def require_choice(name: str, value: Any, allowed) -> None:
    require(value in allowed, f"{name} must be one of {sorted(allowed)}, got {value!r}")


def env_switch(name: str, meaning: str) -> bool | str:
    """An on/off/auto environment switch (unset = "auto"): "0"/"false" -> False, "1"/"true" -> True,
    "auto" -> "auto"; anything else is an error naming the variable and, in ``meaning``, what its three
    values do."""
    import os

    value = os.environ.get(name, "auto").strip().lower()
    choices = {"auto": "auto", "1": True, "true": True, "0": False, "false": False}
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected 0, 1 or auto ({meaning})")
    return choices[value]


def from_dict(cls: type[T], data: dict | None, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name (typos fail loudly)."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed keys: {sorted(names)}")
    return cls(**data)


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml as a dict, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found (run from the project root, or pass --params)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: for logging nested params as flat key/values."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
