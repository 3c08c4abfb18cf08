"""Sample images for the report's grids: test pairs of a prepared dataset and generator outputs on them.

The report loads the pipeline's own generator checkpoints (models/<name>/generator.pt,
models/sweep/<trial>/generator.pt) and runs them on the first few test pairs, so a grid shows exactly
what those generators produce; nothing is cached from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asap.data.prepared import PreparedDataset
from asap.images import colour_labels, to_rgb
from asap.models.checkpoint import CheckpointError, arch_of, load_generator

@dataclass
class TestPairs:
    """A few test pairs: the generator inputs and the two images a grid shows beside the outputs."""
    dataset: str
    stems: list[str]
    batch: dict                 # generator inputs: "label" (B, H, W) long [+ "edge"] or "input" (B, C, H, W)
    inputs_rgb: list[np.ndarray]  # (H, W, 3) uint8: the label map in colour, or the input image
    real_rgb: list[np.ndarray]  # (H, W, 3) uint8: the real target photo


def load_test_pairs(data_root: str | Path, count: int, stems: list[str] | None = None) -> TestPairs:
    """The test pairs named by ``stems``, else the first ``count`` in sorted order (deterministic)."""
    data = PreparedDataset(data_root, "test", in_memory=False)
    if stems:
        unknown = sorted(set(stems) - set(data.stems))
        if unknown:
            raise ValueError(f"report.sample_stems {unknown} are not test pairs of {data_root} "
                             f"(e.g. {data.stems[:3]})")
        indices = [data.stems.index(s) for s in stems]
    else:
        indices = list(range(min(count, len(data))))
    items = [data[i] for i in indices]
    info = data.info
    batch: dict = {}
    if info.input_kind == "labels":
        batch["label"] = torch.stack([it["label"] for it in items])          # (B, H, W)
        inputs_rgb = [colour_labels(it["label"].numpy()) for it in items]
        if info.instance_edge:
            batch["edge"] = torch.stack([it["edge"] for it in items])         # (B, 1, H, W)
    else:
        batch["input"] = torch.stack([it["input"] for it in items])          # (B, C, H, W)
        inputs_rgb = [to_rgb(it["input"]) for it in items]
    return TestPairs(info.name, [it["name"] for it in items], batch, inputs_rgb,
                     [to_rgb(it["image"]) for it in items])


@torch.inference_mode()
def generate(checkpoint: str | Path, pairs: TestPairs, device: str = "cpu") -> tuple[list[np.ndarray], dict]:
    """Run a generator checkpoint on the pairs, one image at a time (batch 1, like inference).

    Returns (images (H, W, 3) uint8, the checkpoint's meta with "arch" and "config" added). Raises
    ValueError (CheckpointError) when the checkpoint does not fit the dataset."""
    model, meta = load_generator(checkpoint)
    model = model.to(device).eval()
    config = model.config
    x = pairs.batch.get("label", pairs.batch.get("input"))
    expected = getattr(config, "num_classes", None)
    dataset_classes = int(x.max()) + 1 if "label" in pairs.batch else x.shape[1]
    if "label" in pairs.batch and expected is not None and dataset_classes > expected:
        raise CheckpointError(f"{checkpoint} takes {expected} classes but the test labels of "
                              f"{pairs.dataset} reach class {dataset_classes - 1}: it was trained on another dataset")
    outputs = []
    for i in range(x.shape[0]):
        edges = pairs.batch["edge"][i:i + 1].to(device) if "edge" in pairs.batch else None
        out = model(x[i:i + 1].to(device), edges)                           # (1, 3, H, W) in [-1, 1]
        outputs.append(to_rgb(out[0]))
    meta = {**meta, "arch": arch_of(model), "config": config.to_dict()}
    return outputs, meta
