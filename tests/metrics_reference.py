"""All metrics of one model from its labels, predictions and scores, in numpy: the reference the Spark-side
metrics (baselines, evaluate) are compared against. Only tests need it, so it lives here, not in the library."""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from skyclass.metrics import (DEFAULT_CLASS_NAMES, _as_label_array, confusion_matrix, metrics_from_confusion,
                              roc_auc)

logger = logging.getLogger(__name__)


def _as_proba_array(proba, n_samples: int, n_classes: int) -> np.ndarray:
    scores = np.asarray(proba, dtype=np.float64)
    if scores.shape != (n_samples, n_classes):
        raise ValueError(
            f"proba must have shape (n_samples, n_classes) = ({n_samples}, {n_classes}), got {scores.shape}; "
            "pass the model's softmax output / MLlib 'probability' vectors in class-index order"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("proba holds NaN or infinite scores")
    return scores


def classification_metrics(y_true, y_pred, proba=None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> dict:
    """All evaluation metrics for one model on one test set.

    Parameters
    ----------
    y_true, y_pred : array-like of int
        True and predicted class indices (index ``i`` means ``class_names[i]``).
    proba : array-like of float, shape (n_samples, n_classes), optional
        Class scores (e.g. softmax output). When given, per-class one-vs-rest ROC AUC and its macro average are
        added.
    class_names : sequence of str
        Class names in index order; their count fixes the number of classes.

    Returns
    -------
    dict
        Everything :func:`metrics_from_confusion` returns, plus, if ``proba`` is given, ``per_class[name]
        ["roc_auc"]`` and ``roc_auc_ovr_macro``. A per-class AUC is ``None`` if the test set lacks positives or
        negatives of that class; the macro average is taken over the classes where it is defined (``None`` if
        none). JSON-serialisable.

    Raises
    ------
    ValueError
        On mismatched lengths, out-of-range labels, a ``proba`` of the wrong shape or non-finite scores, or an
        empty test set.
    """
    names = [str(name) for name in class_names]
    cm = confusion_matrix(y_true, y_pred, len(names))
    result = metrics_from_confusion(cm, names)
    if proba is None:
        return result

    true_idx = _as_label_array(y_true, "y_true", len(names))
    scores = _as_proba_array(proba, true_idx.size, len(names))
    defined_aucs = []
    for i, name in enumerate(names):
        auc = roc_auc(true_idx == i, scores[:, i])
        if math.isnan(auc):
            logger.warning("ROC AUC for class %s is undefined: the test set has only one side of %s-vs-rest", name, name)
            result["per_class"][name]["roc_auc"] = None
        else:
            result["per_class"][name]["roc_auc"] = auc
            defined_aucs.append(auc)
    result["roc_auc_ovr_macro"] = float(np.mean(defined_aucs)) if defined_aucs else None
    return result


