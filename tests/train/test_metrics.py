import numpy as np
import pytest

from trajreg.train.metrics import accuracy, confusion_matrix, mean_iou


@pytest.mark.parametrize("seed", range(5))
def test_metrics_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 4
    target = rng.integers(0, k, size=(6, 5, 5))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k, target.shape))
    m = confusion_matrix(pred, target, k)
    assert m.sum() == target.size
    assert accuracy(m) == pytest.approx(np.mean(pred == target))
    ious = []
    for c in range(k):
        inter = np.sum((pred == c) & (target == c))
        union = np.sum((pred == c) | (target == c))
        if union:
            ious.append(inter / union)
    assert mean_iou(m) == pytest.approx(np.mean(ious))


def test_absent_classes_are_left_out_and_size_mismatch():
    m = confusion_matrix([0, 0, 2], [0, 0, 2], 4)
    assert mean_iou(m) == 1.0 and accuracy(m) == 1.0
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix([0, 1], [0], 2)
