"""Generator checkpoints as data: ``torch.load(path, weights_only=True)``, never unpickled code.

Our format is one ``torch.save`` dict of tensors and plain values::

    {"format": "asap-generator/1", "arch": "asapnet", "config": {...}, "state_dict": {...}, "meta": {...}}

The authors' released generators (``latest_net_G.pth`` from github.com/tamarott/ASAPNet, the state
dict of ``ASAPNetsGenerator``) load too: their module names equal ours, and the configuration they
leave out is recovered from the tensor shapes (see ``config_from_authors_state``).
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import torch

from asap.models.pixelwise import num_mlp_params

FORMAT = "asap-generator/1"

# arch name -> (module, config class, model class); baselines live in asap.models.baselines.
ARCHS = {
    "asapnet": ("asap.models.asapnet", "ASAPNetConfig", "ASAPNetGenerator"),
    "pix2pixhd": ("asap.models.baselines", "Pix2PixHDConfig", "Pix2PixHDGenerator"),
    "spade": ("asap.models.baselines", "SPADEConfig", "SPADEGenerator"),
}


class CheckpointError(ValueError):
    """A file is not a generator checkpoint we can load; the message names the file and why."""


def _arch_classes(arch: str):
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
    config_cls, model_cls = _arch_classes(arch)
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def _load_data(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, zip errors, disallowed globals...
        raise CheckpointError(
            f"{path} is not a generator checkpoint readable as data (torch.load weights_only=True "
            f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]})") from err


def load_generator(path: str | Path, **authors_overrides) -> tuple[torch.nn.Module, dict]:
    """Load ours or the authors' checkpoint; returns (model in eval mode, meta)."""
    path = Path(path)
    data = _load_data(path)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        model = build_generator(data["arch"], data["config"])
        model.load_state_dict(data["state_dict"])
        return model.eval(), dict(data.get("meta", {}))
    if isinstance(data, dict) and is_authors_state(data):
        model = load_authors_state(data, **authors_overrides)
        return model.eval(), {"source": str(path), "converted_from": "tamarott/ASAPNet ASAPNetsGenerator"}
    keys = list(data)[:5] if isinstance(data, dict) else type(data).__name__
    raise CheckpointError(f"{path} is not a generator checkpoint: expected our format ({FORMAT!r}) or the "
                          f"authors' ASAPNetsGenerator state dict (keys 'lowres_stream.model.*'); found {keys}")


# ----------------------------------------------------------------------------------------------
# The authors' checkpoints
# ----------------------------------------------------------------------------------------------

_LR = re.compile(r"^(?:module\.)?lowres_stream\.model\.(\d+)\.(.+)$")


def is_authors_state(state: dict) -> bool:
    return any(isinstance(k, str) and _LR.match(k) for k in state) and "format" not in state


def _strip(state: dict) -> dict:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def config_from_authors_state(state: dict, num_classes: int | None = None, dontcare: bool = False,
                              instance_edge: bool = False, mlp_width: int = 64, mlp_depth: int = 5):
    """Recover an ASAPNetConfig from the shapes in the authors' state dict.

    Layout (their ASAPNetsLRStream): model.0 = conv(+IN) in -> lr_width, then n strided convs at
    model.2, 4, ..., the conv blocks (keys '.conv_block.'), and a final 1x1 conv to P with a bias.
    S follows from P: the MLP's first layer takes hr_in + 4 log2(S) channels; hr_in is the input
    channels, less one when their ``lr_instance`` routed the last channel to the low-res stream only.
    """
    from asap.models.asapnet import ASAPNetConfig

    state = _strip(state)
    idx = sorted({int(_LR.match(k).group(1)) for k in state if _LR.match(k)})
    first = state["lowres_stream.model.0.0.weight"]
    lr_in, lr_width = first.shape[1], first.shape[0]
    strided = [i for i in idx if i > 0 and f"lowres_stream.model.{i}.0.weight" in state]
    blocks = [i for i in idx if f"lowres_stream.model.{i}.conv_block.0.0.weight" in state]
    last = max(idx)
    final = state[f"lowres_stream.model.{last}.weight"]
    P = final.shape[0]
    lr_max_width = final.shape[1]
    if final.shape[2:] != (1, 1) or not strided:
        raise CheckpointError("state dict does not have the authors' ASAPNetsGenerator layout "
                              f"(final layer {tuple(final.shape)}, {len(strided)} strided convs)")
    # P = (nci + 1) * w + (depth - 2) * (w + 1) * w + (w + 1) * 3  with nci = MLP input channels
    rest = num_mlp_params([0] + [mlp_width] * (mlp_depth - 1) + [3])
    nci, rem = divmod(P - rest, mlp_width)
    if rem:
        raise CheckpointError(f"P={P} parameters do not fit an MLP of width {mlp_width} and depth {mlp_depth}")
    lowres_only = (lr_in - nci) % 4  # nci = lr_in - lowres_only + 4 log2 S
    if lowres_only not in (0, 1):
        raise CheckpointError(f"cannot split the MLP input of {nci} channels into {lr_in} label channels "
                              "and a positional encoding")
    S = 2 ** ((nci - lr_in + lowres_only) // 4)
    n_cls = num_classes if num_classes is not None else lr_in - int(dontcare) - int(instance_edge)
    config = ASAPNetConfig(num_classes=n_cls, downsampling=S, dontcare=dontcare, instance_edge=instance_edge,
                           lowres_only_last_channel=bool(lowres_only), learned_downsampling=2 ** len(strided),
                           lr_width=lr_width, lr_max_width=lr_max_width, lr_depth=len(blocks),
                           mlp_width=mlp_width, mlp_depth=mlp_depth)
    if config.in_channels != lr_in:
        raise CheckpointError(f"the checkpoint takes {lr_in} input channels, but num_classes={n_cls}"
                              f"{' + dontcare' if dontcare else ''}{' + instance edge' if instance_edge else ''}"
                              f" gives {config.in_channels}")
    if config.num_params != P:
        raise CheckpointError(f"recovered config predicts P={config.num_params}, checkpoint has {P}")
    if config.s2 == 16 and math.log2(S) < 4:
        raise CheckpointError(f"recovered S={S} is smaller than the 16x learned downsampling")
    return config


def load_authors_state(state: dict, **overrides):
    from asap.models.asapnet import ASAPNetGenerator

    config = config_from_authors_state(state, **overrides)
    model = ASAPNetGenerator(config)
    model.load_state_dict(_strip(state), strict=True)
    return model
