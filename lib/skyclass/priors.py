"""Target class priors: re-weight calibrated probabilities from the mix the model was calibrated on to another.

Bayes' rule with unchanged class-conditional densities (the "prior shift" assumption) gives, for source priors s
and target priors t, ``p_t(c | x) ∝ p_s(c | x) · t_c / s_c``. The source priors are the class mix of the
validation split the calibration was fitted on (:attr:`skyclass.calibration.Calibration.source_priors`), not the
training split's (class weights in training change what the network's raw outputs assume, calibration on the
validation split undoes that).

``score.class_priors: estimate`` estimates t from the night's catalog itself with the EM algorithm of Saerens,
Latinne & Decaestecker (2002, Neural Computation 14, 21): start at t = s, re-weight every object's posterior with
t, set t to the mean re-weighted posterior, repeat until t moves less than ``tol``. On Spark each iteration is one
aggregation returning C numbers (:func:`estimate_priors_spark`); no row reaches the driver.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

ESTIMATE = "estimate"
EM_TOL = 1e-6
EM_MAX_ITER = 200


class PriorsError(ValueError):
    """Priors that cannot be used: missing classes, negative or all-zero weights."""


def normalise_priors(priors: Mapping[str, float], classes: Sequence[str], where: str = "score.class_priors"
                     ) -> tuple[float, ...]:
    """Priors in ``classes`` order, summing to 1.

    Raises
    ------
    PriorsError
        A class is missing or unknown, a value is negative or not a number, or all are zero.
    """
    unknown = sorted(set(priors) - set(classes))
    missing = [c for c in classes if c not in priors]
    if unknown or missing:
        raise PriorsError(f"{where} must give a prior for each of {', '.join(classes)} (missing: "
                          f"{', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'}), e.g. "
                          "{GALAXY: 0.6, STAR: 0.2, QSO: 0.2}, or say `estimate`")
    try:
        values = np.array([float(priors[c]) for c in classes])
    except (TypeError, ValueError):
        raise PriorsError(f"{where} values must be numbers, got {dict(priors)}") from None
    if (values < 0).any() or not np.isfinite(values).all() or values.sum() <= 0:
        raise PriorsError(f"{where} values must be non-negative with a positive sum, got {dict(priors)}")
    return tuple(float(v) for v in values / values.sum())


def reweight(proba: np.ndarray, source: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Posteriors under ``target`` priors from posteriors ``proba`` (n, C) under ``source`` priors.

    Raises
    ------
    PriorsError
        A source prior is zero (its class's posteriors carry no information to re-weight).
    """
    source = np.asarray(source, dtype=np.float64)
    if (source <= 0).any():
        raise PriorsError(f"source priors must be positive, got {source.tolist()}")
    weighted = np.asarray(proba, dtype=np.float64) * (np.asarray(target, dtype=np.float64) / source)
    total = weighted.sum(axis=1, keepdims=True)
    return np.divide(weighted, total, out=np.zeros_like(weighted), where=total > 0)


def em_priors(proba: np.ndarray, source: Sequence[float], *, tol: float = EM_TOL,
              max_iter: int = EM_MAX_ITER) -> tuple[np.ndarray, int]:
    """Saerens-Latinne-Decaestecker EM estimate of the class priors of the rows of ``proba`` (numpy twin of
    :func:`estimate_priors_spark`).

    Returns
    -------
    (numpy.ndarray, int)
        The estimated priors and the iterations used.
    """
    target = np.asarray(source, dtype=np.float64)
    for iteration in range(1, max_iter + 1):
        new = reweight(proba, source, target).mean(axis=0)
        if np.abs(new - target).max() < tol:
            return new, iteration
        target = new
    return target, max_iter


def reweight_columns(columns: Sequence[str], source: Sequence[float], target: Sequence[float]) -> list:
    """Spark Columns: the probability ``columns`` (in class order) re-weighted from ``source`` to ``target``."""
    from pyspark.sql import functions as F

    ratios = [float(t) / float(s) for s, t in zip(source, target)]
    weighted = [F.col(c) * F.lit(r) for c, r in zip(columns, ratios)]
    total = weighted[0]
    for w in weighted[1:]:
        total = total + w
    return [F.when(total > 0, w / total) for w in weighted]


def estimate_priors_spark(frame, columns: Sequence[str], source: Sequence[float], *, tol: float = EM_TOL,
                          max_iter: int = EM_MAX_ITER) -> dict:
    """EM prior estimate over a Spark DataFrame of posteriors, one aggregation per iteration.

    Parameters
    ----------
    frame : pyspark.sql.DataFrame
        Rows to estimate over (cache it: every iteration reads it); null probabilities are skipped by ``avg``.
    columns : sequence of str
        Probability columns in the order of ``source``.
    source : sequence of float
        Priors the posteriors are calibrated for.
    tol, max_iter : float, int

    Returns
    -------
    dict
        ``priors`` (list, class order), ``iterations``, ``converged``.

    Raises
    ------
    PriorsError
        ``frame`` has no rows with probabilities.
    """
    from pyspark.sql import functions as F

    target = [float(s) for s in source]
    for iteration in range(1, max_iter + 1):
        row = frame.agg(*(F.avg(c).alias(f"m{k}") for k, c in enumerate(reweight_columns(columns, source, target)))
                        ).collect()[0]
        if row["m0"] is None:
            raise PriorsError("no rows with probabilities to estimate class priors from")
        new = [float(row[f"m{k}"]) for k in range(len(columns))]
        if max(abs(a - b) for a, b in zip(new, target)) < tol:
            return {"priors": new, "iterations": iteration, "converged": True}
        target = new
    log.warning("prior estimate did not converge in %d iterations; using the last estimate %s", max_iter, target)
    return {"priors": target, "iterations": max_iter, "converged": False}


def resolve_target(setting, classes: Sequence[str]) -> Optional[tuple[float, ...]]:
    """``score.class_priors`` as priors in class order; None for no re-weighting or for ``estimate``."""
    if setting is None or setting == ESTIMATE:
        return None
    return normalise_priors(setting, classes)


def resample_to_mix(labels: np.ndarray, target: Sequence[float], *, seed: int = 0) -> np.ndarray:
    """Row indices of a subsample of ``labels`` whose class mix is ``target``, as large as the data allow
    (without replacement): the evaluation's "test split resampled to another mix"."""
    labels = np.asarray(labels)
    target = np.asarray(target, dtype=np.float64)
    counts = np.bincount(labels, minlength=len(target))
    with np.errstate(divide="ignore"):
        size = np.min(np.where(target > 0, counts / target, np.inf))
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), int(np.floor(size * t)), replace=False)
              for c, t in enumerate(target) if t > 0]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
