"""Segmenter that scores generated images (Sec. 4.1: pixel accuracy and mIoU of a segmentation network).

The paper runs DRN-D-22 (Yu, Koltun, Funkhouser, "Dilated Residual Networks", CVPR 2017) trained on the
real photos of each dataset. No such network exists for facades, so the pipeline trains one. This is a
DRN-D-22-shaped network written from that paper's description:

  level 1-2  full resolution: 7x7 conv, then a 3x3 conv (DRN-D replaces ResNet's max pool by convs)
  level 3    3x3 conv, stride 2                                              (H/2)
  level 4-5  two residual blocks each, stride 2                              (H/4, H/8)
  level 6-7  two residual blocks each, dilation 2 and 4 instead of striding  (H/8: output stride 8)
  level 8-9  one plain 3x3 conv each (no residual), dilation 2 then 1: DRN-D's "degridding" layers
  head       1x1 conv to the classes, bilinear upsampling x8 to the input size

Channels (16, 32, 64, 128, 256, 512, 512, 512) times ``width_mult``. The default width 0.25 (8..128
channels, ~1/16 of DRN-D-22's FLOPs) is our choice so the CPU default trains in about two minutes at
256x256; ``width_mult=1.0`` is the paper's DRN-D-22 size for GPU runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from asap.config import ConfigError, UserError, require
from asap.files import atomic_path, load_as_data

FORMAT = "asap-segmenter/1"
DRN_D22_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)  # Yu et al. 2017, Table 1 (DRN-D-22)
DRN_D22_LAYERS = (1, 1, 2, 2, 2, 2, 1, 1)                 # convs (levels 1-2, 7-8) or residual blocks


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything needed to rebuild the segmenter (stored in its checkpoint)."""
    num_classes: int                        # output classes (facades: 13, class 0 unused; labels are 1..12)
    width_mult: float = 0.25                # channel multiplier on DRN-D-22's widths (1.0 = the paper's)
    min_width: int = 8                      # no layer narrower than this (keeps the full-res convs useful)
    channels: tuple = DRN_D22_CHANNELS      # per level, before width_mult
    layers: tuple = DRN_D22_LAYERS          # per level: convs (levels 1-2, 7-8) or residual blocks (3-6)
    in_channels: int = 3                    # RGB in [-1, 1]

    def __post_init__(self):
        # Lists (from JSON/YAML or a checkpoint) become tuples so the frozen config stays hashable.
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "layers", tuple(self.layers))
        require(isinstance(self.num_classes, int) and self.num_classes >= 2,
                f"segmenter num_classes must be an integer >= 2, got {self.num_classes!r}")
        require(isinstance(self.width_mult, (int, float)) and 0 < self.width_mult <= 4,
                f"segmenter width_mult must be in (0, 4], got {self.width_mult!r}")
        require(len(self.channels) == 8 and len(self.layers) == 8,
                f"segmenter channels and layers need 8 levels (DRN-D), got {len(self.channels)} and {len(self.layers)}")
        require(all(isinstance(n, int) and n >= 1 for n in self.layers),
                f"segmenter layers must be positive integers, got {self.layers!r}")
        require(isinstance(self.min_width, int) and self.min_width >= 1,
                f"segmenter min_width must be a positive integer, got {self.min_width!r}")

    @property
    def widths(self) -> list[int]:
        return [max(self.min_width, int(round(c * self.width_mult))) for c in self.channels]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"], d["layers"] = list(self.channels), list(self.layers)
        return d


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------

def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """ResNet basic block with dilation (DRN): two 3x3 convs + identity (or 1x1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class Segmenter(nn.Module):
    """[-1, 1] image (B, 3, H, W) -> class logits (B, num_classes, H, W)."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        w, n = config.widths, config.layers
        self.stem = conv_bn_relu(config.in_channels, w[0], kernel=7)              # level 1 (full res)
        levels: list[nn.Module] = [
            nn.Sequential(*[conv_bn_relu(w[0], w[0]) for _ in range(n[0])]),       # level 2 (full res)
            nn.Sequential(*[conv_bn_relu(w[0] if i == 0 else w[1], w[1], stride=2 if i == 0 else 1)
                            for i in range(n[1])]),                                # level 3 (H/2)
        ]
        # levels 4-7: residual; stride 2, 2, then dilation 2, 4 keep H/8 (DRN's dilation for striding)
        for lvl, (stride, dilation) in zip(range(2, 6), [(2, 1), (2, 1), (1, 2), (1, 4)]):
            blocks = [ResidualBlock(w[lvl - 1] if i == 0 else w[lvl], w[lvl], stride if i == 0 else 1, dilation)
                      for i in range(n[lvl])]
            levels.append(nn.Sequential(*blocks))
        for lvl, dilation in ((6, 2), (7, 1)):  # DRN-D degridding: plain convs, decreasing dilation
            levels.append(nn.Sequential(*[conv_bn_relu(w[lvl - 1] if i == 0 else w[lvl], w[lvl], dilation=dilation)
                                          for i in range(n[lvl])]))
        self.levels = nn.Sequential(*levels)
        self.classifier = nn.Conv2d(w[7], config.num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # A small classifier starts at near-uniform class scores (loss ~ ln K), not at large random logits.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.levels(self.stem(images))                            # (B, w7, H/8, W/8)
        logits = self.classifier(features)                                   # (B, K, H/8, W/8)
        return F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W) int64 classes, in eval mode (restores the mode after)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [self(chunk.to(device)).argmax(1).cpu() for chunk in images.split(batch_size)]
        self.train(was_training)
        return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def _pair(item) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset item -> (image (3, H, W) float [-1, 1], label (H, W) int64): tuples or dicts."""
    if isinstance(item, dict):
        try:
            return item["image"], item["label"]
        except KeyError as err:
            raise ValueError(f"segmenter dataset items need 'image' and 'label' keys, got {sorted(item)}") from err
    image, label = item[0], item[1]
    return image, label


def _collate(items):
    images, labels = zip(*(_pair(i) for i in items))
    labels = [lab[0] if lab.dim() == 3 else lab for lab in labels]  # (1, H, W) -> (H, W)
    return torch.stack(images).float(), torch.stack(labels).long()


def train_segmenter(model: Segmenter, dataset, steps: int, lr: float = 1e-3, batch_size: int = 8,
                    device: str | torch.device = "cpu", log_every: int = 50,
                    callback: Callable[[int, float], None] | None = None, ignore_index: int = -100,
                    hflip: bool = True, seed: int = 0, num_workers: int = 0) -> list[float]:
    """Train with pixelwise cross-entropy; returns the loss of every step.

    Adam with a poly learning-rate decay (lr * (1 - t/T)^0.9, the usual schedule for dilated
    segmentation networks). Random horizontal flips (facades are left-right symmetric). Pixels labelled
    ``ignore_index`` (e.g. 255, "don't care") do not count; classes that never occur (facades' 0) need
    nothing: no target ever names them. ``callback(step, loss)`` runs every ``log_every`` steps and at
    the last step (the stage logs to MLflow there).
    """
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"train_segmenter needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    if len(dataset) == 0:
        raise ValueError("train_segmenter got an empty dataset")
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                         drop_last=True, collate_fn=_collate, generator=generator,
                                         num_workers=num_workers)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: (1 - t / steps) ** 0.9)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs, back to back
    history: list[float] = []
    for step in range(1, steps + 1):
        images, labels = next(batches)
        if hflip:
            flip = torch.rand(images.shape[0], generator=generator) < 0.5
            images[flip], labels[flip] = images[flip].flip(-1), labels[flip].flip(-1)
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels, ignore_index=ignore_index)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"segmenter loss is {loss.item()} at step {step}: lower lr (now {lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if callback is not None and (step % log_every == 0 or step == steps):
            callback(step, loss.item())
    model.eval()
    return history


# ----------------------------------------------------------------------------------------------
# Checkpoints as data
# ----------------------------------------------------------------------------------------------

class SegmenterCheckpointError(UserError, ValueError):
    """A file is not a segmenter checkpoint; the message names the file and why."""


def save_segmenter(path: str | Path, model: Segmenter, meta: dict | None = None) -> Path:
    """One torch.save dict of tensors and plain data, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "config": model.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": dict(meta or {})}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[Segmenter, dict]:
    """-> (model in eval mode, meta). Loads as data (weights_only=True), never as pickled code."""
    path = Path(path)
    data = load_as_data(path, SegmenterCheckpointError, missing_hint=" (run the `segmenter` stage)")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format", sorted(data)[:5]) if isinstance(data, dict) else type(data).__name__
        raise SegmenterCheckpointError(f"{path} is not a segmenter checkpoint: expected format {FORMAT!r}, "
                                       f"found {found!r}")
    model = Segmenter(SegmenterConfig(**data["config"]))
    model.load_state_dict(data["state_dict"])
    return model.to(device).eval(), dict(data.get("meta", {}))
