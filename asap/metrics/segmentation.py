"""Segmentation scores of generated images (Sec. 4.1: pixel accuracy and mIoU of a segmenter's output).

The confusion matrix is indexed [ground truth, prediction]. mIoU averages the IoU of the classes whose
union (GT or predicted pixels) is non-empty, as the usual nan-mean over classes present: a class that
is absent from both the labels and the predictions has no IoU and does not count. The per-class pixel
share (fraction of ground-truth pixels in each class) is what the paper's Fig. 11 plots IoU against.
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """(..., H, W) predicted and true class indices -> (num_classes, num_classes) int64 counts [gt, pred].

    Pixels whose target equals ``ignore_index`` are left out. Any other target or prediction outside
    0..num_classes-1 is an error (it would silently land in another class's cell otherwise).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, t in (("target", target), ("prediction", pred)):
        bad = (t < 0) | (t >= num_classes)
        if bad.any():
            values = sorted(t[bad].unique().tolist())[:10]
            raise ValueError(f"{name} values {values} are outside 0..{num_classes - 1}"
                             + ("" if name == "prediction" or ignore_index is not None
                                else " (pass ignore_index for a 'don't care' label)"))
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches: ``update(pred, target)`` then ``scores()``."""

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        """``pred`` is class indices (B, H, W) or logits (B, C, H, W) (argmax over C is taken)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        return self

    def scores(self, class_names: list[str] | None = None) -> dict:
        return segmentation_scores(self.matrix, class_names)


def iou_per_class(matrix: torch.Tensor) -> list[float]:
    """IoU = TP / (TP + FP + FN) per class; nan where the class is in neither labels nor predictions."""
    m = matrix.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    return [float(t / u) if u > 0 else math.nan for t, u in zip(tp.tolist(), union.tolist())]


def pixel_share(matrix: torch.Tensor) -> list[float]:
    """Fraction of ground-truth pixels in each class (Fig. 11's x axis)."""
    gt = matrix.double().sum(1)
    total = float(gt.sum())
    return [float(g / total) if total > 0 else math.nan for g in gt.tolist()]


def pixel_accuracy(matrix: torch.Tensor) -> float:
    total = float(matrix.sum())
    return float(matrix.diag().sum()) / total if total > 0 else math.nan


def mean_iou(matrix: torch.Tensor) -> float:
    """Mean of the per-class IoU over classes present (union > 0)."""
    present = [v for v in iou_per_class(matrix) if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def segmentation_scores(matrix: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """{"pixel_acc", "miou", "per_class": [{"class", "name", "iou", "pixel_share"}, ...], "pixels"}.

    IoU of an absent class is None (JSON null), not nan, so the metrics files stay valid JSON.
    """
    n = matrix.shape[0]
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}-class confusion matrix")
    ious, shares = iou_per_class(matrix), pixel_share(matrix)
    per_class = [{"class": c, "name": class_names[c] if class_names else str(c),
                  "iou": None if math.isnan(ious[c]) else ious[c], "pixel_share": shares[c]}
                 for c in range(n)]
    return {"pixel_acc": pixel_accuracy(matrix), "miou": mean_iou(matrix), "per_class": per_class,
            "pixels": int(matrix.sum())}
