"""Segmentation scores against hand-worked confusion matrices."""

import math

import pytest
import torch

from asap.metrics.segmentation import ConfusionMatrix, confusion_matrix, mean_iou, segmentation_scores

# gt/pred pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
TARGET = torch.tensor([[0, 0, 1], [1, 2, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_hand_worked_three_classes():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = segmentation_scores(cm, ["a", "b", "c"])
    assert s["pixel_acc"] == pytest.approx(4 / 6)
    # IoU = TP / (row + col - TP): 1/(2+2-1), 2/(2+3-2), 1/(2+1-1)
    assert [c["iou"] for c in s["per_class"]] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert [c["pixel_share"] for c in s["per_class"]] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert [c["name"] for c in s["per_class"]] == ["a", "b", "c"] and s["pixels"] == 6


def test_absent_class_is_left_out_of_miou_and_ignore_index_drops_pixels():
    # a fourth class that is in neither labels nor predictions, and a "don't care" pixel (255)
    target = torch.cat([TARGET.flatten(), torch.tensor([255])])
    pred = torch.cat([PRED.flatten(), torch.tensor([3])])
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = segmentation_scores(cm)
    assert s["per_class"][3]["iou"] is None and s["per_class"][3]["pixel_share"] == 0
    assert s["miou"] == pytest.approx(0.5)


def test_class_predicted_but_absent_from_labels_counts_as_zero_iou():
    target = torch.cat([TARGET.flatten(), torch.tensor([0])])
    pred = torch.cat([PRED.flatten(), torch.tensor([3])])
    cm = confusion_matrix(pred, target, 4)
    # class 0: TP 1, row 3, col 2 -> 1/4; class 3: TP 0, union 1 -> 0
    assert mean_iou(cm) == pytest.approx((1 / 4 + 2 / 3 + 1 / 2 + 0) / 4)
    assert segmentation_scores(cm)["pixel_acc"] == pytest.approx(4 / 7)


def test_accumulation_over_batches_and_logits_equals_a_naive_count():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, 9)
    target = torch.randint(0, 5, (3, 7, 9))
    acc = ConfusionMatrix(5)
    for i in range(3):
        acc.update(logits[i:i + 1], target[i:i + 1])
    pred = logits.argmax(1)
    naive = [[0] * 5 for _ in range(5)]
    for g, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        naive[g][p] += 1
    assert acc.matrix.tolist() == naive
    s = acc.scores()
    assert s["pixel_acc"] == pytest.approx((pred == target).float().mean().item())


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError, match=r"target values \[7\] are outside 0..2"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)
    assert math.isnan(segmentation_scores(torch.zeros(3, 3, dtype=torch.int64))["miou"])
