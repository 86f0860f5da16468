"""Classical baselines with Spark MLlib (the paper's Table 4 on our training table), trained and scored in Spark so
they scale to millions of rows.

Every baseline sees the same inputs: the feature columns of a feature set, missing values imputed with the train
split's mean, assembled into a vector and standardised with the train split's mean and standard deviation. The
preparation is fitted once per feature set on the train split and applied to train and test, and both prepared
frames are cached, so the seven classifiers do not each re-read and re-assemble the table.

Metrics never collect the rows: the confusion matrix is ``groupBy(label, prediction).count()`` (a k x k result)
turned into metrics by :func:`skyclass.metrics.metrics_from_confusion`, and the one-vs-rest ROC AUC of each class
comes from MLlib's :class:`~pyspark.ml.evaluation.BinaryClassificationEvaluator` on that class's score. The score
is the ``probability`` column where the model has one (logistic regression, trees, forests, naive Bayes, MLP), and
the ``rawPrediction`` column otherwise (``OneVsRest`` of GBT or linear SVM gives one margin per class). AUC only
ranks the scores of one class, so a margin serves as well as a probability.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from skyclass.config import BASELINE_NAMES, CLASSES, plain_data
from skyclass.errors import SkyclassError
from skyclass.metrics import metrics_from_confusion

log = logging.getLogger(__name__)


BASELINE_TITLES = {
    "logistic_regression": "Logistic regression",
    "decision_tree": "Decision tree",
    "random_forest": "Random forest",
    "gbt": "Gradient-boosted trees (one-vs-rest)",
    "naive_bayes": "Gaussian naive Bayes",
    "linear_svc": "Linear SVM (one-vs-rest)",
    "mlp": "Multilayer perceptron",
}

# Tuned a little on the validation split of the shared labelled table (66k train rows, 2 idle cores: every model
# fits in 2-3 minutes or less). GBT at depth 6 x 100 rounds beat depth 5 x 60 by 0.4 %; forests of depth 10 lost
# 0.8 % to depth 12; the MLP lost 0.3 % at 150 iterations and a (128, 64) one gained 0.2 % for twice the time.
# Linear SVM needs a little regularisation: at regParam 0 MLlib's OWL-QN hits NaN and the result swings between runs
# (0.63 to 0.85 accuracy).
DEFAULT_PARAMS: dict[str, dict] = {
    "logistic_regression": {"maxIter": 200, "regParam": 0.0},
    "decision_tree": {"maxDepth": 12, "minInstancesPerNode": 5, "maxBins": 64},
    "random_forest": {"numTrees": 100, "maxDepth": 12, "maxBins": 64, "featureSubsetStrategy": "sqrt"},
    "gbt": {"maxIter": 100, "maxDepth": 6, "stepSize": 0.1, "maxBins": 64, "subsamplingRate": 0.8},
    "naive_bayes": {"modelType": "gaussian"},
    "linear_svc": {"maxIter": 100, "regParam": 1e-4},
    "mlp": {"hidden_layers": (64, 32), "maxIter": 300, "blockSize": 256},
}

_FEATURES_RAW = "features_raw"
_FEATURES = "features"
_LABEL = "label_double"


class BaselineError(SkyclassError, ValueError):
    """A baseline name, parameter or input table is unusable."""


@dataclass(frozen=True)
class BaselineResult:
    """Metrics of one baseline on one feature set.

    ``metrics`` is the dict of :func:`skyclass.metrics.metrics_from_confusion` plus ``per_class[c]["roc_auc"]`` and
    ``roc_auc_ovr_macro``; ``score_column`` says which column the AUC ranked (``probability`` or ``rawPrediction``).
    """

    name: str
    feature_set: str
    features: tuple[str, ...]
    metrics: dict
    params: dict = field(default_factory=dict)
    fit_seconds: float = 0.0
    score_column: str = "probability"

    @property
    def title(self) -> str:
        return BASELINE_TITLES.get(self.name, self.name)

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "feature_set": self.feature_set,
                "features": list(self.features), "params": plain_data(self.params), "fit_seconds": self.fit_seconds,
                "score_column": self.score_column, "metrics": self.metrics}


def baseline_estimator(name: str, *, n_features: int, n_classes: int = len(CLASSES),
                       params: Optional[Mapping] = None, seed: int = 0):
    """An unfitted MLlib classifier reading ``features`` and ``label_double``.

    Parameters
    ----------
    name : str
        One of :data:`BASELINE_NAMES`.
    n_features : int
        Length of the feature vector (sizes the perceptron's input layer).
    n_classes : int
        Number of classes (sizes the perceptron's output layer).
    params : mapping, optional
        Overrides of :data:`DEFAULT_PARAMS` ``[name]`` (MLlib parameter names; ``hidden_layers`` for ``mlp``).
    seed : int
        Seed of the randomised models (forests, GBT subsampling, MLP initialisation).

    Returns
    -------
    pyspark.ml.Estimator

    Raises
    ------
    BaselineError
        Unknown name or parameter.
    """
    from pyspark.ml import classification as C

    if name not in DEFAULT_PARAMS:
        raise BaselineError(f"unknown baseline {name!r}; evaluate.baselines may list {', '.join(BASELINE_NAMES)}")
    merged = {**DEFAULT_PARAMS[name], **(params or {})}
    common = {"featuresCol": _FEATURES, "labelCol": _LABEL}
    if name == "logistic_regression":
        return _with_params(name, C.LogisticRegression(family="multinomial", **common), merged)
    if name == "decision_tree":
        return _with_params(name, C.DecisionTreeClassifier(seed=seed, **common), merged)
    if name == "random_forest":
        return _with_params(name, C.RandomForestClassifier(seed=seed, **common), merged)
    if name == "naive_bayes":
        return _with_params(name, C.NaiveBayes(**common), merged)
    if name == "gbt":
        # MLlib's GBT is binary only: one model per class, fitted in parallel threads (they share the cores).
        return C.OneVsRest(classifier=_with_params(name, C.GBTClassifier(seed=seed), merged),
                           parallelism=n_classes, **common)
    if name == "linear_svc":
        return C.OneVsRest(classifier=_with_params(name, C.LinearSVC(), merged), parallelism=n_classes, **common)
    hidden = tuple(int(u) for u in merged.pop("hidden_layers", ()))
    estimator = C.MultilayerPerceptronClassifier(layers=[n_features, *hidden, n_classes], seed=seed, **common)
    return _with_params(name, estimator, merged)


def _with_params(name: str, estimator, params: Mapping):
    for key, value in params.items():
        if not estimator.hasParam(key):
            raise BaselineError(f"bad parameter {key!r} for baseline {name!r}: {type(estimator).__name__} has no such "
                                f"parameter (defaults: {DEFAULT_PARAMS[name]})")
        estimator.setParams(**{key: value})  # setParams applies the type converters (int -> float, ...)
    return estimator


def fit_preparation(train_df, features: Sequence[str]):
    """Fit the shared input preparation (mean imputation, vector assembly, standardisation) on the train split.

    Parameters
    ----------
    train_df : pyspark.sql.DataFrame
        Rows with the feature columns and an integer ``label``.
    features : sequence of str
        Feature columns, in order.

    Returns
    -------
    pyspark.ml.PipelineModel
        Adds ``features`` (standardised vector) and ``label_double``.
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import Imputer, SQLTransformer, StandardScaler, VectorAssembler

    imputed = [f"{f}__imputed" for f in features]
    casts = ", ".join(f"CAST(`{f}` AS DOUBLE) AS `{f}__double`" for f in features)
    stages = [
        # Imputer wants double columns; NaN and null both count as missing (a colour of an unusable band).
        SQLTransformer(statement=f"SELECT *, CAST(label AS DOUBLE) AS {_LABEL}, {casts} FROM __THIS__"),
        Imputer(inputCols=[f"{f}__double" for f in features], outputCols=imputed, strategy="mean"),
        VectorAssembler(inputCols=imputed, outputCol=_FEATURES_RAW),
        StandardScaler(inputCol=_FEATURES_RAW, outputCol=_FEATURES, withMean=True, withStd=True),
    ]
    return Pipeline(stages=stages).fit(train_df)


def scored_confusion(predictions, n_classes: int, label_col: str = "label",
                     prediction_col: str = "prediction") -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) from a scored Spark DataFrame, aggregated in Spark.

    Parameters
    ----------
    predictions : pyspark.sql.DataFrame
        Holds integer-valued ``label_col`` and ``prediction_col`` (MLlib writes doubles).
    n_classes : int

    Returns
    -------
    numpy.ndarray
        ``(n_classes, n_classes)`` int64 counts.

    Raises
    ------
    BaselineError
        A label or prediction outside ``0..n_classes-1``.
    """
    from pyspark.sql import functions as F

    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    rows = (predictions.groupBy(F.col(label_col).cast("int").alias("t"), F.col(prediction_col).cast("int").alias("p"))
            .count().collect())
    for row in rows:
        if row.t is None or row.p is None or not (0 <= row.t < n_classes and 0 <= row.p < n_classes):
            raise BaselineError(f"label/prediction pair ({row.t}, {row.p}) is outside 0..{n_classes - 1}; "
                                "is the training table's label column an index into CLASSES?")
        cm[row.t, row.p] = row["count"]
    return cm


def scored_auc(predictions, class_index: int, score_col: str, label_col: str = "label", *,
               n_positive: Optional[int] = None, n_total: Optional[int] = None) -> Optional[float]:
    """One-vs-rest ROC AUC of one class, computed by MLlib over the whole scored DataFrame.

    Parameters
    ----------
    predictions : pyspark.sql.DataFrame
        Holds ``label_col`` and a vector or array ``score_col`` with one score per class.
    class_index : int
        The positive class.
    score_col : str
        ``probability``, ``rawPrediction`` or an array column of class scores.
    n_positive, n_total : int, optional
        Rows of the class and of the frame, when known (e.g. from the confusion matrix); saves a Spark job.

    Returns
    -------
    float or None
        None when the frame has no positives or no negatives of the class (AUC undefined).
    """
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    column = F.col(score_col)
    if not _is_array(predictions, score_col):
        column = vector_to_array(column)
    binary = predictions.select(
        column.getItem(class_index).cast("double").alias("score"),
        (F.col(label_col).cast("int") == class_index).cast("double").alias("positive"))
    if n_positive is None or n_total is None:
        counts = binary.agg(F.sum("positive").alias("pos"), F.count(F.lit(1)).alias("n")).first()
        n_positive, n_total = counts.pos or 0, counts.n or 0
    if n_positive == 0 or n_positive == n_total:
        return None
    # numBins=0: the exact curve (a distributed sort), so tied scores are handled like metrics.roc_auc's mid-ranks.
    evaluator = BinaryClassificationEvaluator(rawPredictionCol="score", labelCol="positive",
                                              metricName="areaUnderROC", numBins=0)
    return float(evaluator.evaluate(binary))


def scored_metrics(predictions, score_col: Optional[str], class_names: Sequence[str] = CLASSES,
                   label_col: str = "label", prediction_col: str = "prediction") -> dict:
    """All metrics of a scored Spark DataFrame, without collecting its rows.

    Parameters
    ----------
    predictions : pyspark.sql.DataFrame
    score_col : str or None
        Per-class score column for ROC AUC; None leaves AUC out.
    class_names : sequence of str

    Returns
    -------
    dict
        As :func:`skyclass.metrics.metrics_from_confusion`, plus ``per_class[c]["roc_auc"]`` (None if undefined)
        and ``roc_auc_ovr_macro`` (mean over defined classes) when ``score_col`` is given.
    """
    names = list(class_names)
    cm = scored_confusion(predictions, len(names), label_col, prediction_col)
    metrics = metrics_from_confusion(cm, names)
    if score_col is None:
        return metrics
    defined = []
    for index, name in enumerate(names):
        auc = scored_auc(predictions, index, score_col, label_col, n_positive=int(cm[index].sum()),
                         n_total=int(cm.sum()))
        metrics["per_class"][name]["roc_auc"] = auc
        if auc is not None:
            defined.append(auc)
    metrics["roc_auc_ovr_macro"] = float(np.mean(defined)) if defined else None
    return metrics


def write_predictions(scored, path: str) -> None:
    """Write ``objid, label, prediction`` (integers) of a scored test split to ``path`` as Parquet, replacing it."""
    from pyspark.sql import functions as F

    (scored.select("objid", F.col("label").cast("int").alias("label"),
                   F.col("prediction").cast("int").alias("prediction"))
     .write.mode("overwrite").parquet(path))


def run_baselines(train_df, test_df, feature_set: str, features: Sequence[str],
                  names: Sequence[str] = BASELINE_NAMES, *, params: Optional[Mapping[str, Mapping]] = None,
                  class_names: Sequence[str] = CLASSES, seed: int = 0,
                  predictions_dir: Optional[str] = None) -> list[BaselineResult]:
    """Fit each named baseline on the train split and measure it on the test split.

    Parameters
    ----------
    train_df, test_df : pyspark.sql.DataFrame
        Training-table splits (feature columns and integer ``label``).
    feature_set : str
        Name recorded in the results (``photometric`` or ``paper``).
    features : sequence of str
        Feature columns of that set.
    names : sequence of str
        Baselines to run, from :data:`BASELINE_NAMES`.
    params : mapping, optional
        Per-baseline parameter overrides, e.g. ``{"gbt": {"maxIter": 5}}``.
    class_names : sequence of str
    seed : int
    predictions_dir : str, optional
        Spark-writable folder (a URL for local paths, e.g. ``file:///...``): each baseline's test predictions
        (``objid, label, prediction``) go to ``<predictions_dir>/<name>-<feature_set>`` as Parquet, for paired
        comparisons and for looking at the misclassified objects. Needs ``objid`` in ``test_df``.

    Returns
    -------
    list of BaselineResult
        In the order of ``names``.

    Raises
    ------
    BaselineError
        Unknown name, missing feature column, or an empty split.
    """
    unknown = [n for n in names if n not in DEFAULT_PARAMS]
    if unknown:
        raise BaselineError(f"unknown baseline {unknown[0]!r}; evaluate.baselines may list {', '.join(BASELINE_NAMES)}")
    for split, df in (("train", train_df), ("test", test_df)):
        missing = [c for c in (*features, "label") if c not in df.columns]
        if missing:
            raise BaselineError(f"the {split} split has no column {missing[0]!r}; rebuild the training table "
                                "(skyclass table)")
    if predictions_dir is not None and "objid" not in test_df.columns:
        raise BaselineError("the test split has no column 'objid' to key the predictions by; rebuild the training "
                            "table (skyclass table)")
    keys = ["objid"] if predictions_dir is not None else []
    preparation = fit_preparation(train_df, features)
    train_ready = preparation.transform(train_df).select(_FEATURES, _LABEL).cache()
    test_ready = preparation.transform(test_df).select(*keys, "label", _FEATURES, _LABEL).cache()
    try:
        n_train = train_ready.count()
        n_test = test_ready.count()
        if n_train == 0 or n_test == 0:
            raise BaselineError(f"the training table has {n_train} train and {n_test} test rows; baselines need both")
        log.info("baselines on %s features: %d train rows, %d test rows", feature_set, n_train, n_test)
        results = []
        for done, name in enumerate(names, start=1):
            overrides = dict((params or {}).get(name, {}))
            estimator = baseline_estimator(name, n_features=len(features), n_classes=len(class_names),
                                           params=overrides, seed=seed)
            started = time.monotonic()
            model = estimator.fit(train_ready)
            fit_seconds = time.monotonic() - started
            scored = model.transform(test_ready)
            score_col = "probability" if "probability" in scored.columns else "rawPrediction"
            # Four jobs read the predictions (confusion matrix, three AUCs): score once. OneVsRest's transform in
            # particular runs every binary model again each time.
            scored = scored.select(*keys, "label", "prediction", score_col).cache()
            try:
                metrics = scored_metrics(scored, score_col, class_names, label_col="label")
                if predictions_dir is not None:
                    write_predictions(scored, f"{predictions_dir.rstrip('/')}/{name}-{feature_set}")
            finally:
                scored.unpersist()
            results.append(BaselineResult(name, feature_set, tuple(features), metrics,
                                          {**DEFAULT_PARAMS[name], **overrides}, round(fit_seconds, 2), score_col))
            log.info("baseline %d/%d %s (%s): accuracy %.4f, fit %.1f s", done, len(names), name, feature_set,
                     metrics["accuracy"], fit_seconds)
        return results
    finally:
        train_ready.unpersist()
        test_ready.unpersist()


def _is_array(df, column: str) -> bool:
    from pyspark.sql.types import ArrayType

    return isinstance(df.schema[column].dataType, ArrayType)

