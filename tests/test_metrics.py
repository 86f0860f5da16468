"""Tests for skyclass.metrics against hand-computed values and brute-force reference computations."""

import json
import math
import warnings

import numpy as np
import pytest

from skyclass.metrics import (
    bootstrap_intervals,
    mcnemar_exact_p,
    wilson_interval,
    DEFAULT_CLASS_NAMES,
    confusion_matrix,
    metrics_from_confusion,
    roc_auc,
    roc_curve,
)
from skyclass.report import comparison_table

from metrics_reference import classification_metrics

# Hand-worked 3-class example (0 = GALAXY, 1 = STAR, 2 = QSO). Rows = true, columns = predicted:
#
#               pred G  pred S  pred Q | support
#   true G         5       1       0   |   6
#   true S         2       3       1   |   6
#   true Q         0       1       2   |   3
#   predicted:     7       5       3   |  n = 15, correct = 5 + 3 + 2 = 10
#
# accuracy  = 10/15 = 2/3
# precision = TP / column sum: G 5/7, S 3/5, Q 2/3
# recall    = TP / row sum:    G 5/6, S 3/6 = 1/2, Q 2/3
# F1        = 2TP / (2TP + FP + FN):
#             G 10/(10 + 2 + 1) = 10/13, S 6/(6 + 2 + 3) = 6/11, Q 4/(4 + 1 + 1) = 2/3
# weighted precision = (6*5/7 + 6*3/5 + 3*2/3)/15 = (346/35)/15 = 346/525
# weighted recall    = (6*5/6 + 6*1/2 + 3*2/3)/15 = 10/15 = 2/3  (always equals accuracy)
# weighted F1        = (6*10/13 + 6*6/11 + 3*2/3)/15 = (1414/143)/15 = 1414/2145
# macro F1           = (10/13 + 6/11 + 2/3)/3 = (850/429)/3 = 850/1287
HAND_CM = [[5, 1, 0], [2, 3, 1], [0, 1, 2]]
HAND_PAIRS = (
    [(0, 0)] * 5 + [(0, 1)] * 1
    + [(1, 0)] * 2 + [(1, 1)] * 3 + [(1, 2)] * 1
    + [(2, 1)] * 1 + [(2, 2)] * 2
)


def _hand_labels(seed=0):
    pairs = np.array(HAND_PAIRS)
    np.random.default_rng(seed).shuffle(pairs)  # order must not matter
    return pairs[:, 0], pairs[:, 1]


def _assert_plain_json(value):
    """Every leaf is a builtin type, so json.dumps works without a numpy-aware encoder."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            _assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain_json(item)
    else:
        assert value is None or type(value) in (int, float, str), f"{value!r} is {type(value)}"
        if type(value) is float:
            assert math.isfinite(value)


def test_confusion_matrix_counts_pairs_rows_true_columns_predicted():
    y_true, y_pred = _hand_labels()
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, HAND_CM)


def test_confusion_matrix_accepts_spark_double_labels_and_keeps_absent_classes():
    cm = confusion_matrix([0.0, 1.0, 1.0], [1.0, 1.0, 0.0], 4)
    np.testing.assert_array_equal(cm, [[0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1], [0], "pair up"),
        ([0, 3], [0, 1], "outside 0..2"),
        ([0, -1], [0, 1], "outside 0..2"),
        ([0.5, 1], [0, 1], "whole-number"),
        (["GALAXY"], ["STAR"], "integer class indices"),
        ([[0, 1]], [[0, 1]], "1-D"),
    ],
)
def test_confusion_matrix_rejects_bad_labels(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred, 3)


def test_classification_metrics_hand_computed_example():
    y_true, y_pred = _hand_labels()
    m = classification_metrics(y_true, y_pred)
    assert m["n"] == 15
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["precision_weighted"] == pytest.approx(346 / 525)
    assert m["recall_weighted"] == pytest.approx(2 / 3)
    assert m["f1_weighted"] == pytest.approx(1414 / 2145)
    assert m["f1_macro"] == pytest.approx(850 / 1287)
    expected = {
        "GALAXY": (5 / 7, 5 / 6, 10 / 13, 6),
        "STAR": (3 / 5, 1 / 2, 6 / 11, 6),
        "QSO": (2 / 3, 2 / 3, 2 / 3, 3),
    }
    assert list(m["per_class"]) == ["GALAXY", "STAR", "QSO"]
    for name, (precision, recall, f1, support) in expected.items():
        assert m["per_class"][name]["precision"] == pytest.approx(precision)
        assert m["per_class"][name]["recall"] == pytest.approx(recall)
        assert m["per_class"][name]["f1"] == pytest.approx(f1)
        assert m["per_class"][name]["support"] == support
    assert m["confusion_matrix"] == HAND_CM
    assert m["class_names"] == ["GALAXY", "STAR", "QSO"]
    assert "roc_auc_ovr_macro" not in m
    _assert_plain_json(m)


def test_perfect_classifier_scores_one_everywhere():
    y = np.array([0, 1, 2, 2, 1, 0, 0])
    proba = np.eye(3)[y]
    m = classification_metrics(y, y, proba)
    for key in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "roc_auc_ovr_macro"):
        assert m[key] == 1.0, key
    for name in DEFAULT_CLASS_NAMES:
        assert m["per_class"][name]["f1"] == 1.0
        assert m["per_class"][name]["roc_auc"] == 1.0
    assert m["confusion_matrix"] == [[3, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_all_one_class_predictions_give_zero_not_nan_and_no_warning():
    # Everything predicted GALAXY. cm = [[2,0,0],[2,0,0],[2,0,0]]
    # GALAXY: precision 2/6 = 1/3, recall 2/2 = 1, F1 = 2*(1/3)*1/(1/3 + 1) = 1/2
    # STAR, QSO: never predicted -> precision 0/0 -> 0.0; recall 0/2 = 0; F1 0/0 -> 0.0
    # accuracy 2/6 = 1/3; weighted precision (2*1/3)/6 = 1/9; weighted F1 (2*1/2)/6 = 1/6; macro F1 (1/2)/3 = 1/6
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0] * 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from 0/0 would fail here
        m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["precision_weighted"] == pytest.approx(1 / 9)
    assert m["recall_weighted"] == pytest.approx(1 / 3)
    assert m["f1_weighted"] == pytest.approx(1 / 6)
    assert m["f1_macro"] == pytest.approx(1 / 6)
    assert m["per_class"]["GALAXY"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": 0.5, "support": 2}
    for name in ("STAR", "QSO"):
        assert m["per_class"][name] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    _assert_plain_json(m)


def test_class_absent_from_test_set_counts_as_zero_in_macro_average():
    # QSO neither present nor predicted; GALAXY and STAR perfect -> macro F1 = (1 + 1 + 0)/3, weighted F1 = 1.
    m = classification_metrics([0, 1, 1], [0, 1, 1])
    assert m["per_class"]["QSO"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["f1_macro"] == pytest.approx(2 / 3)
    assert m["f1_weighted"] == 1.0


def test_metrics_from_confusion_equals_classification_metrics_on_random_data():
    rng = np.random.default_rng(42)
    y_true = rng.integers(0, 3, size=500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 3, size=500))
    direct = classification_metrics(y_true, y_pred)
    cm = confusion_matrix(y_true, y_pred, 3)
    from_counts = metrics_from_confusion(cm, DEFAULT_CLASS_NAMES)
    assert from_counts == direct
    # The list-of-lists a Spark aggregation would produce works too.
    assert metrics_from_confusion(cm.tolist(), list(DEFAULT_CLASS_NAMES)) == direct


@pytest.mark.parametrize(
    "cm, names, match",
    [
        ([[1, 2, 3]], DEFAULT_CLASS_NAMES, "square"),
        ([[1, 0], [0, 1]], DEFAULT_CLASS_NAMES, "3 class names"),
        ([[0, 0], [0, 0]], ("A", "B"), "no evaluated samples"),
        ([[1, -1], [0, 1]], ("A", "B"), "negative"),
        ([[1.5, 0], [0, 1]], ("A", "B"), "whole-number"),
        ([[1, 0], [0, 1]], ("A", "A"), "unique"),
    ],
)
def test_metrics_from_confusion_rejects_bad_matrices(cm, names, match):
    with pytest.raises(ValueError, match=match):
        metrics_from_confusion(cm, names)


def test_classification_metrics_with_proba_adds_ovr_auc_and_stays_json_serialisable():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y_true]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = classification_metrics(y_true, proba.argmax(axis=1), proba)
    per_class_auc = [m["per_class"][name]["roc_auc"] for name in DEFAULT_CLASS_NAMES]
    for k, auc in enumerate(per_class_auc):
        assert auc == pytest.approx(_brute_force_auc(y_true == k, proba[:, k]))
    assert m["roc_auc_ovr_macro"] == pytest.approx(np.mean(per_class_auc))
    _assert_plain_json(m)
    json.dumps(m, allow_nan=False)


def test_classification_metrics_undefined_auc_is_none_and_macro_skips_it():
    # No QSO in y_true: QSO-vs-rest has no positives, so its AUC is undefined.
    y_true = [0, 0, 1, 1]
    proba = [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]]
    m = classification_metrics(y_true, [0, 0, 1, 0], proba)
    assert m["per_class"]["QSO"]["roc_auc"] is None
    # GALAXY scores: positives 0.9, 0.6; negatives 0.2, 0.5 -> all 4 pairs ordered -> 1.0
    assert m["per_class"]["GALAXY"]["roc_auc"] == 1.0
    # STAR scores: positives 0.7, 0.4; negatives 0.05, 0.3 -> all 4 pairs ordered -> 1.0
    assert m["per_class"]["STAR"]["roc_auc"] == 1.0
    assert m["roc_auc_ovr_macro"] == 1.0
    json.dumps(m, allow_nan=False)


def test_classification_metrics_rejects_proba_of_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(n_samples, n_classes\) = \(2, 3\)"):
        classification_metrics([0, 1], [0, 1], proba=[[0.5, 0.5], [0.5, 0.5]])


def _brute_force_auc(labels, scores):
    """P(score_pos > score_neg) + 0.5 P(tie), by comparing every positive with every negative."""
    labels = np.asarray(labels, dtype=bool)
    pos = np.asarray(scores)[labels]
    neg = np.asarray(scores)[~labels]
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_roc_auc_matches_brute_force_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(150) < 0.3
    # Rounding to one decimal makes ~10 distinct values, so ties within and across classes are common.
    scores = np.round(rng.random(150) * 0.6 + 0.3 * labels, 1)
    assert len(np.unique(scores)) < 20
    expected = _brute_force_auc(labels, scores)
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    # And the trapezoid area under roc_curve is the same number (ties are diagonal segments).
    fpr, tpr, _ = roc_curve(labels, scores)
    assert np.trapz(tpr, fpr) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_special_cases():
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5  # all tied
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_roc_curve_hand_example_with_tie():
    # labels 1, 0, 1, 0 with scores 0.5, 0.5, 0.9, 0.1
    # threshold inf: nothing positive            -> (fpr, tpr) = (0, 0)
    # threshold 0.9: the positive at 0.9         -> (0, 1/2)
    # threshold 0.5: adds the tied pos AND neg   -> (1/2, 1)   one diagonal step, no intermediate point
    # threshold 0.1: adds the last negative      -> (1, 1)
    fpr, tpr, thresholds = roc_curve([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    # Trapezoid: 0 + 0.5*(0.5+1)/2 + 0.5*1 = 0.875; pairwise: (0.5 tie + 1 + 1 + 1)/4 = 0.875
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.9, 0.1]) == 0.875


def test_roc_curve_requires_both_classes():
    with pytest.raises(ValueError, match="both positives and negatives"):
        roc_curve([1, 1], [0.2, 0.4])


def _fake_metrics(accuracy, f1_weighted, f1_macro, qso_f1):
    return {
        "accuracy": accuracy,
        "f1_weighted": f1_weighted,
        "f1_macro": f1_macro,
        "per_class": {"QSO": {"f1": qso_f1}, "GALAXY": {"f1": 0.9}, "STAR": {"f1": 0.9}},
    }


def test_comparison_table_bolds_best_per_column():
    results = {
        "logistic_regression": _fake_metrics(0.90, 0.89, 0.85, 0.70),
        "random_forest": _fake_metrics(0.95, 0.94, 0.91, 0.80),
        "multimodal": _fake_metrics(0.97, 0.96, 0.90, 0.88),
    }
    table = comparison_table(results)
    assert table.splitlines() == [
        "| model | accuracy | f1_weighted | f1_macro | QSO_f1 |",
        "|---|---:|---:|---:|---:|",
        "| logistic_regression | 0.9000 | 0.8900 | 0.8500 | 0.7000 |",
        "| random_forest | 0.9500 | 0.9400 | **0.9100** | 0.8000 |",
        "| multimodal | **0.9700** | **0.9600** | 0.9000 | **0.8800** |",
    ]


def test_comparison_table_ties_missing_and_undefined_values():
    a = _fake_metrics(0.9, 0.9, 0.9, 0.9)
    a["roc_auc_ovr_macro"] = 0.95
    b = _fake_metrics(0.9, 0.8, 0.8, 0.8)
    b["roc_auc_ovr_macro"] = None
    c = _fake_metrics(0.5, 0.5, 0.5, 0.5)  # no AUC at all (e.g. a model without probabilities)
    table = comparison_table({"a": a, "b": b, "c": c}, columns=("accuracy", "roc_auc_ovr_macro", "GALAXY_f1"))
    rows = table.splitlines()[2:]
    assert rows[0] == "| a | **0.9000** | **0.9500** | **0.9000** |"
    assert rows[1] == "| b | **0.9000** | n/a | **0.9000** |"
    assert rows[2] == "| c | 0.5000 | — | **0.9000** |"


def test_comparison_table_on_real_metrics_and_errors():
    y_true, y_pred = _hand_labels()
    table = comparison_table({"hand": classification_metrics(y_true, y_pred)})
    assert "| hand | **0.6667** | **0.6592** | **0.6605** | **0.6667** |" in table
    with pytest.raises(KeyError, match="QS0_f1"):
        comparison_table({"hand": classification_metrics(y_true, y_pred)}, columns=("QS0_f1",))
    with pytest.raises(ValueError, match="at least one model"):
        comparison_table({})


def test_bootstrap_interval_of_accuracy_matches_the_binomial_width():
    # 8,500 of 10,000 right: the accuracy's standard error is sqrt(0.85 * 0.15 / 10,000) = 0.00357, so the 95%
    # interval is about 0.85 +- 0.0070.
    cm = [[3000, 300, 200], [250, 3000, 250], [300, 200, 2500]]
    low, high = bootstrap_intervals(cm, ["A", "B", "C"])["accuracy"]
    assert low < 0.85 < high
    assert (high - low) / 2 == pytest.approx(1.96 * math.sqrt(0.85 * 0.15 / 10_000), rel=0.1)
    assert 0.85 - low == pytest.approx(high - 0.85, rel=0.25)  # nearly symmetric at this n


def test_bootstrap_intervals_of_a_perfect_and_a_never_predicted_class():
    got = bootstrap_intervals([[50, 0, 0], [0, 30, 0], [0, 0, 20]], ["GALAXY", "STAR", "QSO"])
    assert got["accuracy"] == [1.0, 1.0] and got["f1_macro"] == [1.0, 1.0]
    assert got["per_class"]["QSO"]["f1"] == [1.0, 1.0]
    # QSO never predicted: its F1 is 0 in every resample (the zero_division=0 convention), and the interval says so.
    got = bootstrap_intervals([[50, 0, 0], [0, 30, 0], [10, 0, 0]], ["GALAXY", "STAR", "QSO"])
    assert got["per_class"]["QSO"]["f1"] == [0.0, 0.0]
    assert got["per_class"]["STAR"]["f1"] == [1.0, 1.0]
    assert 0.0 < got["per_class"]["GALAXY"]["f1"][0] < 50 * 2 / (50 * 2 + 10) < got["per_class"]["GALAXY"]["f1"][1]


def test_metrics_carry_reproducible_intervals_around_the_point_estimates():
    cm = [[380, 10, 5], [12, 250, 8], [9, 11, 190]]
    first, second = metrics_from_confusion(cm), metrics_from_confusion(cm)
    assert first["ci95"] == second["ci95"]
    low, high = first["ci95"]["per_class"]["QSO"]["f1"]
    assert low < first["per_class"]["QSO"]["f1"] < high
    low, high = first["ci95"]["f1_macro"]
    assert low < first["f1_macro"] < high
    json.dumps(first)


def test_mcnemar_exact_p_hand_computed():
    # 5 disagreements, all won by the first model: 2 * (1/2)^5 = 0.0625.
    assert mcnemar_exact_p(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact_p(0, 5) == pytest.approx(0.0625)
    # 10 disagreements split 8:2: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024.
    assert mcnemar_exact_p(8, 2) == pytest.approx(112 / 1024)
    assert mcnemar_exact_p(7, 7) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    # Large counts stay finite and agree with the normal approximation: z = (b - c) / sqrt(b + c).
    p = mcnemar_exact_p(52_000, 50_000)
    z = 2_000 / math.sqrt(102_000)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.05)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact_p(-1, 3)


def test_wilson_interval_hand_values():
    z2 = 1.96 ** 2
    low, high = wilson_interval([10, 0, 50], [10, 10, 100])
    # 10 of 10: [n / (n + z^2), 1]; 0 of 10: [0, z^2 / (n + z^2)]; 50 of 100: centred on 0.5.
    assert low[0] == pytest.approx(10 / (10 + z2)) and high[0] == 1.0
    assert low[1] == 0.0 and high[1] == pytest.approx(z2 / (10 + z2))
    assert (low[2] + high[2]) / 2 == pytest.approx(0.5)
    assert high[2] - low[2] == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 100 + z2 / 40_000) / (1 + z2 / 100))
    assert wilson_interval(0, 0) == (0.0, 1.0)
