"""Calibrated class probabilities: temperature (or vector) scaling fitted on the validation split, and the measures
that say how far a probability can be trusted (expected calibration error, multiclass Brier score, reliability
curves, share and precision above a probability threshold).

The networks end in a softmax, so what scoring sees are probabilities; their logarithms are logits up to a
per-row constant, which softmax ignores. Temperature scaling (Guo et al. 2017) divides them by one scalar T fitted
by minimising the validation log-loss: it changes no argmax, so accuracy stays what it was. Vector scaling (a
weight and a bias per class) can also move decisions; it is kept only when it lowers the log-loss on held-out
halves of the validation split by more than :data:`VECTOR_MIN_GAIN` (see :func:`fit_calibration`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

# Probabilities are clipped here before their logarithm: the same epsilon Keras uses in its cross-entropy.
PROBABILITY_EPSILON = 1e-7
ECE_BINS = 15
CONFIDENCE_THRESHOLDS = (0.9, 0.99)
# Vector scaling must lower the cross-validated log-loss by this fraction of temperature scaling's to be used.
VECTOR_MIN_GAIN = 0.01
METHODS = ("none", "temperature", "vector")


class CalibrationError(ValueError):
    """Calibration cannot be fitted or applied (empty or malformed inputs)."""


def log_probabilities(proba: np.ndarray) -> np.ndarray:
    """``log(clip(p))`` of ``(n, C)`` probabilities, float64: the logits softmax would turn back into ``p``."""
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBABILITY_EPSILON, 1.0))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, C)`` logits, numerically stable, float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits):
        raise CalibrationError(f"calibration needs (n, C) logits and n labels with n > 0; got logits of shape "
                               f"{logits.shape} and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise CalibrationError(f"labels must lie in 0..{logits.shape[1] - 1}; got {labels.min()}..{labels.max()}")
    return logits, labels


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``softmax(logits)`` against integer ``labels``."""
    logits, labels = _check(logits, labels)
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10) -> float:
    """The temperature T minimising the mean log-loss of ``softmax(logits / T)``.

    The loss is convex in the inverse temperature b = 1/T (a log-sum-exp of linear functions minus a linear term),
    so Newton's method on b converges from b = 1; each step is halved until the loss does not rise.

    Parameters
    ----------
    logits : numpy.ndarray
        ``(n, C)`` logits or log-probabilities of the validation split.
    labels : numpy.ndarray
        ``n`` integer labels.

    Returns
    -------
    float
        T > 0 (T > 1 softens over-confident probabilities).

    Raises
    ------
    CalibrationError
        Empty or malformed inputs, or every logit row constant (no temperature is identifiable).
    """
    z, y = _check(logits, labels)
    if np.allclose(z, z[:, :1]):
        raise CalibrationError("every row of the calibration logits is constant; no temperature can be fitted")
    picked = z[np.arange(len(y)), y]

    def loss(b: float) -> float:
        s = b * z
        m = s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s - m).sum(axis=1)) + m[:, 0] - b * picked))

    b = 1.0
    current = loss(b)
    for _ in range(max_iter):
        p = softmax(b * z)
        mean_z = (p * z).sum(axis=1)
        grad = float(np.mean(mean_z - picked))
        hess = float(np.mean((p * z * z).sum(axis=1) - mean_z ** 2))
        if hess <= 0:
            break
        step = grad / hess
        candidate = b - step
        # Keep b positive (T finite and > 0) and the loss non-increasing.
        while (candidate <= 0 or loss(candidate) > current) and abs(step) > 1e-12:
            step /= 2
            candidate = b - step
        new = loss(candidate)
        if abs(candidate - b) < tol or new > current:
            b = candidate if new <= current else b
            break
        b, current = candidate, new
    return 1.0 / b


def fit_vector_scaling(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 500,
                       learning_rate: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-class weight w and bias c minimising the log-loss of ``softmax(w * logits + c)`` (full-batch gradient
    descent with a backtracking step; the loss is convex in (w, c)).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``w`` and ``c``, each of length C.
    """
    z, y = _check(logits, labels)
    n, c = z.shape
    onehot = np.eye(c)[y]
    w = np.full(c, 1.0 / fit_temperature(z, y))
    bias = np.zeros(c)

    def loss(w_, b_):
        return negative_log_likelihood(z * w_ + b_, y)

    current = loss(w, bias)
    step = learning_rate
    for _ in range(iterations):
        diff = softmax(z * w + bias) - onehot
        gw, gb = (diff * z).mean(axis=0), diff.mean(axis=0)
        while step > 1e-8:
            nw, nb = w - step * gw, bias - step * gb
            new = loss(nw, nb)
            if new <= current:
                break
            step /= 2
        else:
            break
        if current - new < 1e-12:
            w, bias, current = nw, nb, new
            break
        w, bias, current = nw, nb, new
        step *= 1.5
    return w, bias


@dataclass(frozen=True)
class Calibration:
    """How one model's probabilities are calibrated; stored in the package's metadata (:meth:`to_dict`).

    ``source_priors`` is the class mix of the split it was fitted on (the validation split): calibrated
    probabilities are posteriors under that mix, which :mod:`skyclass.priors` re-weights to another one.
    """

    method: str = "none"
    temperature: float = 1.0
    weights: Optional[tuple[float, ...]] = None
    bias: Optional[tuple[float, ...]] = None
    source_priors: Optional[tuple[float, ...]] = None
    fitted_on: Mapping = field(default_factory=dict)  # rows, log-loss/ECE before and after

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated ``(n, C)`` probabilities (float32) from the model's ``proba``."""
        proba = np.asarray(proba)
        if self.method == "none" or len(proba) == 0:
            return proba.astype(np.float32, copy=False)
        z = log_probabilities(proba)
        if self.method == "temperature":
            z = z / self.temperature
        else:
            z = z * np.asarray(self.weights) + np.asarray(self.bias)
        return softmax(z).astype(np.float32)

    def to_dict(self) -> dict:
        return {"method": self.method, "temperature": float(self.temperature),
                "weights": list(self.weights) if self.weights is not None else None,
                "bias": list(self.bias) if self.bias is not None else None,
                "source_priors": list(self.source_priors) if self.source_priors is not None else None,
                "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_dict(cls, data: Optional[Mapping]) -> "Calibration":
        """The calibration stored by :meth:`to_dict`; None (a package from before calibration) gives ``none``.

        Raises
        ------
        CalibrationError
            An unknown method or missing parameters.
        """
        if not data:
            return cls()
        method = data.get("method", "none")
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r} in the package (known: {METHODS})")
        if method == "vector" and (data.get("weights") is None or data.get("bias") is None):
            raise CalibrationError("a vector calibration without weights or bias; retrain the package")
        tup = (lambda v: tuple(float(x) for x in v) if v is not None else None)
        return cls(method=method, temperature=float(data.get("temperature", 1.0)), weights=tup(data.get("weights")),
                   bias=tup(data.get("bias")), source_priors=tup(data.get("source_priors")),
                   fitted_on=dict(data.get("fitted_on") or {}))


def fit_calibration(proba: np.ndarray, labels: np.ndarray, n_classes: int, *, allow_vector: bool = True,
                    seed: int = 0) -> Calibration:
    """Fit temperature scaling on validation probabilities, and vector scaling if it measurably helps.

    Vector scaling is chosen only when, fitted on one random half and measured on the other (both ways), it lowers
    the mean log-loss below temperature scaling's by more than :data:`VECTOR_MIN_GAIN` of it; the chosen method is
    then refitted on all rows.

    Parameters
    ----------
    proba : numpy.ndarray
        ``(n, C)`` probabilities of the model on the validation split.
    labels : numpy.ndarray
        ``n`` integer labels.
    n_classes : int
    allow_vector : bool
    seed : int
        For the halves.

    Returns
    -------
    Calibration

    Raises
    ------
    CalibrationError
        No rows, or labels outside the classes.
    """
    z, y = _check(log_probabilities(proba), labels)
    temperature = fit_temperature(z, y)
    method, weights, bias = "temperature", None, None
    cv = {}
    if allow_vector and len(y) >= 200:
        order = np.random.default_rng(seed).permutation(len(y))
        halves = (order[: len(y) // 2], order[len(y) // 2:])
        t_loss = v_loss = 0.0
        for fit_rows, test_rows in (halves, halves[::-1]):
            t = fit_temperature(z[fit_rows], y[fit_rows])
            w, b = fit_vector_scaling(z[fit_rows], y[fit_rows])
            t_loss += negative_log_likelihood(z[test_rows] / t, y[test_rows]) / 2
            v_loss += negative_log_likelihood(z[test_rows] * w + b, y[test_rows]) / 2
        cv = {"cv_log_loss_temperature": t_loss, "cv_log_loss_vector": v_loss}
        if v_loss < t_loss * (1 - VECTOR_MIN_GAIN):
            method = "vector"
            w, b = fit_vector_scaling(z, y)
            weights, bias = tuple(float(v) for v in w), tuple(float(v) for v in b)
    priors = np.bincount(y, minlength=n_classes) / len(y)
    calibration = Calibration(method=method, temperature=float(temperature), weights=weights, bias=bias,
                              source_priors=tuple(float(p) for p in priors))
    after = calibration.apply(proba)
    fitted_on = {"rows": int(len(y)), "log_loss_before": negative_log_likelihood(z, y),
                 "log_loss_after": negative_log_likelihood(log_probabilities(after), y),
                 "ece_before": expected_calibration_error(proba, y),
                 "ece_after": expected_calibration_error(after, y), **cv}
    calibration = Calibration(method=method, temperature=float(temperature), weights=weights, bias=bias,
                              source_priors=calibration.source_priors, fitted_on=fitted_on)
    log.info("calibration: %s (T = %.4f) on %d validation rows; log-loss %.4f -> %.4f, ECE %.4f -> %.4f", method,
             temperature, len(y), fitted_on["log_loss_before"], fitted_on["log_loss_after"],
             fitted_on["ece_before"], fitted_on["ece_after"])
    return calibration


# ---------------------------------------------------------------------------------------------------------------
# Measures.

def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: over ``bins`` equal-width bins of the top probability, the row-weighted mean |accuracy − confidence|.

    A top probability of exactly 1.0 falls in the last bin; bins are (k/B, (k+1)/B].
    """
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    if len(proba) == 0:
        return float("nan")
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for k in range(bins):
        in_bin = index == k
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total / len(proba))


def brier_score(proba: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over rows of the squared distance between ``p`` and the one-hot label."""
    proba = np.asarray(proba, dtype=np.float64)
    if len(proba) == 0:
        return float("nan")
    onehot = np.eye(proba.shape[1])[np.asarray(labels, dtype=np.int64)]
    return float(np.mean(((proba - onehot) ** 2).sum(axis=1)))


def reliability_curve(proba: np.ndarray, labels: np.ndarray, class_index: int, bins: int = ECE_BINS) -> list[dict]:
    """One class's reliability diagram: per equal-width bin of p(class), the mean p and the observed frequency.

    Returns
    -------
    list of dict
        Non-empty bins: ``{"lo", "hi", "n", "mean_p", "frequency"}``.
    """
    p = np.asarray(proba, dtype=np.float64)[:, class_index]
    hit = np.asarray(labels) == class_index
    index = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    out = []
    for k in range(bins):
        in_bin = index == k
        if in_bin.any():
            out.append({"lo": k / bins, "hi": (k + 1) / bins, "n": int(in_bin.sum()),
                        "mean_p": float(p[in_bin].mean()), "frequency": float(hit[in_bin].mean())})
    return out


def confidence_table(proba: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS) -> dict:
    """Per class and threshold t: the share of the objects predicted as that class with p(class) > t, and the
    precision of those (the fraction whose label is that class) -- Clarke et al. 2020's table.

    Returns
    -------
    dict
        ``{class: {"predicted": n, "p>0.9": {"share", "n", "precision"}, ...}}``; precision is None for none kept.
    """
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    predicted = proba.argmax(axis=1)
    out = {}
    for c, name in enumerate(class_names):
        as_class = predicted == c
        row = {"predicted": int(as_class.sum())}
        for t in thresholds:
            kept = as_class & (proba[:, c] > t)
            row[f"p>{t:g}"] = {"n": int(kept.sum()),
                               "share": float(kept.sum() / as_class.sum()) if as_class.any() else None,
                               "precision": float((labels[kept] == c).mean()) if kept.any() else None}
        out[name] = row
    return out


def calibration_summary(proba: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """ECE, Brier score, log-loss, accuracy, reliability curves and the confidence table of one set of
    probabilities (the report's before/after entries)."""
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return {"rows": int(len(labels)), "ece": expected_calibration_error(proba, labels),
            "brier": brier_score(proba, labels),
            "log_loss": negative_log_likelihood(log_probabilities(proba), labels) if len(labels) else None,
            "accuracy": float((proba.argmax(axis=1) == labels).mean()) if len(labels) else None,
            "reliability": {name: reliability_curve(proba, labels, c) for c, name in enumerate(class_names)},
            "confidence": confidence_table(proba, labels, class_names)}


def fit_package_calibration(main: Mapping, tabular: Mapping, classes: Sequence[str]) -> dict:
    """The ``calibration`` entry of a package's metadata: one calibration per model, fitted on that model's
    validation probabilities (``phase["calibration_inputs"]`` as returned by training's rank 0).

    A model without validation rows gets ``none`` (logged) rather than failing the training run.
    """
    out = {}
    for which, phase in (("main", main), ("tabular", tabular)):
        if which == "tabular" and tabular is main:  # a tabular package: one model, one fit
            out[which] = out["main"]
            continue
        inputs = phase.get("calibration_inputs") or {}
        proba, labels = inputs.get("proba"), inputs.get("labels")
        if proba is None or len(proba) == 0:
            log.warning("no validation probabilities for the %s model: it is stored uncalibrated", which)
            out[which] = Calibration().to_dict()
            continue
        out[which] = fit_calibration(np.asarray(proba), np.asarray(labels), len(classes)).to_dict()
    return out


def adjust_probabilities(proba: np.ndarray, main_rows: Optional[np.ndarray], calibrations: Optional[Mapping],
                         target_priors: Optional[Sequence[float]] = None) -> np.ndarray:
    """What scoring and evaluation do with a batch's model probabilities: calibrate each row with the calibration
    of the model that scored it, then, when ``target_priors`` is given, re-weight from the calibration's source
    priors to them (:func:`skyclass.priors.reweight`).

    Parameters
    ----------
    proba : numpy.ndarray
        ``(n, C)`` model probabilities.
    main_rows : numpy.ndarray or None
        Boolean per row: scored by the main model (else by the tabular fallback); None = all by the main model.
    calibrations : mapping or None
        The package's metadata ``calibration`` entry (``{"main": ..., "tabular": ...}``); None = uncalibrated.
    target_priors : sequence of float, optional

    Returns
    -------
    numpy.ndarray
        ``(n, C)`` float32.
    """
    from skyclass.priors import reweight

    calibrations = calibrations or {}
    out = np.asarray(proba, dtype=np.float32).copy()
    main_rows = np.ones(len(out), dtype=bool) if main_rows is None else np.asarray(main_rows, dtype=bool)
    for which, rows in (("main", main_rows), ("tabular", ~main_rows)):
        if not rows.any():
            continue
        calibration = Calibration.from_dict(calibrations.get(which) or calibrations.get("main"))
        out[rows] = calibration.apply(out[rows])
        if target_priors is not None and calibration.source_priors is not None:
            out[rows] = reweight(out[rows], calibration.source_priors, target_priors).astype(np.float32)
    return out


# The evaluation's "another mix" for the prior-shift check when score.class_priors gives none (the example).
EVALUATION_MIX = {"GALAXY": 0.6, "STAR": 0.2, "QSO": 0.2}
FAINT_R_MAG = 20.0


def trust_summary(labels: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, domain: Optional[np.ndarray],
                  r: Optional[np.ndarray], class_names: Sequence[str], *, source_priors: Optional[Sequence[float]],
                  target_mix: Optional[Mapping[str, float]] = None, seed: int = 0) -> dict:
    """The evaluation report's trust section for one model on a labelled split (numpy, on the driver).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels.
    raw, calibrated : numpy.ndarray
        ``(n, C)`` probabilities before and after calibration.
    domain : numpy.ndarray or None
        The ``domain`` value per row (None: the package has no domain reference).
    r : numpy.ndarray or None
        r magnitudes, for the faint slice (r > :data:`FAINT_R_MAG`).
    class_names : sequence of str
    source_priors : sequence of float or None
        The calibration's validation mix (None: no prior-shift section).
    target_mix : mapping, optional
        The mix the split is resampled to; default :data:`EVALUATION_MIX`.
    seed : int

    Returns
    -------
    dict
        ``before``/``after`` (:func:`calibration_summary`), ``domain`` (whole split and ``faint`` slice, see
        :func:`skyclass.domain.domain_accuracy`) and ``priors`` (accuracy, log-loss, Brier on the resampled split
        without re-weighting, with the true mix, with the EM estimate; the estimate itself).
    """
    from skyclass.domain import domain_accuracy
    from skyclass.priors import em_priors, normalise_priors, resample_to_mix, reweight

    labels = np.asarray(labels, dtype=np.int64)
    out = {"before": calibration_summary(raw, labels, class_names),
           "after": calibration_summary(calibrated, labels, class_names)}
    correct = np.asarray(calibrated).argmax(axis=1) == labels
    if domain is not None:
        faint = np.asarray(r, dtype=np.float64) > FAINT_R_MAG if r is not None else np.zeros(len(labels), bool)
        out["domain"] = {"all": domain_accuracy(domain, correct),
                         "faint": {**domain_accuracy(np.asarray(domain)[faint], correct[faint]),
                                   "r_min": FAINT_R_MAG}}
    if source_priors is not None:
        mix = normalise_priors(target_mix or EVALUATION_MIX, class_names, "evaluation target mix")
        rows = resample_to_mix(labels, mix, seed=seed)
        if len(rows):
            y, p = labels[rows], np.asarray(calibrated, dtype=np.float64)[rows]
            estimate, iterations = em_priors(p, source_priors)

            def measures(q):
                return {"accuracy": float((q.argmax(axis=1) == y).mean()),
                        "log_loss": negative_log_likelihood(log_probabilities(q), y), "brier": brier_score(q, y)}

            out["priors"] = {"mix": dict(zip(class_names, mix)), "rows": int(len(rows)),
                             "source_priors": dict(zip(class_names, map(float, source_priors))),
                             "unweighted": measures(p), "true_mix": measures(reweight(p, source_priors, mix)),
                             "estimated": measures(reweight(p, source_priors, estimate)),
                             "estimate": dict(zip(class_names, map(float, estimate))), "em_iterations": iterations}
    return out
