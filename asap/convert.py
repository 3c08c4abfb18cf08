"""Convert an authors' ASAP-Net generator (latest_net_G.pth) into our checkpoint format.

    asap convert-authors latest_net_G.pth models/facades512/generator.pt
    asap convert-authors cityscapes_G.pth out.pt --num-classes 35 --instance-edge

The file is read as data (torch.load weights_only=True). Module names of the authors'
ASAPNetsGenerator equal ours; S, the widths, the padding of the low-res stream (zeros, or reflect for
models trained with their --reflection_pad, e.g. the facades ones) and whether the last input channel
feeds only the low-res stream (their --lr_instance) are recovered from the keys and tensor shapes.
How the input channels split into classes / don't-care / instance edge is not in the weights: pass it
(default: all classes). Their Cityscapes options give 35 labels + the instance edge = 36 channels;
add --dontcare only for a model trained with their --contain_dontcare_label (then 37 channels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asap.models.checkpoint import CheckpointError, is_authors_state, load_as_data, load_authors_state, save_generator


def convert_authors(src: str | Path, dst: str | Path, overwrite: bool = False, **overrides):
    """Load the authors' state dict from ``src`` and write our checkpoint to ``dst``; returns the model."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite to replace it")
    state = load_as_data(src)
    if not (isinstance(state, dict) and is_authors_state(state)):
        raise CheckpointError(f"{src} is not an authors' ASAPNetsGenerator state dict "
                              "(no 'lowres_stream.model.*' keys)")
    try:
        model = load_authors_state(state, **overrides)
    except CheckpointError as err:
        raise CheckpointError(f"{src}: {err}") from None
    save_generator(dst, model, meta={"converted_from": str(src), "source": "tamarott/ASAPNet"})
    return model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="the authors' generator state dict (e.g. latest_net_G.pth)")
    p.add_argument("dst", help="where to write our checkpoint (.pt)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="one-hot label classes (default: every input channel not named below)")
    p.add_argument("--dontcare", action="store_true",
                   help="the input has a don't-care channel (label 255): only for models trained with the "
                        "authors' --contain_dontcare_label (their Cityscapes default has none)")
    p.add_argument("--instance-edge", action="store_true",
                   help="the input has an instance-edge channel (their Cityscapes models: yes)")
    p.add_argument("--overwrite", action="store_true", help="replace dst if it exists")


def run(args) -> int:
    model = convert_authors(args.src, args.dst, overwrite=args.overwrite, num_classes=args.num_classes,
                            dontcare=args.dontcare, instance_edge=args.instance_edge)
    c = model.config
    print(f"wrote {args.dst}: S={c.downsampling} (S1={c.s1}, S2={c.s2}), {c.padding} padding, "
          f"input {c.in_channels} channels "
          f"({c.num_classes} classes{', dontcare' if c.dontcare else ''}"
          f"{', instance edge' if c.instance_edge else ''}), MLP {c.mlp_channels}, P={c.num_params}")
    return 0
