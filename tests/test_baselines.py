"""MLlib baselines on small synthetic training tables: each model learns a separable problem, and the metrics
aggregated in Spark equal the metrics computed with numpy from the collected predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from metrics_reference import classification_metrics
from skyclass.baselines import (
    BASELINE_NAMES,
    DEFAULT_PARAMS,
    BaselineError,
    baseline_estimator,
    fit_preparation,
    run_baselines,
    scored_auc,
    scored_confusion,
    scored_metrics,
)
from skyclass.config import CLASSES
from skyclass.features import PAPER_FEATURES, feature_names
from skyclass.lake import training_table
from skyclass.metrics import confusion_matrix

# Small models: the defaults are sized for 66k rows; these fit ~1k rows in a second or two each.
FAST_PARAMS = {
    "random_forest": {"numTrees": 10, "maxDepth": 5},
    "gbt": {"maxIter": 5, "maxDepth": 3},
    "decision_tree": {"maxDepth": 5},
    "logistic_regression": {"maxIter": 50},
    "linear_svc": {"maxIter": 10},
    "mlp": {"hidden_layers": (8,), "maxIter": 60},
}

TRAINING = training_table(PAPER_FEATURES)


def make_training_frame(n: int, seed: int = 0, *, separation: float = 4.0) -> pd.DataFrame:
    """Training-table rows (the ``paper`` training table's columns) whose classes are Gaussian blobs ``separation`` noise-sigmas
    apart in every feature; about 80 % train, 10 % validation, 10 % test."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    # One offset per class and feature, chosen so each pair of classes differs in several features.
    offsets = np.array([[0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1],
                        [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0],
                        [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]], dtype=float)
    base = np.array([19.5, 18.4, 17.8, 17.5, 17.3, 1.1, 0.6, 0.3, 0.2, 0.4, 6.0, 0.0])
    values = base + separation * offsets[labels] + rng.normal(0, 1.0, (n, len(PAPER_FEATURES)))
    frame = pd.DataFrame(values.astype(np.float32), columns=list(PAPER_FEATURES))
    u = rng.random(n)
    frame.insert(0, "objid", np.arange(1, n + 1, dtype=np.int64))
    frame.insert(1, "split", np.where(u < 0.8, "train", np.where(u < 0.9, "validation", "test")))
    frame.insert(2, "label", labels.astype(np.int32))
    frame.insert(3, "class", [CLASSES[k] for k in labels])
    frame["jpeg"] = None
    return frame[TRAINING.names]


def to_spark(spark, frame: pd.DataFrame):
    rows = [tuple(None if (isinstance(v, float) and np.isnan(v)) else v for v in r)
            for r in frame.astype(object).itertuples(index=False)]
    return spark.createDataFrame(rows, TRAINING.spark_schema())


@pytest.fixture(scope="module")
def separable(spark):
    frame = make_training_frame(1200, seed=1)
    df = to_spark(spark, frame).cache()
    return df.where("split = 'train'"), df.where("split = 'test'")


@pytest.fixture(scope="module")
def all_baselines(separable):
    """Every baseline fitted once on the separable problem (one shared preparation, as evaluate runs them)."""
    train, test = separable
    results = run_baselines(train, test, "photometric", feature_names("photometric"), BASELINE_NAMES,
                            params=FAST_PARAMS)
    return {r.name: r for r in results}, test.count()


def test_predictions_are_written_per_object_and_agree_with_the_metrics(spark, separable, tmp_path):
    train, test = separable
    folder = f"file://{tmp_path}/predictions"
    (result,) = run_baselines(train, test, "photometric", feature_names("photometric"), ["decision_tree"],
                              params=FAST_PARAMS, predictions_dir=folder)
    written = spark.read.parquet(f"{folder}/decision_tree-photometric").toPandas()
    expected = test.select("objid", "label").toPandas()
    assert sorted(written["objid"]) == sorted(expected["objid"])  # every test object once
    merged = written.merge(expected, on="objid", suffixes=("", "_table"))
    assert (merged["label"] == merged["label_table"]).all()
    assert (merged["label"] == merged["prediction"]).mean() == pytest.approx(result.metrics["accuracy"])
    with pytest.raises(BaselineError, match="objid"):
        run_baselines(train, test.drop("objid"), "photometric", feature_names("photometric"), ["decision_tree"],
                      predictions_dir=folder)


@pytest.mark.slow  # seven Spark ML fits plus three exact AUCs each: ~30 s on an idle 2-core machine
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_each_baseline_learns_a_separable_problem(all_baselines, name):
    results, n_test = all_baselines
    result = results[name]
    # Blobs 4 sigma apart in several features: even naive Bayes or a linear model is almost always right.
    assert result.metrics["accuracy"] >= 0.95, (name, result.metrics["accuracy"])
    assert result.metrics["n"] == n_test
    assert result.metrics["roc_auc_ovr_macro"] >= 0.97
    expected_score = "rawPrediction" if name in ("gbt", "linear_svc") else "probability"
    assert result.score_column == expected_score
    assert result.params == {**DEFAULT_PARAMS[name], **FAST_PARAMS.get(name, {})}
    assert result.features == feature_names("photometric") and result.feature_set == "photometric"


@pytest.mark.parametrize("name", ["logistic_regression", pytest.param("linear_svc", marks=pytest.mark.slow)])
def test_spark_metrics_equal_numpy_metrics_from_collected_predictions(spark, name):
    # Overlapping blobs so the confusion matrix has off-diagonal counts and AUC is well below 1.
    frame = make_training_frame(900, seed=2, separation=1.0)
    df = to_spark(spark, frame)
    train, test = df.where("split = 'train'"), df.where("split = 'test'")
    features = feature_names("paper")
    preparation = fit_preparation(train, features)
    model = baseline_estimator(name, n_features=len(features), params=FAST_PARAMS.get(name)).fit(
        preparation.transform(train))
    scored = model.transform(preparation.transform(test)).cache()
    score_col = "probability" if "probability" in scored.columns else "rawPrediction"

    spark_metrics = scored_metrics(scored, score_col)

    collected = scored.select("label", "prediction", score_col).toPandas()
    proba = np.stack([np.asarray(v.toArray()) for v in collected[score_col]])
    numpy_metrics = classification_metrics(collected["label"].to_numpy(), collected["prediction"].to_numpy(),
                                           proba, CLASSES)
    assert spark_metrics["confusion_matrix"] == numpy_metrics["confusion_matrix"]
    assert np.asarray(spark_metrics["confusion_matrix"]).trace() < spark_metrics["n"]  # there are errors to count
    for key in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "roc_auc_ovr_macro"):
        assert spark_metrics[key] == pytest.approx(numpy_metrics[key], abs=1e-9), key
    for cls in CLASSES:
        for key in ("precision", "recall", "f1", "support", "roc_auc"):
            assert spark_metrics["per_class"][cls][key] == pytest.approx(numpy_metrics["per_class"][cls][key],
                                                                         abs=1e-9), (cls, key)
    assert 0.5 < spark_metrics["roc_auc_ovr_macro"] < 0.99


def test_scored_confusion_counts_hand_made_pairs(spark):
    pairs = [(0, 0.0)] * 3 + [(0, 2.0)] + [(1, 1.0)] * 2 + [(2, 0.0)] * 2 + [(2, 2.0)]
    df = spark.createDataFrame(pairs, "label int, prediction double")
    expected = np.array([[3, 0, 1],
                         [0, 2, 0],
                         [2, 0, 1]])
    np.testing.assert_array_equal(scored_confusion(df, 3), expected)
    np.testing.assert_array_equal(expected, confusion_matrix([p[0] for p in pairs], [p[1] for p in pairs], 3))


def test_scored_auc_of_hand_made_scores_and_undefined_class(spark):
    # Class 0 vs rest: positives score 0.9, 0.4; negatives 0.5, 0.1 -> pairs won 3 of 4 -> AUC 0.75.
    rows = [(0, [0.9, 0.1, 0.0]), (0, [0.4, 0.6, 0.0]), (1, [0.5, 0.5, 0.0]), (1, [0.1, 0.9, 0.0])]
    df = spark.createDataFrame(rows, "label int, scores array<double>")
    assert scored_auc(df, 0, "scores") == pytest.approx(0.75)
    assert scored_auc(df, 2, "scores") is None  # no QSO in this test set


def test_scored_auc_counts_ties_as_half(spark):
    # One positive and one negative with equal score: AUC 0.5 (metrics.roc_auc's mid-rank convention).
    df = spark.createDataFrame([(0, [0.5, 0.5, 0.0]), (1, [0.5, 0.5, 0.0])], "label int, scores array<double>")
    assert scored_auc(df, 0, "scores") == pytest.approx(0.5)


def test_missing_feature_values_are_imputed_with_the_train_mean(spark):
    frame = make_training_frame(300, seed=3)
    frame.loc[frame.index[:20], "u_g"] = np.nan  # a colour of an unusable band is null in the table
    df = to_spark(spark, frame)
    train = df.where("split = 'train'")
    preparation = fit_preparation(train, ["u_g"])
    prepared = preparation.transform(df.where("u_g IS NULL")).select("features").toPandas()
    # Mean-imputed, then standardised with the train mean: exactly 0.
    assert len(prepared) == 20
    np.testing.assert_allclose(np.stack([v.toArray() for v in prepared["features"]]), 0.0, atol=1e-9)


def test_unknown_baseline_and_bad_parameter_are_reported(separable, spark):
    train, test = separable
    with pytest.raises(BaselineError, match="unknown baseline 'xgboost'"):
        run_baselines(train, test, "photometric", feature_names("photometric"), ["xgboost"])
    with pytest.raises(BaselineError, match="bad parameter 'trees' for baseline 'random_forest'"):
        baseline_estimator("random_forest", n_features=9, params={"trees": 3})
    with pytest.raises(BaselineError, match="no column 'redshift'"):
        run_baselines(train.drop("redshift"), test, "paper", feature_names("paper"), ["naive_bayes"])
