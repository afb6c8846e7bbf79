"""Metrics against small hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fertool.evaluation import metrics as M

# labels / predictions of 6 images, 3 classes; confusion (row = true):
#   [[2, 1, 0],
#    [0, 1, 1],
#    [0, 0, 1]]
LABELS = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])


def _probs_for(pred, labels, p_true):
    """Rows whose argmax is ``pred`` and whose probability of the label is ``p_true``."""
    rows = []
    for p, y, q in zip(pred, labels, p_true):
        row = np.zeros(3)
        if p == y:
            row[y] = q
            others = [c for c in range(3) if c != y]
            row[others] = (1 - q) / 2
        else:
            row[y] = q
            row[p] = 1 - q - 0.01
            row[[c for c in range(3) if c not in (p, y)]] = 0.01
        rows.append(row)
    return np.array(rows)


def test_confusion_and_per_class_scores():
    counts = M.confusion_matrix(LABELS, PRED, 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    s = M.per_class_scores(counts)
    np.testing.assert_allclose(s["precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(s["recall"], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(s["f1"], [0.8, 0.5, 2 / 3])
    np.testing.assert_array_equal(s["support"], [3, 2, 1])
    assert M.balanced_accuracy(counts) == pytest.approx(13 / 18)
    assert M.macro_f1(counts) == pytest.approx(59 / 90)
    np.testing.assert_allclose(M.normalise_rows(counts), [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]])


def test_absent_classes():
    # class 2 never occurs and is never predicted; class 1 is never predicted
    labels, pred = np.array([0, 0, 1]), np.array([0, 0, 0])
    counts = M.confusion_matrix(labels, pred, 3)
    s = M.per_class_scores(counts)
    np.testing.assert_allclose(s["precision"], [2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(s["recall"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(M.normalise_rows(counts)[2], [0, 0, 0])
    assert M.balanced_accuracy(counts) == pytest.approx(0.5)  # classes 0 and 1 only
    assert M.macro_f1(counts) == pytest.approx((0.8 + 0.0) / 2)  # F1(0) = 2*(2/3)/(5/3)


def test_loss_accuracy_and_ties():
    probs = _probs_for(PRED, LABELS, [0.5, 0.8, 0.25, 0.6, 0.4, 0.9])
    assert (M.predictions(probs) == PRED).all()
    assert M.accuracy(M.predictions(probs), LABELS) == pytest.approx(4 / 6)
    expected = -(math.log(0.5) + math.log(0.8) + math.log(0.25) + math.log(0.6) + math.log(0.4) + math.log(0.9)) / 6
    assert M.nll_loss(probs, LABELS) == pytest.approx(expected)
    # a zero probability is clipped to 1e-7 (Keras)
    assert M.nll_loss(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-7))
    tied = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5], [0.4, 0.2, 0.4]], dtype=np.float32)
    assert M.count_ties(tied) == 3
    assert M.predictions(tied).tolist() == [0, 0, 2, 0]  # first class wins a tie


def test_bootstrap_interval():
    assert M.bootstrap_accuracy_ci(np.ones(50, bool)) == (1.0, 1.0)
    rng = np.random.default_rng(5)
    correct = rng.random(1000) < 0.7
    acc = correct.mean()
    lo, hi = M.bootstrap_accuracy_ci(correct, resamples=2000, seed=3)
    assert lo < acc < hi
    normal_half_width = 1.96 * math.sqrt(acc * (1 - acc) / 1000)  # ~0.028
    assert (hi - lo) / 2 == pytest.approx(normal_half_width, rel=0.15)
    assert M.bootstrap_accuracy_ci(correct, resamples=2000, seed=3) == (lo, hi)  # seeded
    # chunking does not change the draws' distribution or the seed's meaning
    assert M.bootstrap_accuracy_ci(correct, resamples=2000, seed=3, chunk=100_000)[0] == pytest.approx(lo, abs=0.01)


def test_classification_metrics_bundle():
    probs = _probs_for(PRED, LABELS, [0.5, 0.8, 0.25, 0.6, 0.4, 0.9])
    out = M.classification_metrics(probs, LABELS, class_names=["a", "b", "c"], resamples=200)
    assert out["n"] == 6
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["balanced_accuracy"] == pytest.approx(13 / 18)
    assert out["macro_f1"] == pytest.approx(59 / 90)
    assert out["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert out["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert out["ties"] == 0
    assert out["accuracy_ci"]["low"] <= 4 / 6 <= out["accuracy_ci"]["high"]
