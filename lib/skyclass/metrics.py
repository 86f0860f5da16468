"""Classification metrics for the evaluation stage: confusion matrix, precision/recall/F1, ROC AUC, intervals.

The Markdown comparison table that shows them is rendered by :mod:`skyclass.report`.

Pure numpy (scikit-learn is not part of the pinned stack). Conventions, chosen to match scikit-learn's
``zero_division=0`` so numbers are comparable with the paper:

* A ratio whose denominator is zero is reported as ``0.0`` and no warning is raised: precision of a class that
  was never predicted, recall of a class with no true samples, and F1 when precision + recall == 0.
* Weighted averages weight each class by its support (number of true samples); macro averages weight every
  class equally, including classes with zero support.
* ``ci95`` holds 95% intervals of accuracy, macro F1 and each class's F1 from a bootstrap of the confusion matrix
  (the test objects resampled with replacement, as multinomial draws of its cells): on 8,409 test objects an
  accuracy of 0.989 is good to about +-0.002, so smaller differences between models say little.
* ROC AUC is one-vs-rest per class. It is undefined when the test set has no positives or no negatives of
  that class; the per-class value is then ``None`` in the metrics dict (``NaN`` from :func:`roc_auc`).

Every dict returned here is JSON-serialisable: plain ``int``/``float``/``str``/``list``/``None``, no numpy types
and no NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from skyclass.config import CLASSES

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "confusion_matrix",
    "metrics_from_confusion",
    "bootstrap_intervals",
    "mcnemar_exact_p",
    "wilson_interval",
    "roc_curve",
    "roc_auc",
]

DEFAULT_CLASS_NAMES: tuple[str, ...] = CLASSES
# Resamples behind the ``ci95`` intervals: enough for the 2.5/97.5 percentiles to be stable to ~1e-4 at n ~ 10^4.
BOOTSTRAP_RESAMPLES = 2000


def _as_label_array(values, name: str, n_classes: int) -> np.ndarray:
    """Return integer class indices in ``[0, n_classes)``; accepts Spark-style float labels such as 2.0."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got an array of shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array.dtype.kind == "f":
        # MLlib writes labels and predictions as doubles; accept them only if they are whole numbers.
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold whole-number class indices, found non-integral or NaN values")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer class indices 0..{n_classes - 1}, got dtype {array.dtype}; "
            "map class names to indices first (e.g. GALAXY=0, STAR=1, QSO=2)"
        )
    array = array.astype(np.int64)
    out_of_range = (array < 0) | (array >= n_classes)
    if np.any(out_of_range):
        bad = sorted(set(array[out_of_range].tolist()))[:5]
        raise ValueError(f"{name} has class indices {bad} outside 0..{n_classes - 1} (n_classes={n_classes})")
    return array


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator with 0.0 where the denominator is 0 (the documented convention)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Count (true class, predicted class) pairs.

    Parameters
    ----------
    y_true, y_pred : array-like of int
        Class indices in ``[0, n_classes)``, same length. Whole-number floats (MLlib output) are accepted.
    n_classes : int
        Number of classes; fixes the matrix size even if some classes never occur.

    Returns
    -------
    numpy.ndarray
        ``(n_classes, n_classes)`` int64 array; rows are true classes, columns predicted classes.

    Raises
    ------
    ValueError
        If the inputs differ in length, are not 1-D, or hold indices outside ``[0, n_classes)``.
    """
    if int(n_classes) != n_classes or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    n_classes = int(n_classes)
    true_idx = _as_label_array(y_true, "y_true", n_classes)
    pred_idx = _as_label_array(y_pred, "y_pred", n_classes)
    if true_idx.shape != pred_idx.shape:
        raise ValueError(f"y_true has {true_idx.size} labels but y_pred has {pred_idx.size}; they must pair up")
    flat = np.bincount(true_idx * n_classes + pred_idx, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def metrics_from_confusion(cm, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> dict:
    """Accuracy, per-class and averaged precision/recall/F1 from a confusion matrix alone.

    Lets the evaluation job aggregate ``(label, prediction)`` counts in Spark and compute the metrics on the
    driver from a ``k x k`` matrix, so the individual rows never have to be collected.

    Parameters
    ----------
    cm : array-like of int, shape (k, k)
        Rows are true classes, columns predicted classes (as from :func:`confusion_matrix`).
    class_names : sequence of str
        ``k`` names, in class-index order.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``precision_weighted``, ``recall_weighted``, ``f1_weighted``, ``f1_macro``,
        ``per_class`` (name -> ``precision``, ``recall``, ``f1``, ``support``), ``confusion_matrix`` (list of
        lists), ``class_names`` and ``ci95`` (see :func:`bootstrap_intervals`). Zero denominators give 0.0 (see
        the module docstring).

    Raises
    ------
    ValueError
        If ``cm`` is not square, does not match ``class_names``, holds negative or non-integer counts, or is all
        zeros (no samples to evaluate).
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    matrix = np.asarray(cm)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (k x k), got shape {matrix.shape}")
    if matrix.shape[0] != len(names):
        raise ValueError(f"confusion matrix is {matrix.shape[0]}x{matrix.shape[0]} but {len(names)} class names given")
    if matrix.dtype.kind not in "iuf" or not np.all(np.isfinite(matrix)) or np.any(matrix != np.round(matrix)):
        raise ValueError("confusion matrix must hold whole-number counts")
    if np.any(matrix < 0):
        raise ValueError("confusion matrix holds negative counts")
    matrix = matrix.astype(np.int64)
    n_total = int(matrix.sum())
    if n_total == 0:
        raise ValueError("confusion matrix is all zeros: there are no evaluated samples (is the test split empty?)")

    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)  # true samples per class
    predicted = matrix.sum(axis=0)  # predictions per class
    precision = _safe_ratio(true_positives, predicted)
    recall = _safe_ratio(true_positives, support)
    f1 = _safe_ratio(2.0 * precision * recall, precision + recall)

    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "n": n_total,
        "accuracy": float(true_positives.sum() / n_total),
        "precision_weighted": float(np.dot(support, precision) / n_total),
        "recall_weighted": float(np.dot(support, recall) / n_total),
        "f1_weighted": float(np.dot(support, f1) / n_total),
        "f1_macro": float(np.mean(f1)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": names,
        "ci95": bootstrap_intervals(matrix, names),
    }


def _f1_from_counts(matrix: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN) of one or many (..., k, k) confusion matrices (0 where undefined)."""
    true_positives = np.diagonal(matrix, axis1=-2, axis2=-1).astype(np.float64)
    denominator = matrix.sum(axis=-1) + matrix.sum(axis=-2)  # (TP + FN) + (TP + FP)
    return _safe_ratio(2.0 * true_positives, denominator.astype(np.float64))


def bootstrap_intervals(cm, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, *,
                        resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap intervals of accuracy, macro F1 and per-class F1, from a confusion matrix alone.

    Each resample draws as many test objects as the matrix holds, with replacement, i.e. a multinomial draw over
    its cells -- the same as resampling the objects, without needing them on the driver.

    Parameters
    ----------
    cm : array-like of int, shape (k, k)
    class_names : sequence of str
    resamples : int
    level : float
        Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
    seed : int
        Fixed, so a report is reproducible.

    Returns
    -------
    dict
        ``{"level", "resamples", "accuracy": [lo, hi], "f1_macro": [lo, hi], "per_class": {name: {"f1": [lo, hi]}}}``.
    """
    matrix = np.asarray(cm, dtype=np.int64)
    k = matrix.shape[0]
    n = int(matrix.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, matrix.ravel() / n, size=resamples).reshape(resamples, k, k)
    accuracy = np.trace(draws, axis1=1, axis2=2) / n
    f1 = _f1_from_counts(draws)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(values: np.ndarray) -> list[float]:
        low, high = np.percentile(values, tails)
        return [float(low), float(high)]

    return {"level": level, "resamples": resamples, "accuracy": interval(accuracy),
            "f1_macro": interval(f1.mean(axis=1)),
            "per_class": {str(name): {"f1": interval(f1[:, i])} for i, name in enumerate(class_names)}}


def wilson_interval(successes, n, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (elementwise): inside [0, 1], and not empty at 0 % or 100 %.

    Parameters
    ----------
    successes, n : array-like
        Counts; ``n`` of 0 gives the whole [0, 1].
    z : float
        1.96 for 95 %.

    Returns
    -------
    (low, high) : numpy arrays
    """
    k = np.asarray(successes, dtype=np.float64)
    total = np.asarray(n, dtype=np.float64)
    safe = np.maximum(total, 1.0)
    p = np.where(total > 0, k / safe, 0.5)
    z2 = z * z
    centre = (p + z2 / (2 * safe)) / (1 + z2 / safe)
    half = z * np.sqrt(p * (1 - p) / safe + z2 / (4 * safe ** 2)) / (1 + z2 / safe)
    low = np.where(total > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where(total > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return low, high


def mcnemar_exact_p(only_first_right: int, only_second_right: int) -> float:
    """Two-sided exact McNemar test of two classifiers scored on the same objects.

    Only the objects exactly one of the two gets right carry information: if the classifiers were equally good,
    each such object would be the first's with probability 1/2. The p-value is the two-sided binomial tail of the
    smaller count, computed in log space so that counts in the hundreds of thousands are fine.

    Parameters
    ----------
    only_first_right, only_second_right : int
        Objects only the first (second) classifier labels correctly.

    Returns
    -------
    float
        In [0, 1]; 1.0 when neither count is positive.

    Raises
    ------
    ValueError
        A negative count.
    """
    b, c = int(only_first_right), int(only_second_right)
    if b < 0 or c < 0:
        raise ValueError(f"counts of disagreements must be >= 0, got {b} and {c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    log_half_n = n * math.log(0.5)
    log_terms = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + log_half_n
                          for j in range(k + 1)])
    top = float(log_terms.max())
    tail = math.exp(top) * float(np.exp(log_terms - top).sum())
    return float(min(1.0, 2.0 * tail))


def _as_binary_inputs(y_true_binary, score) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y_true_binary)
    scores = np.asarray(score, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"y_true_binary and score must be 1-D and of equal length, got shapes {labels.shape} and {scores.shape}"
        )
    if labels.dtype.kind != "b":
        if labels.size and not np.all(np.isin(labels, (0, 1))):
            raise ValueError("y_true_binary must hold only 0/1 or True/False (use y_true == class_index)")
        labels = labels.astype(bool)
    if not np.all(np.isfinite(scores)):
        raise ValueError("score holds NaN or infinite values")
    return labels, scores


def roc_curve(y_true_binary, score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, one per distinct score, so tied scores move along a diagonal segment.

    Parameters
    ----------
    y_true_binary : array-like of bool or {0, 1}
        1 for the positive class.
    score : array-like of float
        Higher means more likely positive.

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray
        ``fpr[i]``, ``tpr[i]`` are the rates when predicting positive for ``score >= thresholds[i]``.
        Thresholds decrease; the first is ``+inf`` (point (0, 0)), the last is the lowest score (point (1, 1)).
        No intermediate points are dropped.

    Raises
    ------
    ValueError
        If the inputs are malformed, or if there are no positives or no negatives (the curve is undefined).
    """
    labels, scores = _as_binary_inputs(y_true_binary, score)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC curve needs both positives and negatives, got {n_pos} positives and {n_neg} negatives"
        )
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # The last index of each run of equal scores: all tied samples cross the threshold together.
    run_ends = np.flatnonzero(np.diff(sorted_scores)) if sorted_scores.size > 1 else np.array([], dtype=np.int64)
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    cum_tp = np.cumsum(sorted_labels)[run_ends]
    cum_fp = (run_ends + 1) - cum_tp
    tpr = np.concatenate(([0.0], cum_tp / n_pos))
    fpr = np.concatenate(([0.0], cum_fp / n_neg))
    thresholds = np.concatenate(([np.inf], sorted_scores[run_ends]))
    return fpr, tpr, thresholds


def roc_auc(y_true_binary, score) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic with mid-ranks for ties.

    Equals the probability that a random positive scores above a random negative, counting ties as 1/2, which
    is also the trapezoid area under :func:`roc_curve`. Constant scores give 0.5.

    Parameters
    ----------
    y_true_binary : array-like of bool or {0, 1}
    score : array-like of float

    Returns
    -------
    float
        AUC in ``[0, 1]``, or ``NaN`` if there are no positives or no negatives.

    Raises
    ------
    ValueError
        If the inputs are not 1-D of equal length, labels are not binary, or scores are not finite.
    """
    labels, scores = _as_binary_inputs(y_true_binary, score)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    unique_scores, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Mid-rank (1-based) of each distinct score: tied samples share the average of the ranks they span.
    rank_starts = np.cumsum(counts) - counts
    mid_ranks = rank_starts + (counts + 1) / 2.0
    rank_sum_pos = float(mid_ranks[inverse][labels].sum())
    u_statistic = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))
