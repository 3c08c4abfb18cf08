"""Generator checkpoints as data: ``torch.load(path, weights_only=True)``, never unpickled code.

Our format is one ``torch.save`` dict of tensors and plain values::

    {"format": "asap-generator/1", "arch": "asapnet", "config": {...}, "state_dict": {...}, "meta": {...}}

The authors' released generators (``latest_net_G.pth`` from github.com/tamarott/ASAPNet, the state
dict of ``ASAPNetsGenerator``) load too: their module names equal ours, in both of their layouts (zero
padding, or ``--reflection_pad`` with a pad module before each 3x3 conv, detected from the keys), and
the configuration they leave out is recovered from the tensor shapes (see ``config_from_authors_state``).
A state dict of another layout is a ``CheckpointError`` that lists the keys and shapes it found.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from pathlib import Path

import torch

from asap import files
from asap.config import UserError
from asap.files import atomic_path
from asap.models.pixelwise import num_mlp_params

FORMAT = "asap-generator/1"

# arch name -> (module, config class, model class); baselines live in asap.models.baselines.
ARCHS = {
    "asapnet": ("asap.models.asapnet", "ASAPNetConfig", "ASAPNetGenerator"),
    "pix2pixhd": ("asap.models.baselines", "Pix2PixHDConfig", "Pix2PixHDGenerator"),
    "spade": ("asap.models.baselines", "SPADEConfig", "SPADEGenerator"),
}


class CheckpointError(UserError, ValueError):
    """A file is not a generator checkpoint we can load; the message names the file and why."""


def arch_classes(arch: str):
    """(config class, model class) of a registered generator architecture."""
    if arch not in ARCHS:
        raise CheckpointError(f"unknown generator arch {arch!r}; known: {sorted(ARCHS)}")
    module, config_cls, model_cls = ARCHS[arch]
    mod = importlib.import_module(module)
    return getattr(mod, config_cls), getattr(mod, model_cls)


def arch_of(model: torch.nn.Module) -> str:
    for arch, (module, _, model_cls) in ARCHS.items():
        if type(model).__module__ == module and type(model).__name__ == model_cls:
            return arch
    raise CheckpointError(f"{type(model).__name__} is not a registered generator class")


def build_generator(arch: str, config: dict) -> torch.nn.Module:
    config_cls, model_cls = arch_classes(arch)
    return model_cls(config_cls(**config))


def save_generator(path: str | Path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Write model + config + metadata atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "arch": arch_of(model),
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_as_data(path: Path):
    """A generator file read as data (``asap.files.load_as_data``), errors as CheckpointError."""
    return files.load_as_data(path, CheckpointError)


def weights_sha1(path: str | Path) -> str:
    """SHA-1 of what a generator file computes: its arch, config and tensors (names, dtypes, shapes,
    bytes), not its metadata. Two exports of the same weights (e.g. a finished run re-exported at a
    later commit, whose ``meta.git_commit`` differs) have the same digest."""
    path = Path(path)
    data = load_as_data(path)
    if not (isinstance(data, dict) and data.get("format") == FORMAT):
        raise CheckpointError(f"{path} is not a generator checkpoint of this project (format {FORMAT})")
    digest = hashlib.sha1(json.dumps({"arch": data["arch"], "config": data["config"]}, sort_keys=True).encode())
    for name in sorted(data["state_dict"]):
        tensor = data["state_dict"][name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _layout_diff(state: dict, expected: dict, said: str, show: int = 6) -> list[str]:
    """What keeps ``state`` from being exactly the layout ``expected`` (key -> shape): one clause each for
    the missing, unexpected and differently shaped tensors (the first ``show`` named), empty when none."""
    missing = sorted(set(expected) - set(state), key=_natural)
    unexpected = [f"{k} {_shape(state[k])}" for k in sorted(set(state) - set(expected), key=_natural)]
    wrong = [f"{k} {_shape(state[k])} ({said} {expected[k]})" for k in sorted(set(expected) & set(state), key=_natural)
             if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != expected[k]]
    return [f"{len(v)} {name}: {', '.join(v[:show])}{' ...' if len(v) > show else ''}"
            for name, v in (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong)) if v]


def _build_ours(path: Path, data: dict) -> torch.nn.Module:
    """Our format: the model its arch and config build, with exactly the checkpoint's tensors."""
    try:
        model = build_generator(data["arch"], data["config"])
    except KeyError as err:
        raise CheckpointError(f"{path}: our format ({FORMAT}) but the field {err} is missing") from None
    except (TypeError, ValueError) as err:  # unknown or invalid config fields (ConfigError is a ValueError)
        raise CheckpointError(f"{path}: its {data['arch']} config {data['config']} is invalid: {err}") from None
    state = data.get("state_dict") or {}
    parts = _layout_diff(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, "its config builds")
    if parts:
        classes = data["config"].get("num_classes")
        raise CheckpointError(f"{path}: the weights do not match the {data['arch']} config stored with them"
                              f"{f' (num_classes={classes})' if classes is not None else ''}: " + "; ".join(parts)
                              + ". The file was edited or written by other code; re-export it from its training run")
    model.load_state_dict(state)
    return model


def load_generator(path: str | Path, **authors_overrides) -> tuple[torch.nn.Module, dict]:
    """Load ours or the authors' checkpoint; returns (model in eval mode, meta)."""
    path = Path(path)
    data = load_as_data(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return _build_ours(path, data).eval(), dict(data.get("meta", {}))
    if isinstance(data, dict) and is_authors_state(data):
        try:
            model = load_authors_state(data, **authors_overrides)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        return model.eval(), {"source": str(path), "converted_from": "tamarott/ASAPNet ASAPNetsGenerator"}
    keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
    raise CheckpointError(f"{path} is not a generator checkpoint: expected our format ({FORMAT!r}) or the "
                          f"authors' ASAPNetsGenerator state dict (keys 'lowres_stream.model.*'); found {keys}")


# ----------------------------------------------------------------------------------------------
# The authors' checkpoints
# ----------------------------------------------------------------------------------------------

_LR = re.compile(r"^(?:module\.)?lowres_stream\.model\.(\d+)\.(.+)$")
_PREFIX = "lowres_stream.model"

# The authors' low-res stream numbers its modules [conv, relu] per 3x3 conv with zero padding and
# [pad, conv, relu] with their --reflection_pad (a ReflectionPad2d(1) module before each 3x3 conv; the
# released facades models use it). padding -> (index of the first conv, index step to the next strided
# conv, index of the conv inside a conv block).
_LAYOUTS = {"zeros": (0, 2, 0), "reflect": (1, 3, 1)}


def is_authors_state(state: dict) -> bool:
    return any(isinstance(k, str) and _LR.match(k) for k in state) and "format" not in state


def _strip(state: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _natural(key: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in key.split(".")]


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def describe_state(state: dict, limit: int = 14) -> str:
    """The keys with their shapes, grouped by low-res module (natural order), at most ``limit`` groups,
    e.g. ``lowres_stream.model.0.{0.weight (64, 13, 3, 3), 1.weight (64,), 1.bias (64,)}``."""
    groups: dict[str, list[str]] = {}
    for k in sorted(state, key=lambda k: _natural(str(k))):
        m = _LR.match(str(k))
        if m:
            groups.setdefault(f"{_PREFIX}.{m.group(1)}", []).append(f"{m.group(2)} {_shape(state[k])}")
        else:
            groups[f"{k} {_shape(state[k])}"] = []
    lines = [f"{head}.{{{', '.join(items)}}}" if items else head for head, items in list(groups.items())[:limit]]
    if len(groups) > limit:
        lines.append(f"... and {len(groups) - limit} more")
    return "; ".join(lines)


def authors_padding(state: dict) -> str:
    """'zeros' or 'reflect' from where the first 3x3 conv sits; a CheckpointError naming what was found
    when neither layout fits."""
    state = _strip(state)
    for padding, (first, _, _) in _LAYOUTS.items():  # below the first conv: a pad module, no tensors
        if f"{_PREFIX}.{first}.0.weight" in state and not any(
                k.startswith(f"{_PREFIX}.{i}.") for i in range(first) for k in state):
            return padding
    raise CheckpointError(
        "unknown layout of the authors' ASAPNetsGenerator: expected the first 3x3 conv at "
        f"'{_PREFIX}.0.0.weight' (zero padding) or '{_PREFIX}.1.0.weight' (their --reflection_pad); "
        f"found {len(state)} key(s): {describe_state(state)}")


def _conv3x3(state: dict, key: str) -> torch.Tensor:
    w = state[key]
    if not (isinstance(w, torch.Tensor) and w.dim() == 4 and tuple(w.shape[2:]) == (3, 3)):
        raise CheckpointError(f"'{key}' should be a 3x3 conv weight (out, in, 3, 3), found {_shape(w)}")
    return w


def config_from_authors_state(state: dict, num_classes: int | None = None, dontcare: bool = False,
                              instance_edge: bool = False, mlp_width: int = 64, mlp_depth: int = 5):
    """Recover an ASAPNetConfig from the keys and shapes in the authors' state dict.

    Layout (their ASAPNetsLRStream): the first 3x3 conv (+IN) in -> lr_width, then n strided convs,
    the conv blocks (keys '.conv_block.'), and a final 1x1 conv to P with a bias; with --reflection_pad
    a pad module precedes each 3x3 conv, which shifts the indices (see ``_LAYOUTS``). S follows from P:
    the MLP's first layer takes hr_in + 4 log2(S) channels; hr_in is the input channels, less one when
    their ``lr_instance`` routed the last channel to the low-res stream only. Any key or shape that the
    recovered config does not reproduce exactly is a CheckpointError listing them.
    """
    from asap.models.asapnet import ASAPNetConfig

    state = _strip(state)
    padding = authors_padding(state)
    first_idx, step, block_conv = _LAYOUTS[padding]
    first = _conv3x3(state, f"{_PREFIX}.{first_idx}.0.weight")
    lr_in, lr_width = first.shape[1], first.shape[0]
    convs = [first_idx]  # the first conv, then the strided ones
    while f"{_PREFIX}.{convs[-1] + step}.0.weight" in state:
        convs.append(convs[-1] + step)
        _conv3x3(state, f"{_PREFIX}.{convs[-1]}.0.weight")
    last = convs[-1] + 2  # after the conv's ReLU: the blocks (their pad, if any, is inside the block)
    n_blocks = 0
    while f"{_PREFIX}.{last}.conv_block.{block_conv}.0.weight" in state:
        n_blocks, last = n_blocks + 1, last + 1
    final = state.get(f"{_PREFIX}.{last}.weight")
    strided = len(convs) - 1
    if not strided or not (isinstance(final, torch.Tensor) and final.dim() == 4 and tuple(final.shape[2:]) == (1, 1)):
        found = "missing" if final is None else f"{_shape(final)}, not (P, width, 1, 1)"
        raise CheckpointError(
            f"state dict does not fit the authors' ASAPNetsGenerator layout ({padding} padding): after the "
            f"first 3x3 conv, {strided} strided conv(s) (at least 1 needed) and {n_blocks} conv block(s) "
            f"('{_PREFIX}.N.conv_block.{block_conv}.0.weight'), the final 1x1 conv '{_PREFIX}.{last}.weight' "
            f"is {found}; found: {describe_state(state)}")
    P = final.shape[0]
    lr_max_width = final.shape[1]
    # P = (nci + 1) * w + (depth - 2) * (w + 1) * w + (w + 1) * 3  with nci = MLP input channels
    rest = num_mlp_params([0] + [mlp_width] * (mlp_depth - 1) + [3])
    nci, rem = divmod(P - rest, mlp_width)
    if rem or nci < 1:
        raise CheckpointError(f"P={P} parameters do not fit an MLP of width {mlp_width} and depth {mlp_depth}")
    lowres_only = (lr_in - nci) % 4  # nci = lr_in - lowres_only + 4 log2 S
    if lowres_only not in (0, 1) or nci - lr_in + lowres_only < 4:
        raise CheckpointError(f"cannot split the MLP input of {nci} channels into {lr_in} label channels "
                              "and a positional encoding")
    S = 2 ** ((nci - lr_in + lowres_only) // 4)
    n_cls = num_classes if num_classes is not None else lr_in - int(dontcare) - int(instance_edge)
    config = ASAPNetConfig(num_classes=n_cls, downsampling=S, dontcare=dontcare, instance_edge=instance_edge,
                           lowres_only_last_channel=bool(lowres_only), learned_downsampling=2 ** strided,
                           lr_width=lr_width, lr_max_width=lr_max_width, lr_depth=n_blocks,
                           mlp_width=mlp_width, mlp_depth=mlp_depth, padding=padding)
    if config.in_channels != lr_in:
        raise CheckpointError(f"the checkpoint takes {lr_in} input channels, but num_classes={n_cls}"
                              f"{' + dontcare' if dontcare else ''}{' + instance edge' if instance_edge else ''}"
                              f" gives {config.in_channels}")
    if config.num_params != P:
        raise CheckpointError(f"recovered config predicts P={config.num_params}, checkpoint has {P}")
    if config.s2 == 16 and math.log2(S) < 4:
        raise CheckpointError(f"recovered S={S} is smaller than the 16x learned downsampling")
    _check_same_layout(state, config)
    return config


def _check_same_layout(state: dict, config) -> None:
    """Every key and shape of the model the config builds, and nothing else (built on the meta device:
    no memory, no init cost)."""
    from asap.models.asapnet import ASAPNetGenerator

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ASAPNetGenerator(config).state_dict().items()}
    parts = _layout_diff(state, expected, "expected")
    if parts:
        raise CheckpointError(f"state dict does not match the authors' ASAPNetsGenerator layout recovered from it "
                              f"({config.padding} padding, S={config.downsampling}, {config.lr_depth} conv blocks): "
                              + "; ".join(parts))


def load_authors_state(state: dict, **overrides):
    from asap.models.asapnet import ASAPNetGenerator

    config = config_from_authors_state(state, **overrides)
    model = ASAPNetGenerator(config)
    model.load_state_dict(_strip(state), strict=True)
    return model
