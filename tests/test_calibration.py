"""Calibration: temperature scaling against a logit set whose optimal temperature is known in closed form, the
measures (ECE, Brier, reliability, confidence table) against hand-counted values, and per-model application."""
from __future__ import annotations

import math

import numpy as np
import pytest

from skyclass.calibration import (Calibration, CalibrationError, adjust_probabilities, brier_score,
                                  confidence_table, expected_calibration_error, fit_calibration, fit_temperature,
                                  reliability_curve, softmax, trust_summary)


def known_temperature_set(logit: float = 4.0, right: int = 800, wrong: int = 200):
    """Every row has logits (L, 0, 0); ``right`` rows are class 0, the others split over classes 1 and 2.

    The log-loss of softmax(z / T) is then that of one probability p0 = e^(L/T) / (e^(L/T) + 2) for all rows, which
    is minimal at p0 = right / (right + wrong); so e^(L/T) = 2 f / (1 - f) and T = L / ln(2 f / (1 - f)).
    """
    logits = np.tile([logit, 0.0, 0.0], (right + wrong, 1))
    labels = np.array([0] * right + [1] * (wrong // 2) + [2] * (wrong - wrong // 2))
    f = right / (right + wrong)
    return logits, labels, logit / math.log(2 * f / (1 - f))


def test_temperature_is_the_closed_form_optimum():
    logits, labels, expected = known_temperature_set()
    assert expected == pytest.approx(1.9236, abs=1e-4)  # 4 / ln 8
    assert fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-6)


def test_an_under_confident_set_gets_a_temperature_below_one():
    logits, labels, expected = known_temperature_set(logit=1.0, right=950, wrong=50)
    assert expected < 1
    assert fit_temperature(logits, labels) == pytest.approx(expected, rel=1e-6)


def test_temperature_from_probabilities_gives_the_same_optimum():
    # Calibration is fitted on the networks' softmax outputs: their logarithms differ from the logits by a per-row
    # constant, which softmax ignores.
    logits, labels, expected = known_temperature_set()
    calibration = fit_calibration(softmax(logits), labels, 3, allow_vector=False)
    assert calibration.method == "temperature"
    assert calibration.temperature == pytest.approx(expected, rel=1e-5)
    after = calibration.apply(softmax(logits))
    np.testing.assert_allclose(after[:, 0], 0.8, atol=1e-5)
    assert calibration.source_priors == pytest.approx((0.8, 0.1, 0.1))


def test_constant_logits_are_refused():
    with pytest.raises(CalibrationError, match="constant"):
        fit_temperature(np.zeros((10, 3)), np.zeros(10, int))
    with pytest.raises(CalibrationError, match="labels"):
        fit_temperature(np.ones((2, 3)), np.array([0, 3]))


def test_ece_and_brier_by_hand():
    proba = np.array([[0.95, 0.05, 0.0],   # top 0.95, right
                      [0.95, 0.0, 0.05],   # top 0.95, wrong (label 2)
                      [0.1, 0.5, 0.4],     # top 0.5, right
                      [0.3, 0.3, 0.4]])    # top 0.4, right
    labels = np.array([0, 2, 1, 2])
    # Bins of width 1/15: 0.95 -> bin 14 (accuracy 0.5, confidence 0.95), 0.5 -> bin 7, 0.4 -> bin 5.
    expected_ece = (2 * abs(0.5 - 0.95) + abs(1 - 0.5) + abs(1 - 0.4)) / 4
    assert expected_calibration_error(proba, labels) == pytest.approx(expected_ece)
    expected_brier = np.mean([0.05 ** 2 + 0.05 ** 2, 0.95 ** 2 + 0.95 ** 2, 0.1 ** 2 + 0.5 ** 2 + 0.4 ** 2,
                              0.3 ** 2 + 0.3 ** 2 + 0.6 ** 2])
    assert brier_score(proba, labels) == pytest.approx(expected_brier)


def test_reliability_curve_and_confidence_table_by_hand():
    proba = np.array([[0.995, 0.005, 0.0], [0.93, 0.07, 0.0], [0.92, 0.08, 0.0], [0.6, 0.4, 0.0],
                      [0.1, 0.9, 0.0]])
    labels = np.array([0, 0, 1, 0, 1])
    curve = {round(b["lo"] * 15): b for b in reliability_curve(proba, labels, 0)}
    # p(GALAXY) 0.995, 0.93, 0.92 fall in bin 13 or 14: floor(p * 15) = 14, 13, 13.
    assert curve[13]["n"] == 2 and curve[13]["frequency"] == pytest.approx(0.5)
    assert curve[14]["n"] == 1 and curve[14]["mean_p"] == pytest.approx(0.995)
    table = confidence_table(proba, labels, ["GALAXY", "STAR", "QSO"])
    galaxy = table["GALAXY"]
    assert galaxy["predicted"] == 4
    assert galaxy["p>0.9"] == {"n": 3, "share": 0.75, "precision": pytest.approx(2 / 3)}
    assert galaxy["p>0.99"] == {"n": 1, "share": 0.25, "precision": 1.0}
    assert table["STAR"]["p>0.9"]["n"] == 0  # 0.9 is not above 0.9
    assert table["QSO"]["predicted"] == 0 and table["QSO"]["p>0.9"]["share"] is None


def test_fitted_calibration_removes_over_confidence_without_changing_decisions():
    rng = np.random.default_rng(3)
    true_logits = rng.normal(size=(20_000, 3)) * 2.0
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    over_confident = softmax(true_logits * 3.0)
    calibration = fit_calibration(over_confident, labels, 3)
    assert calibration.temperature == pytest.approx(3.0, rel=0.05)
    after = calibration.apply(over_confident)
    assert expected_calibration_error(over_confident, labels) > 0.1
    assert expected_calibration_error(after, labels) < 0.015
    if calibration.method == "temperature":
        np.testing.assert_array_equal(after.argmax(axis=1), over_confident.argmax(axis=1))


def test_vector_scaling_is_chosen_only_when_it_helps():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(8_000, 3)) * 2.0
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits)])
    # A model that under-rates class 2 by a constant: a bias fixes it, a temperature cannot.
    biased = softmax(logits - np.array([0.0, 0.0, 1.5]))
    assert fit_calibration(biased, labels, 3).method == "vector"
    assert fit_calibration(softmax(logits * 2.0), labels, 3).method == "temperature"


def test_each_row_gets_the_calibration_of_the_model_that_scored_it():
    proba = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]], dtype=np.float32)
    stored = {"main": Calibration("temperature", 2.0).to_dict(), "tabular": Calibration("temperature", 0.5).to_dict()}
    out = adjust_probabilities(proba, np.array([True, False]), stored)
    z = np.log(proba[0])
    np.testing.assert_allclose(out[0], np.exp(z / 2) / np.exp(z / 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(out[1], np.exp(z * 2) / np.exp(z * 2).sum(), rtol=1e-5)
    # No calibration stored (a package from before calibration): probabilities pass unchanged.
    np.testing.assert_allclose(adjust_probabilities(proba, None, None), proba)
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        Calibration.from_dict({"method": "isotonic"})


def test_trust_summary_reports_domain_accuracy_on_the_faint_slice():
    labels = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    domain = np.array(["in", "far_from_training", "in", "outside_magnitudes", "in", "far_from_training"], object)
    r = np.array([19.0, 21.0, 21.5, 22.0, 18.0, 20.5])
    summary = trust_summary(labels, proba, proba, domain, r, ["GALAXY", "STAR", "QSO"], source_priors=None)
    faint = summary["domain"]["faint"]  # rows 1, 2, 3, 5: in = row 2 (right); out = 1 (wrong), 3 (right), 5 (wrong)
    assert faint["rows"] == 4 and faint["in_share"] == 0.25
    assert faint["in_accuracy"] == 1.0 and faint["out_accuracy"] == pytest.approx(1 / 3)
    assert summary["domain"]["all"]["reasons"] == {"in": 3, "outside_magnitudes": 1, "far_from_training": 2,
                                                  "mixed_neighbourhood": 0}


def test_reliability_figure_is_a_png_and_says_when_it_is_simulated(tmp_path):
    from PIL import Image

    from skyclass import plots

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 500)
    proba = softmax(rng.normal(size=(500, 3)) * 3)
    names = ["GALAXY", "STAR", "QSO"]
    curves = {n: reliability_curve(proba, labels, c) for c, n in enumerate(names)}
    real = plots.plot_reliability(curves, curves, tmp_path / "real.png", title="reliability")
    simulated = plots.plot_reliability(curves, curves, tmp_path / "sim.png", title="reliability", simulated=True)
    with Image.open(real) as a, Image.open(simulated) as b:
        assert a.format == "PNG" and a.size == b.size
        red = np.asarray(b.convert("RGB"))
        # The SIMULATED banner's pure red (#cc0000) is in the simulated figure only.
        assert ((red == [204, 0, 0]).all(axis=2)).sum() > 100
        assert ((np.asarray(a.convert("RGB")) == [204, 0, 0]).all(axis=2)).sum() == 0
    with pytest.raises(ValueError, match="at least one class"):
        plots.plot_reliability({}, {}, tmp_path / "x.png", title="t")


@pytest.mark.slow  # a Spark job with Keras in the Python workers: 1-5 minutes on the shared machine
def test_evaluation_scores_are_calibrated_and_flagged_like_scoring(spark, tmp_path):
    from skyclass.evaluate import score_test_split
    from skyclass.package import ModelPackage
    from test_domain import _trusted_package
    from test_score import FEATURES, hand_features

    rng = np.random.default_rng(8)
    mags = {b: rng.uniform(15, 22, 300) for b in ("u", "g", "r", "i", "z")}
    frame = __import__("pandas").DataFrame({"objid": np.arange(300, dtype=np.int64),
                                            "label": rng.integers(0, 3, 300).astype(np.int32), **mags})
    for colour in ("u_g", "g_r", "r_i", "i_z"):
        blue, red = colour.split("_")
        frame[colour] = frame[blue] - frame[red]
    path, model, reference = _trusted_package(tmp_path / "models", frame)
    package = ModelPackage.load(path)
    scored = score_test_split(spark.createDataFrame(frame), path, package, batch_rows=64).toPandas() \
        .set_index("objid").loc[frame["objid"]]
    x = hand_features(frame)
    raw = model.predict({"features": x}, verbose=0).astype(np.float64)
    tempered = np.exp(np.log(np.clip(raw, 1e-7, 1)) / 2.0)  # the package's T = 2
    tempered /= tempered.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.stack(scored["raw_scores"].to_numpy()), raw, atol=1e-5)
    np.testing.assert_allclose(np.stack(scored["scores"].to_numpy()), tempered, atol=1e-5)
    assert scored["domain"].tolist() == reference.assess(frame, x)[0].tolist()
    assert len(FEATURES) == x.shape[1]


def test_report_renders_the_trust_section():
    from skyclass.report import trust_section

    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, 600)
    raw = softmax(np.eye(3)[labels] * 4 + rng.normal(size=(600, 3)) * 2)
    calibrated = Calibration("temperature", 1.7).apply(raw)
    domain = np.where(rng.random(600) < 0.8, "in", "far_from_training").astype(object)
    summary = trust_summary(labels, raw, calibrated, domain, rng.uniform(17, 22, 600), ["GALAXY", "STAR", "QSO"],
                            source_priors=(1 / 3, 1 / 3, 1 / 3))
    summary["calibration"] = Calibration("temperature", 1.7).to_dict()
    text = "\n".join(trust_section(summary, ["GALAXY", "STAR", "QSO"]))
    assert f"| before calibration | {summary['before']['ece']:.4f} | {summary['before']['brier']:.4f} |" in text
    assert f"| after calibration | {summary['after']['ece']:.4f} |" in text
    assert "T = 1.7000" in text and "| r > 20 |" in text and "re-weighted to the EM estimate" in text
    assert summary["priors"]["mix"] == {"GALAXY": 0.6, "STAR": 0.2, "QSO": 0.2}
    assert trust_section(None, ["GALAXY"]) == []
