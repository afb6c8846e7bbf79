"""Classification metrics from softmax probabilities (NumPy only).

Predictions are ``argmax`` of the probabilities; on a tie the first class wins, as with
``np.argmax`` / Keras.  Conventions follow scikit-learn where a choice exists: a class
never predicted has precision 0; balanced accuracy averages the recall of the classes
that occur in the labels; macro-F1 averages F1 over the classes that occur in the labels
or in the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "predictions",
    "accuracy",
    "nll_loss",
    "confusion_matrix",
    "normalise_rows",
    "per_class_scores",
    "balanced_accuracy",
    "macro_f1",
    "bootstrap_accuracy_ci",
    "count_ties",
    "classification_metrics",
]

#: Keras ``categorical_crossentropy`` clips probabilities to [eps, 1 - eps].
EPSILON = 1e-7


def predictions(probs: np.ndarray) -> np.ndarray:
    """(N, C) -> (N,) int64 argmax, the first class on ties."""
    return np.asarray(probs).argmax(axis=1).astype(np.int64)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else float("nan")


def nll_loss(probs: np.ndarray, labels: np.ndarray, *, eps: float = EPSILON) -> float:
    """Mean categorical cross-entropy ``-log p[label]`` with probabilities clipped like Keras."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return float("nan")
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0 - eps)
    return float(-np.log(p).mean())


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    labels, pred = np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    flat = np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the per-class recall on the diagonal); empty rows stay 0."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def per_class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diag(counts)
    support = counts.sum(axis=1)  # true members
    predicted = counts.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    }


def balanced_accuracy(counts: np.ndarray) -> float:
    """Mean recall over the classes present in the labels."""
    scores = per_class_scores(counts)
    present = scores["support"] > 0
    return float(scores["recall"][present].mean()) if present.any() else float("nan")


def macro_f1(counts: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in the labels or the predictions."""
    scores = per_class_scores(counts)
    present = (scores["support"] > 0) | (scores["predicted"] > 0)
    return float(scores["f1"][present].mean()) if present.any() else float("nan")


def bootstrap_accuracy_ci(
    correct: np.ndarray,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    chunk: int = 10_000_000,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy from per-image correctness (N,) bool.

    Draws ``resamples`` samples of N images with replacement from one seeded generator,
    vectorised in chunks of about ``chunk`` draws.
    """
    correct = np.asarray(correct, dtype=np.float64)
    n = len(correct)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = max(1, chunk // n)
    means = []
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(k, n))  # (k, N) indices with replacement
        means.append(correct[idx].mean(axis=1))
    means = np.concatenate(means)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def count_ties(probs: np.ndarray) -> int:
    """Rows whose maximum probability is attained by more than one class."""
    probs = np.asarray(probs)
    if not len(probs):
        return 0
    top = probs.max(axis=1, keepdims=True)
    return int(((probs == top).sum(axis=1) > 1).sum())


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Every figure ``fertool evaluate`` reports, as plain JSON-ready types."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names)
    pred = predictions(probs)
    counts = confusion_matrix(labels, pred, num_classes)
    scores = per_class_scores(counts)
    lo, hi = bootstrap_accuracy_ci(pred == labels, resamples=resamples, level=level, seed=seed)
    return {
        "n": int(len(labels)),
        "accuracy": accuracy(pred, labels),
        "accuracy_ci": {"level": level, "low": lo, "high": hi, "resamples": resamples, "seed": seed},
        "loss": nll_loss(probs, labels),
        "balanced_accuracy": balanced_accuracy(counts),
        "macro_f1": macro_f1(counts),
        "ties": count_ties(probs),
        "per_class": {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion": counts.tolist(),
        "confusion_normalised": normalise_rows(counts).tolist(),
    }
