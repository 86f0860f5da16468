"""The evaluation stage: a model package and the classical MLlib baselines on the test split of the training table,
written as ``report.md`` + ``report.json`` + PNG figures.

What is evaluated
    The given package (``evaluate.model``, else the newest under ``lake.models``) is the headline. Beside it, the
    newest package of every other (mode, feature set) found under ``lake.models`` -- so one report can hold the
    paper's Tables 4–8: classical baselines, tabular, image and multimodal networks -- and every baseline of
    ``evaluate.baselines`` on every feature set of ``evaluate.feature_sets``.

How networks are scored
    Per Arrow batch in Spark executors (``mapInPandas``) through :mod:`skyclass.inference`, the path and runtime
    (``score.inference``) ``skyclass score`` uses, each package's models loaded once per Python worker: the report
    measures what scoring produces, and the test split never has to fit on the driver. Rows of an image/multimodal package
    without a usable cutout are scored by the package's tabular model (the scoring job's rule) and counted.

How metrics are computed
    For networks and baselines alike in Spark (:mod:`skyclass.baselines`): a ``groupBy(label, prediction)``
    confusion matrix → :func:`skyclass.metrics.metrics_from_confusion`, and one-vs-rest ROC AUC per class by
    MLlib's exact binary evaluator. Only the ROC *figures* collect scores to the driver (a sample of at most
    :data:`ROC_PLOT_MAX_ROWS` rows).

What is kept
    Every model's per-object test predictions (``objid, label, prediction``) as Parquet under
    ``<report>/predictions/<key>/``: to look at the misclassified objects, and for the paired (McNemar) comparison
    of each network with the best baseline on the same objects, counted by a Spark join. Each model also gets 95%
    bootstrap intervals (:func:`skyclass.metrics.bootstrap_intervals`) and, for networks, accuracy by r magnitude.

Simulated data
    Decided by the data, never by a config flag (:func:`simulated_result`). Image and multimodal results are
    labelled SIMULATED (tables, figures, a banner in report.md) when any cutout they were evaluated on (the
    training table's stats.json ``cutout_sources``) or trained on (the package's ``simulated_images``) comes from
    a simulated source (``lake.SIMULATED_SOURCES``: the stand-in's renderer or ``skyclass simulate``); every result
    is labelled so when the catalog itself is simulated. Cutouts of ``unknown`` source (a cutouts table written
    before sources were recorded) are not labelled, but the report says it cannot tell.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from skyclass import lake, storage
from skyclass.calibration import trust_summary
from skyclass.baselines import BASELINE_TITLES, run_baselines, scored_metrics, write_predictions
from skyclass.config import CLASSES
from skyclass.errors import SkyclassError
from skyclass.features import features_of_set
from skyclass.input_pipeline import dataset_url
from skyclass.metrics import mcnemar_exact_p

log = logging.getLogger(__name__)

# ROC figures need every score on the driver; above this many test rows they draw a random sample.
ROC_PLOT_MAX_ROWS = 200_000
# Rows handed to a Keras model at once (decoded 64 px images: ~50 MB of float32 per 1,000 rows).
PREDICT_CHUNK_ROWS = 1024
MODE_TITLES = {"tabular": "Tabular network", "image": "Image network", "multimodal": "Multimodal network"}
SCORED_SCHEMA = ("objid long, label int, prediction int, scores array<double>, cutout_used boolean, r double, "
                 "raw_scores array<double>, domain string, domain_score double")
# Per-object test predictions of every model (objid, label, prediction), under the report folder.
PREDICTIONS_FOLDER = "predictions"
# Edges of the r-magnitude bins of the accuracy-by-magnitude table and figure (open-ended below and above): SDSS
# saturates near 14, the spectroscopic samples thin out past 21, and most errors sit at the faint end.
R_MAG_EDGES = (15.0, 16.0, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0)


class EvaluationError(SkyclassError):
    """The evaluation cannot run: no test split, no package, or a package that does not fit the table."""


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` wrote: the report folder and the headline numbers."""

    path: str
    headline: str
    accuracy: float
    qso_f1: float
    test_rows: int
    n_results: int
    simulated: bool
    report: dict = field(repr=False, default_factory=dict)

    def __str__(self) -> str:
        flag = " (SIMULATED cutouts)" if self.simulated else ""
        return (f"evaluated {self.headline}{flag} on {self.test_rows} test objects: accuracy {self.accuracy:.4f}, "
                f"QSO F1 {self.qso_f1:.4f}; {self.n_results} models compared; report in {self.path}")


def evaluate(spark, conf) -> EvaluationResult:
    """Evaluate a model package, the other newest packages and the MLlib baselines; write the report.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    conf : skyclass.config.Config
        Uses ``evaluate`` (model, baselines, feature_sets, output), ``lake``, ``score.batch_rows`` and
        ``score.inference``.

    Returns
    -------
    EvaluationResult
        ``.path`` is the report folder holding report.md, report.json and the PNG figures.

    Raises
    ------
    EvaluationError
        No training table, an empty test split, or a package whose classes differ from the table's.
    skyclass.package.PackageError
        No model package, or ``evaluate.model`` is not a complete one.
    """
    from skyclass.package import ModelPackage, latest_package

    models_dir = conf.lake.path("models")
    headline_path = conf.evaluate.model or latest_package(models_dir)
    headline = ModelPackage.load(headline_path)
    packages = [(headline_path, headline)] + other_packages(models_dir, headline)
    # The table's label is an index into CLASSES: every package must predict exactly those, in that order.
    class_names = CLASSES

    lake_root = conf.lake.path("root")
    train_df, test_df = _read_splits(spark, lake_root)
    test_df = test_df.cache()
    try:
        counts = {row["label"]: row["count"] for row in test_df.groupBy("label").count().collect()}
        test_rows = int(sum(counts.values()))
        if test_rows == 0:
            raise EvaluationError(f"the test split under {lake_root}/training is empty; rebuild the training table "
                                  "with more objects or a larger split.test")
        out_dir = conf.evaluate.output or os.path.join(conf.lake.path("reports"), headline.version)
        os.makedirs(out_dir, exist_ok=True)
        figures: list[dict] = []
        results: list[dict] = []

        table_stats = _training_stats(lake_root)
        for path, package in packages:
            _check_classes(package, path, class_names)
            simulated = simulated_result(table_stats, package.mode, package.metadata)
            entry = evaluate_package(spark, path, package, test_df, class_names, batch_rows=conf.score.batch_rows,
                                     simulated=simulated, out_dir=out_dir, figures=figures,
                                     inference=conf.score.inference,
                                     target_mix=conf.score.class_priors if isinstance(conf.score.class_priors,
                                                                                     Mapping) else None)
            entry["headline"] = path == headline_path
            results.append(entry)
            log.info("evaluated package %s (%s, %s): accuracy %.4f", package.version, package.mode,
                     package.feature_set, entry["metrics"]["accuracy"])

        # A labels-only table (imported cutouts without photometry) gives the photometric baselines nothing to fit.
        baseline_sets = () if table_stats.get("rows_without_photometry") else conf.evaluate.feature_sets
        if not baseline_sets and conf.evaluate.feature_sets:
            log.info("no photometric baselines: the training table has %s rows without photometry",
                     table_stats["rows_without_photometry"])
        for feature_set in baseline_sets:
            for baseline in run_baselines(train_df, test_df, feature_set, features_of_set(conf, feature_set),
                                          conf.evaluate.baselines, class_names=class_names,
                                          predictions_dir=_predictions_url(out_dir, "")):
                key = f"{baseline.name}-{feature_set}"
                results.append({"key": key, "kind": "baseline",
                                "title": baseline.title, "feature_set": feature_set,
                                "simulated": simulated_result(table_stats, "tabular", {}),
                                "metrics": baseline.metrics, "fit_seconds": baseline.fit_seconds,
                                "params": baseline.to_dict()["params"], "score_column": baseline.score_column,
                                "predictions": f"{PREDICTIONS_FOLDER}/{key}"})

        comparisons = best_baseline_comparisons(results)
        for comparison in comparisons:
            best = comparison["best_baseline"]
            comparison["paired"] = {
                key: paired_comparison(spark, _predictions_url(out_dir, key), _predictions_url(out_dir, best))
                for key in comparison["keys"] if key != best}
        _plot_comparisons(results, comparisons, class_names, out_dir, figures)
        headline_entry = results[0]
        report = {
            "title": f"skyclass evaluation — model {headline.version}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "headline": headline_entry["key"],
            "model_package": headline_path,
            "model_fingerprint": headline.fingerprint,
            "class_names": list(class_names),
            "test_rows": test_rows,
            "test_class_counts": {name: int(counts.get(i, 0)) for i, name in enumerate(class_names)},
            "training_table": {"path": os.path.join(lake_root, "training"), "rows": table_stats.get("rows"),
                               "created_at": table_stats.get("created_at"),
                               "cutout_sources": table_stats.get("cutout_sources"),
                               "catalog_simulated": bool(table_stats.get("catalog_simulated", False))},
            "simulated_results": [e["key"] for e in results if e["simulated"]],
            "results": results,
            "comparisons": comparisons,
            "figures": figures,
            "notes": _notes(conf, packages, test_rows, table_stats),
        }
        write_report(report, out_dir)
    finally:
        test_df.unpersist()
    metrics = headline_entry["metrics"]
    qso_f1 = metrics["per_class"].get("QSO", {}).get("f1", float("nan"))
    return EvaluationResult(out_dir, headline_entry["key"], metrics["accuracy"], qso_f1, test_rows, len(results),
                            bool(report["simulated_results"]), report)


def simulated_result(table_stats: Mapping, mode: str, package_metadata: Mapping) -> bool:
    """Whether a result is on simulated data, from what the data say about themselves.

    Parameters
    ----------
    table_stats : mapping
        The training table's stats.json (``cutout_sources``, ``catalog_simulated``); empty when unknown.
    mode : str
        ``tabular``, ``image`` or ``multimodal``; baselines are ``tabular`` (they never see a cutout).
    package_metadata : mapping
        The package's metadata.json (``simulated_images``, ``simulated_catalog``, written by training); empty
        for baselines.

    Returns
    -------
    bool
        True when the catalog the result was trained or evaluated on is simulated, or -- for a model that looks at
        images -- when any of its training or test cutouts has a simulated source.
    """
    from skyclass.lake import SIMULATED_SOURCES

    if table_stats.get("catalog_simulated") or package_metadata.get("simulated_catalog"):
        return True
    if mode not in ("image", "multimodal"):
        return False
    sources = table_stats.get("cutout_sources") or {}
    return bool(package_metadata.get("simulated_images")) or any(
        n and source in SIMULATED_SOURCES for source, n in sources.items())


def write_report(report: Mapping, out_dir: str) -> tuple[str, str]:
    """Write ``report.json`` and its Markdown rendering ``report.md`` into ``out_dir``.

    Parameters
    ----------
    report : mapping
        The report document (see :mod:`skyclass.report`); must be JSON-serialisable.
    out_dir : str

    Returns
    -------
    (str, str)
        Paths of report.json and report.md.
    """
    from skyclass.report import render_markdown

    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "report.json")
    md_path = os.path.join(out_dir, "report.md")
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, allow_nan=False)
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write(render_markdown(report))
    log.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path


def other_packages(models_dir: str, headline) -> list:
    """The newest package of every (mode, feature set) under ``models_dir`` other than the headline's.

    Parameters
    ----------
    models_dir : str
        Folder of model packages (``lake.models``).
    headline : skyclass.package.ModelPackage

    Returns
    -------
    list of (str, ModelPackage)
        Sorted by (mode, feature set). Packages whose metadata is unusable are skipped with a warning.
    """
    from skyclass.package import ModelPackage, list_packages

    newest: dict[tuple[str, str], tuple[str, object]] = {}
    # list_packages is ordered by creation time, oldest first: later ones replace earlier.
    for path in list_packages(models_dir):
        try:
            package = ModelPackage.load(path)
            kind = (package.mode, package.feature_set)
        except (SkyclassError, KeyError) as err:
            log.warning("skipping %s: not a usable model package (%s)", path, err)
            continue
        if kind != (headline.mode, headline.feature_set):
            newest[kind] = (path, package)
    return [newest[k] for k in sorted(newest, key=lambda k: (k[0], k[1] or ""))]


def evaluate_package(spark, path: str, package, test_df, class_names: Sequence[str], *, batch_rows: int,
                     simulated: bool, out_dir: str, figures: list, inference: str = "keras",
                     target_mix=None) -> dict:
    """Score the test split with one package, compute its metrics in Spark and draw its figures.

    Parameters
    ----------
    spark : SparkSession
    path : str
        Package folder (must be readable by the executors).
    package : skyclass.package.ModelPackage
    test_df : pyspark.sql.DataFrame
        The test split.
    class_names : sequence of str
    batch_rows : int
        Rows per model call.
    simulated : bool
        Label the result and its figures as SIMULATED.
    out_dir : str
        Report folder for the PNGs.
    figures : list
        Figure entries (``file``, ``caption``, ``simulated``) are appended to it.
    inference : str
        ``score.inference``, as scoring uses it.
    target_mix : mapping, optional
        Class mix the prior-shift check resamples the split to (default ``calibration.EVALUATION_MIX``).

    Returns
    -------
    dict
        A result entry of the report (see :mod:`skyclass.report`).
    """
    from skyclass import plots

    key = f"{package.mode}-{package.feature_set}"
    title = MODE_TITLES.get(package.mode, package.mode)
    label = f"{title} {package.version} [{package.feature_set}]" + (" — SIMULATED cutouts" if simulated else "")
    started = time.monotonic()
    scored = score_test_split(test_df, path, package, batch_rows=batch_rows, inference=inference).cache()
    try:
        metrics = scored_metrics(scored, "scores", class_names)
        by_magnitude = accuracy_by_magnitude(scored)
        write_predictions(scored, _predictions_url(out_dir, key))
        rows_without_cutout = 0
        if package.mode != "tabular":
            rows_without_cutout = scored.where("NOT cutout_used").count()
        sample = _roc_sample(scored)
        trust_rows = _trust_sample(scored)
    finally:
        scored.unpersist()
    entry = {"key": key, "kind": "network", "title": title, "mode": package.mode,
             "feature_set": package.feature_set, "version": package.version, "package": path,
             "fingerprint": package.fingerprint,
             "simulated": simulated, "metrics": metrics, "rows_without_cutout": int(rows_without_cutout),
             "accuracy_by_r_mag": by_magnitude, "predictions": f"{PREDICTIONS_FOLDER}/{key}",
             "predict_seconds": round(time.monotonic() - started, 2)}

    def add(file: str, caption: str, is_simulated: bool) -> None:
        figures.append({"file": file, "caption": caption, "simulated": is_simulated})

    # Issue 12: calibration before/after, in/out of domain, prior shift.
    entry["trust"] = _trust_entry(trust_rows, package, class_names, target_mix)
    plots.plot_reliability(entry["trust"]["before"]["reliability"], entry["trust"]["after"]["reliability"],
                           os.path.join(out_dir, f"reliability_{key}.png"), title=f"Reliability: {label}",
                           simulated=simulated)
    add(f"reliability_{key}.png", f"Reliability diagram per class, before and after calibration — {title} "
        f"{package.version} [{package.feature_set}]", simulated)

    plots.plot_confusion_matrix(metrics["confusion_matrix"], class_names, os.path.join(out_dir, f"confusion_{key}.png"),
                                title=f"Confusion matrix: {label}", simulated=simulated)
    add(f"confusion_{key}.png", f"Confusion matrix — {title} {package.version} [{package.feature_set}]", simulated)
    if len(sample):
        plots.plot_roc_curves(sample["label"].to_numpy(), np.stack(sample["scores"].to_numpy()), class_names,
                              os.path.join(out_dir, f"roc_{key}.png"), title=f"ROC, one vs rest: {label}",
                              simulated=simulated)
        add(f"roc_{key}.png", f"ROC curves (one vs rest) — {title} {package.version} [{package.feature_set}]",
            simulated)
    if by_magnitude:
        plots.plot_accuracy_by_magnitude(by_magnitude, os.path.join(out_dir, f"accuracy_by_r_{key}.png"),
                                         title=f"Accuracy by r magnitude: {label}", simulated=simulated)
        add(f"accuracy_by_r_{key}.png", f"Accuracy by r magnitude — {title} {package.version} "
            f"[{package.feature_set}]", simulated)
    history = package.metadata.get("history") or {}
    if _has_curves(history):
        plots.plot_training_curves(history, os.path.join(out_dir, f"curves_{key}.png"),
                                   title=f"Training curves: {label}", simulated=simulated)
        add(f"curves_{key}.png", f"Training curves — {title} {package.version} [{package.feature_set}]", simulated)
    tabular_history = package.metadata.get("tabular_history") or {}
    if package.mode != "tabular" and _has_curves(tabular_history):
        # The companion tabular model never sees a cutout, so its curves are real-data results.
        plots.plot_training_curves(tabular_history, os.path.join(out_dir, f"curves_{key}_tabular.png"),
                                   title=f"Training curves: tabular companion of {package.version}")
        add(f"curves_{key}_tabular.png", f"Training curves — tabular companion model of {package.version}", False)
    return entry


def score_test_split(test_df, path: str, package, *, batch_rows: int, inference: str = "keras"):
    """Spark DataFrame of ``objid, label, prediction, scores (array of class probabilities), cutout_used, r`` for
    every test row, scored per Arrow batch by the package's models.

    Parameters
    ----------
    test_df : pyspark.sql.DataFrame
        Training-table rows (``label``, the package's features, ``jpeg``).
    path : str
        Package folder, loaded once per Python worker.
    package : skyclass.package.ModelPackage
    batch_rows : int
    inference : str
        ``score.inference`` (``auto``, ``keras`` or ``tflite``): the runtime scoring uses, so the report measures
        what scoring produces.

    Returns
    -------
    pyspark.sql.DataFrame

    Raises
    ------
    EvaluationError
        The test split lacks a column the package needs.
    """
    columns = list(dict.fromkeys(["objid", "label", *package.features]
                                 + (["jpeg"] if package.mode != "tabular" else [])))
    missing = [c for c in columns if c not in test_df.columns]
    if missing:
        raise EvaluationError(f"the test split has no column {missing[0]!r} that package {path} needs; rebuild the "
                              "training table (skyclass table)")
    # r travels along for the accuracy-by-magnitude table, whether or not the package uses it.
    if "r" in test_df.columns and "r" not in columns:
        columns.append("r")
    columns += [m for m in lake.MAGNITUDES if m in test_df.columns and m not in columns]  # for the domain check
    from skyclass.inference import InferenceSpec, resolve_backend

    spec = InferenceSpec.from_package(package, path, resolve_backend(inference, package, path))
    return test_df.select(*columns).mapInPandas(_PackageScorer(spec, batch_rows), SCORED_SCHEMA)


def _predictions_url(out_dir: str, key: str) -> str:
    # Spark writes beside the driver's files: a file:// URL, or a bare path would mean HDFS on a cluster.
    return dataset_url(os.path.join(out_dir, PREDICTIONS_FOLDER, key))


def paired_comparison(spark, first_path: str, second_path: str) -> dict:
    """Two models' test predictions, object by object: agreement counts and the exact McNemar p-value.

    Parameters
    ----------
    spark : SparkSession
    first_path, second_path : str
        Parquet folders of ``objid, label, prediction`` (as written by :func:`write_predictions`).

    Returns
    -------
    dict
        ``objects`` (objids in both), ``both_right``, ``only_first_right``, ``only_second_right``, ``both_wrong``
        and ``p_value`` (:func:`skyclass.metrics.mcnemar_exact_p`).
    """
    from pyspark.sql import functions as F

    def right(path: str, name: str):
        return spark.read.parquet(path).select("objid", (F.col("label") == F.col("prediction")).alias(name))

    a, b = F.col("a"), F.col("b")
    row = (right(first_path, "a").join(right(second_path, "b"), on="objid")
           .agg(F.count(F.lit(1)).alias("objects"),
                *(F.sum(condition.cast("long")).alias(name) for name, condition in (
                    ("both_right", a & b), ("only_first_right", a & ~b), ("only_second_right", ~a & b),
                    ("both_wrong", ~a & ~b))))
           .collect()[0])
    counts = {name: int(row[name] or 0) for name in ("objects", "both_right", "only_first_right",
                                                       "only_second_right", "both_wrong")}
    counts["p_value"] = mcnemar_exact_p(counts["only_first_right"], counts["only_second_right"])
    return counts


def accuracy_by_magnitude(scored, edges: Sequence[float] = R_MAG_EDGES) -> list[dict]:
    """Accuracy of a scored test split per r-magnitude bin, aggregated in Spark (one row per bin to the driver).

    Parameters
    ----------
    scored : pyspark.sql.DataFrame
        ``label``, ``prediction`` and ``r`` (rows with a null or NaN r are left out).
    edges : sequence of float
        Increasing bin edges; the first and last bins are open-ended.

    Returns
    -------
    list of dict
        Non-empty bins in magnitude order: ``{"min", "max", "n", "accuracy"}`` (``min``/``max`` None when open).
    """
    from pyspark.sql import functions as F

    r = F.col("r")
    bin_index = F.lit(len(edges))
    for k in reversed(range(len(edges))):
        bin_index = F.when(r < edges[k], F.lit(k)).otherwise(bin_index)
    rows = (scored.where(r.isNotNull() & ~F.isnan(r))
            .groupBy(bin_index.alias("bin"))
            .agg(F.count(F.lit(1)).alias("n"),
                 F.sum((F.col("label") == F.col("prediction")).cast("long")).alias("correct"))
            .collect())
    bounds = [None, *[float(e) for e in edges], None]
    return [{"min": bounds[row["bin"]], "max": bounds[row["bin"] + 1], "n": int(row["n"]),
             "accuracy": float(row["correct"]) / int(row["n"])}
            for row in sorted(rows, key=lambda row: row["bin"])]


class _PackageScorer:
    """The mapInPandas function: picklable (only the spec travels); the models come from the worker cache of
    :mod:`skyclass.inference`, the same path and runtime as ``skyclass score``."""

    def __init__(self, spec, batch_rows: int):
        self.spec = spec
        self.batch_rows = batch_rows

    def __call__(self, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from skyclass.inference import predict_batch, worker_models

        models = worker_models(self.spec)
        for frame in frames:
            for start in range(0, len(frame), self.batch_rows):
                chunk = frame.iloc[start:start + self.batch_rows]
                batch = predict_batch(chunk, self.spec, models)
                yield pd.DataFrame({
                    "objid": chunk["objid"].to_numpy(dtype=np.int64),
                    "label": chunk["label"].to_numpy(dtype=np.int32),
                    "prediction": batch.proba.argmax(axis=1).astype(np.int32),
                    "scores": list(batch.proba.astype(np.float64)),
                    "cutout_used": batch.cutout_used,
                    "r": (pd.to_numeric(chunk["r"], errors="coerce").to_numpy(dtype=np.float64)
                          if "r" in chunk.columns else np.full(len(chunk), np.nan)),
                    # Issue 12: the models' own probabilities (before calibration) and the in-domain flags.
                    "raw_scores": list(batch.raw.astype(np.float64)), "domain": batch.domain,
                    "domain_score": batch.domain_score,
                })


def predict_proba(package, main_model, tabular_model, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of a pandas batch of training-table rows, with Keras models already in memory, through
    :func:`skyclass.inference.predict_batch` (the path scoring uses).

    Parameters
    ----------
    package : skyclass.package.ModelPackage
        Gives mode, features, classes, normalisation and image size.
    main_model, tabular_model : tf.keras.Model
        The package's models; rows without a decodable cutout go to ``tabular_model`` in image/multimodal mode.
    frame : pandas.DataFrame
        The package's feature columns and, unless tabular, ``jpeg``.

    Returns
    -------
    proba : numpy.ndarray
        ``(n, n_classes)`` float32.
    cutout_used : numpy.ndarray
        Boolean per row: the main model saw a cutout (always False in tabular mode).
    """
    from skyclass.inference import InferenceSpec, KerasModel, WorkerModels, predict_batch

    spec = InferenceSpec(package_path="", version="", fingerprint="", mode=package.mode,
                         features=tuple(package.features), classes=tuple(package.classes),
                         normalisation=package.normalisation, image_size_px=int(package.image_size_px or 0))
    batch = predict_batch(frame, spec, WorkerModels(KerasModel(main_model), KerasModel(tabular_model), "keras"))
    return batch.proba, batch.cutout_used


def best_baseline_comparisons(results: Sequence[Mapping]) -> list[dict]:
    """For each feature set with networks and baselines: the networks beside the most accurate baseline.

    Parameters
    ----------
    results : sequence of report result entries

    Returns
    -------
    list of dict
        ``{"feature_set", "title", "best_baseline" (key), "keys" (networks first, then the baseline)}``.
    """
    comparisons = []
    feature_sets = []
    # In the order the results list them, so the headline's feature set comes first.
    for r in results:
        if r["kind"] == "network" and r["feature_set"] not in feature_sets:
            feature_sets.append(r["feature_set"])
    for feature_set in feature_sets:
        baselines = [r for r in results if r["kind"] == "baseline" and r["feature_set"] == feature_set]
        if not baselines:
            continue
        # Ties go to the earlier baseline of the configured order (a stable, explainable choice).
        best = max(baselines, key=lambda r: r["metrics"]["accuracy"])
        networks = [r["key"] for r in results if r["kind"] == "network" and r["feature_set"] == feature_set]
        comparisons.append({"feature_set": feature_set, "best_baseline": best["key"], "keys": [*networks, best["key"]],
                            "title": f"Feature set `{feature_set}`: networks vs {best['title']}"})
    return comparisons


def _plot_comparisons(results, comparisons, class_names, out_dir, figures) -> None:
    from skyclass import plots
    from skyclass.report import result_label

    by_key = {r["key"]: r for r in results}
    for comparison in comparisons:
        best = by_key[comparison["best_baseline"]]
        key = best["key"]
        plots.plot_confusion_matrix(best["metrics"]["confusion_matrix"], class_names,
                                    os.path.join(out_dir, f"confusion_{key}.png"),
                                    title=f"Confusion matrix: {result_label(best)}")
        figures.append({"file": f"confusion_{key}.png", "simulated": False,
                        "caption": f"Confusion matrix — best baseline: {result_label(best)}"})
    for feature_set in dict.fromkeys(r["feature_set"] for r in results):
        in_set = [r for r in results if r["feature_set"] == feature_set]
        simulated = any(r["simulated"] for r in in_set)
        plots.plot_per_class_f1({result_label(r): r["metrics"] for r in in_set},
                                os.path.join(out_dir, f"per_class_f1_{feature_set}.png"),
                                title=f"Per-class F1, feature set {feature_set}", simulated=simulated)
        figures.append({"file": f"per_class_f1_{feature_set}.png", "simulated": simulated,
                        "caption": f"Per-class F1 of every model, feature set {feature_set}"})


def _read_splits(spark, lake_root: str):
    frames = []
    for split in ("train", "test"):
        path = lake.training_split_path(lake_root, split)
        if not storage.table_exists(path):
            raise EvaluationError(f"no {split} split at {path}; build the training table first (skyclass table)")
        frames.append(spark.read.parquet(storage.spark_uri(path)))
    return frames[0], frames[1]


def _training_stats(lake_root: str) -> Mapping:
    """The training table's stats.json as a dict; empty when unreadable (the report then omits what it tells)."""
    from skyclass.input_pipeline import load_training_stats

    try:
        return load_training_stats(lake.training_stats_path(lake_root)).raw
    except SkyclassError as err:
        log.warning("no usable training statistics (%s); the report will not describe the table", err)
        return {}


def _check_classes(package, path: str, class_names: Sequence[str]) -> None:
    if tuple(package.classes) != tuple(class_names):
        raise EvaluationError(f"package {path} predicts classes {list(package.classes)} but the training table's "
                              f"labels are {list(class_names)}; evaluate packages trained on this label set")


def _has_curves(history: Mapping) -> bool:
    return any(isinstance(v, (list, tuple)) and len(v) > 0 for v in history.values())


def _trust_sample(scored) -> pd.DataFrame:
    # Like the ROC sample: the calibration measures need the probabilities themselves (at most ROC_PLOT_MAX_ROWS).
    n = scored.count()
    frame = scored.select("label", "scores", "raw_scores", "domain", "r")
    if n > ROC_PLOT_MAX_ROWS:
        frame = frame.sample(fraction=ROC_PLOT_MAX_ROWS / n, seed=0)
    return frame.toPandas()


def _trust_entry(rows: pd.DataFrame, package, class_names: Sequence[str], target_mix) -> dict:
    calibrated = np.stack(rows["scores"].to_numpy()) if len(rows) else np.zeros((0, len(class_names)))
    raw = np.stack(rows["raw_scores"].to_numpy()) if len(rows) else calibrated
    domain = rows["domain"].to_numpy(dtype=object) if rows["domain"].notna().any() else None
    entry = trust_summary(rows["label"].to_numpy(), raw, calibrated, domain, rows["r"].to_numpy(dtype=np.float64),
                          class_names, source_priors=package.calibration().source_priors, target_mix=target_mix)
    entry["calibration"] = (package.metadata.get("calibration") or {}).get("main")
    entry["domain_settings"] = {k: v for k, v in (package.metadata.get("domain") or {}).items()
                                if k in ("k", "quantile", "threshold", "magnitude_quantiles", "reference_rows",
                                         "min_purity")}
    return entry


def _roc_sample(scored) -> pd.DataFrame:
    n = scored.count()
    frame = scored.select("label", "scores")
    if n > ROC_PLOT_MAX_ROWS:
        frame = frame.sample(fraction=ROC_PLOT_MAX_ROWS / n, seed=0)
    return frame.toPandas()


def _notes(conf, packages, test_rows: int, table_stats: Mapping) -> list[str]:
    notes = [
        "Every model is measured on the same test split of the training table (hash split, so an object keeps its "
        f"split across rebuilds); {test_rows} objects.",
        "Metrics are aggregated in Spark: a groupBy(label, prediction) confusion matrix gives accuracy and "
        "precision/recall/F1; one-vs-rest ROC AUC per class comes from MLlib's exact BinaryClassificationEvaluator "
        "on the class's probability (for OneVsRest GBT and linear SVM: the class's margin, which ranks the same).",
        "Baselines: Spark MLlib on the train split, inputs mean-imputed and standardised with train statistics; "
        + "; ".join(f"{BASELINE_TITLES.get(n, n)}" for n in conf.evaluate.baselines) + ".",
        "Networks are scored per Arrow batch (mapInPandas), models loaded once per worker; image and multimodal "
        "packages score objects without a usable cutout with their tabular companion model, as skyclass score does.",
    ]
    sources = table_stats.get("cutout_sources")
    uses_images = any(p.mode in ("image", "multimodal") for _, p in packages)
    if uses_images and sources is None:
        notes.append("WARNING: the training table's stats.json does not record where its cutouts came from (built "
                     "before sources were recorded): image results are not labelled SIMULATED but may be. Rebuild "
                     "the training table (skyclass table) to record it.")
    elif uses_images and sources.get("unknown"):
        notes.append(f"WARNING: {sources['unknown']} rows of the training table have cutouts of unknown source "
                     "(downloaded before sources were recorded): image results are not labelled SIMULATED but may "
                     "be. Re-download those cutouts to know.")
    if sources:
        notes.append("Cutout sources of the training table: "
                     + ", ".join(f"{s} {n}" for s, n in sorted(sources.items())) + ".")
    salts = {(p.metadata.get("config") or {}).get("split", {}).get("salt") for _, p in packages}
    salts.discard(None)
    if salts and salts != {conf.split.salt}:
        notes.append(f"WARNING: some packages were trained with split salt(s) {sorted(salts)} but the table uses "
                     f"{conf.split.salt!r}: their test objects may have been training objects.")
    return notes
