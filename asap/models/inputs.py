"""Encoding of generator inputs: class-index label maps -> one-hot (+ don't-care, + instance edge)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DONTCARE_VALUE = 255  # the conventional "don't care" label value (Cityscapes, SPADE)


def one_hot_labels(labels: torch.Tensor, num_classes: int, dontcare: bool = False) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) integer class indices -> (B, num_classes [+1], H, W) float one-hot.

    With ``dontcare``, pixels labelled 255 go to an extra last channel (index ``num_classes``).
    Any other value outside 0..num_classes-1 is an error that lists the offending values.
    """
    if labels.dim() == 4:
        if labels.shape[1] != 1:
            raise ValueError(f"class-index label maps must be (B, H, W) or (B, 1, H, W), got {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"class-index label maps must be (B, H, W) or (B, 1, H, W), got {tuple(labels.shape)}")
    labels = labels.long()
    if dontcare:
        labels = torch.where(labels == DONTCARE_VALUE, torch.full_like(labels, num_classes), labels)
    n = num_classes + int(dontcare)
    bad = (labels < 0) | (labels >= n)
    if bad.any():
        values = sorted(set(labels[bad].unique().tolist()))[:10]
        allowed = f"0..{num_classes - 1}" + (f" and {DONTCARE_VALUE} (don't care)" if dontcare else "")
        raise ValueError(f"label values {values} are outside the {num_classes} classes (allowed: {allowed})")
    return F.one_hot(labels, n).permute(0, 3, 1, 2).float()  # (B, n, H, W)


def encode_input(x: torch.Tensor, config, edges: torch.Tensor | None = None) -> torch.Tensor:
    """Generator input as (B, in_channels, H, W) float, from indices or an encoded tensor.

    ``config`` needs ``input_kind``, ``num_classes``, ``dontcare``, ``instance_edge`` and ``in_channels``.
    """
    if not x.is_floating_point():
        if config.input_kind != "labels":
            raise ValueError("an integer tensor is a label map, but this generator takes images "
                             "(input_kind='image'): pass a float (B, C, H, W) tensor")
        x = one_hot_labels(x, config.num_classes, config.dontcare)
        if config.instance_edge:
            if edges is None:
                raise ValueError("this generator was built with instance_edge=True: pass edges=(B, 1, H, W)")
            x = torch.cat([x, edges.to(x.dtype)], dim=1)
    elif edges is not None:
        x = torch.cat([x, edges.to(x.dtype)], dim=1)
    if x.dim() != 4 or x.shape[1] != config.in_channels:
        raise ValueError(f"generator expects (B, {config.in_channels}, H, W) input "
                         f"({config.num_classes} classes{' + dontcare' if config.dontcare else ''}"
                         f"{' + instance edge' if config.instance_edge else ''}), got {tuple(x.shape)}")
    return x


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) instance ids -> (B, 1, H, W) float map, 1 where a 4-neighbour differs
    (pix2pixHD's edge map)."""
    if instance.dim() == 3:
        instance = instance[:, None]
    edge = torch.zeros_like(instance, dtype=torch.bool)
    dx = instance[..., :, 1:] != instance[..., :, :-1]
    dy = instance[..., 1:, :] != instance[..., :-1, :]
    edge[..., :, 1:] |= dx
    edge[..., :, :-1] |= dx
    edge[..., 1:, :] |= dy
    edge[..., :-1, :] |= dy
    return edge.float()
