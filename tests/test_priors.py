"""Class priors: Bayes re-weighting and the Saerens-Latinne-Decaestecker EM estimate against a two-class prior shift
whose answer is known exactly, in numpy and as Spark aggregations."""
from __future__ import annotations

import numpy as np
import pytest

from skyclass.priors import (PriorsError, em_priors, estimate_priors_spark, normalise_priors, resample_to_mix,
                             reweight)

# Two classes A, B and a feature x in {0, 1}: P(x=0 | A) = 0.9, P(x=0 | B) = 0.2. Under source priors (0.5, 0.5):
# P(A | x=0) = 0.45 / 0.55, P(A | x=1) = 0.05 / 0.45.
POSTERIOR_A = {0: 0.45 / 0.55, 1: 0.05 / 0.45}
SOURCE = (0.5, 0.5)


def shifted_sample(a_share: float = 0.7, n: int = 1000) -> np.ndarray:
    """Posteriors (under SOURCE) of a sample with exactly the class-conditional counts of priors (a, 1 - a).

    With A: 0.9 of them x=0, B: 0.2 of them x=0, the sample's x=0 share is 0.9 a + 0.2 (1 - a); the likelihood of
    the priors is maximal where the mixture matches it, i.e. at a itself: the EM estimate must land there.
    """
    n_a = round(a_share * n)
    n_b = n - n_a
    x0 = round(0.9 * n_a) + round(0.2 * n_b)
    x = np.array([0] * x0 + [1] * (n - x0))
    p_a = np.array([POSTERIOR_A[v] for v in x])
    return np.stack([p_a, 1 - p_a], axis=1)


def test_reweighting_is_bayes_rule():
    # P(A | x=0) under priors (0.7, 0.3): 0.9 * 0.7 / (0.9 * 0.7 + 0.2 * 0.3).
    out = reweight(np.array([[POSTERIOR_A[0], 1 - POSTERIOR_A[0]]]), SOURCE, (0.7, 0.3))
    assert out[0, 0] == pytest.approx(0.63 / 0.69)
    assert out.sum() == pytest.approx(1.0)
    # From unequal source priors (0.2, 0.8): P(A | x=0) = 0.18 / 0.34, and to (0.7, 0.3) it is again 0.63 / 0.69.
    out = reweight(np.array([[0.18 / 0.34, 0.16 / 0.34]]), (0.2, 0.8), (0.7, 0.3))
    assert out[0, 0] == pytest.approx(0.63 / 0.69)
    with pytest.raises(PriorsError, match="positive"):
        reweight(out, (0.0, 1.0), (0.5, 0.5))


@pytest.mark.parametrize("a_share", [0.7, 0.3, 0.5])
def test_em_recovers_the_shifted_prior(a_share):
    estimate, iterations = em_priors(shifted_sample(a_share), SOURCE, tol=1e-10, max_iter=5000)
    assert estimate[0] == pytest.approx(a_share, abs=1e-4)
    assert estimate.sum() == pytest.approx(1.0)
    assert iterations > 1 or a_share == 0.5


def test_spark_estimate_matches_the_known_answer_with_aggregations_only(spark):
    import pandas as pd

    proba = shifted_sample(0.7)
    frame = spark.createDataFrame(pd.DataFrame({"p_a": proba[:, 0], "p_b": proba[:, 1]})).cache()
    try:
        result = estimate_priors_spark(frame, ["p_a", "p_b"], SOURCE, tol=1e-9, max_iter=5000)
    finally:
        frame.unpersist()
    assert result["converged"]
    assert result["priors"][0] == pytest.approx(0.7, abs=1e-3)
    numpy_estimate, _ = em_priors(proba, SOURCE, tol=1e-9, max_iter=5000)
    assert result["priors"] == pytest.approx(list(numpy_estimate), abs=1e-6)


def test_resampling_reaches_the_asked_mix():
    labels = np.array([0] * 500 + [1] * 300 + [2] * 200)
    rows = resample_to_mix(labels, (0.6, 0.2, 0.2), seed=1)
    counts = np.bincount(labels[rows], minlength=3)
    # Class 0 limits the size: 500 rows of it at 60% -> 833.3 rows: all 500 of it, floor(166.67) = 166 of each other.
    assert counts.tolist() == [500, 166, 166]
    assert len(set(rows.tolist())) == len(rows)


def test_bad_priors_are_refused_with_the_key():
    assert normalise_priors({"GALAXY": 3, "STAR": 1, "QSO": 1}, ("GALAXY", "STAR", "QSO")) == (0.6, 0.2, 0.2)
    with pytest.raises(PriorsError, match="score.class_priors.*missing: QSO"):
        normalise_priors({"GALAXY": 0.5, "STAR": 0.5}, ("GALAXY", "STAR", "QSO"))
    with pytest.raises(PriorsError, match="non-negative"):
        normalise_priors({"GALAXY": -1, "STAR": 1, "QSO": 1}, ("GALAXY", "STAR", "QSO"))
