"""Label every object of a lake catalog with a model package: ``predictions/run_date=YYYY-MM-DD/``.

How it runs (STYLE "Score in batches"): the catalog (LEFT JOIN the cutouts when the package looks at images) goes
through ``mapInPandas``; each Arrow batch of ``score.batch_rows`` rows has its JPEGs decoded and is classified
with one model call, through :mod:`skyclass.inference` (the path evaluation uses too): each Python worker loads the
package's models once -- Keras, or their TensorFlow Lite form on CPU workers (``score.inference``) -- and keeps
them for later tasks and batches. The driver plans the job and reads counts from Spark aggregations; it never holds
catalog rows, images or predictions.

Status of a prediction (``lake.PREDICTIONS.status``), first match wins:

``bad_photometry``
    a magnitude or another catalog value the package's features read is missing or a sentinel
    (``features.inputs_ok_pandas`` is false). Decision: the row still
    gets probabilities, from the usual model, with each unusable magnitude and the colours built from it replaced
    by the training mean (0 after standardisation) — the image, when there is one, is still informative, and a
    null would hide that. Users who want only clean photometry filter on ``status = 'ok'``.
``no_cutout``
    the package needs images but the object has no cutout, or its JPEG does not decode: it is scored by the
    package's tabular model (``tabular.keras``) instead of being dropped.
``ok``
    everything the model needs was there.

Nights are incremental: objects already scored by the same model package -- the same *fingerprint*
(:func:`skyclass.package.package_fingerprint`), not merely the same version name -- in ANY ``run_date`` partition
are skipped (a left anti-join, run once: its narrow result is cached for the count, the scoring and the rows
kept), unless ``score.rescore``. A catalog or cutouts table that repeats an objid is reduced to one row per object
before the model (:func:`one_row_per_object`), so nothing is classified twice and nothing is shuffled after it. A package retrained under the same version has a new
fingerprint, so every object is scored again; rows of nights scored before fingerprints existed (no
``model_fingerprint``) match no package and are rescored too. The night's partition is rewritten whole in a staging
folder and swapped in, so rerunning a night replaces it atomically and holds each object once; other nights'
partitions are never touched.
"""
from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Iterator, Mapping, Optional

import numpy as np
import pandas as pd

from skyclass import lake, storage
from skyclass.config import CLASSES
from skyclass.inference import InferenceSpec, WorkerModels, predict_batch, resolve_backend, worker_models
from skyclass.errors import SkyclassError
from skyclass.features import source_columns
from skyclass.priors import ESTIMATE

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_NO_CUTOUT = "no_cutout"
STATUS_BAD_PHOTOMETRY = "bad_photometry"
STATUSES = (STATUS_OK, STATUS_NO_CUTOUT, STATUS_BAD_PHOTOMETRY)
PROBABILITY_COLUMNS = {"GALAXY": "p_galaxy", "STAR": "p_star", "QSO": "p_qso"}
_ARROW_BATCH_KEY = "spark.sql.execution.arrow.maxRecordsPerBatch"
_EMPTY_DTYPES = {"objid": "int64", "predicted_class": "object", "p_galaxy": "float32", "p_star": "float32",
                 "p_qso": "float32", "model_version": "object", "model_fingerprint": "object", "status": "object",
                 "domain": "object", "domain_score": "float32", "skyclass_version": "object",
                 "data_release": "object", "scored_at": "datetime64[us, UTC]"}

class ScoreError(SkyclassError):
    """Scoring cannot start: no catalog, a package that does not fit the catalog, a bad run date."""


@dataclass(frozen=True)
class ScoringSpec(InferenceSpec):
    """What a worker needs to score batches: the package's inference spec (skyclass.inference: models, features,
    calibration, domain reference, target priors), plus the run's provenance written on every row."""

    skyclass_version: Optional[str] = None
    data_release: Optional[str] = None
    scored_at: Optional[str] = None  # ISO UTC


@dataclass(frozen=True)
class ScoreResult:
    """What one scoring run did; ``str()`` is the CLI summary."""

    run_date: str
    model_version: str
    package_path: str
    catalog: str
    path: str  # the night's partition folder
    n_catalog: int
    n_scored: int  # objects classified in this run
    n_skipped: int  # objects already scored by this package (same fingerprint; 0 with rescore)
    n_night_rows: int  # rows in the night's partition after the run (scored now + kept from an earlier run)
    status_counts: Mapping[str, int] = field(default_factory=dict)  # over the night's partition
    rescore: bool = False
    model_loads: int = 0  # model loads in Python workers (one per worker, not per batch)
    seconds: float = 0.0
    model_fingerprint: str = ""
    inference: str = "keras"  # score.inference as resolved for the package (auto: each worker picks)

    @property
    def objects_per_s(self) -> float:
        return self.n_scored / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        statuses = ", ".join(f"{s}={self.status_counts.get(s, 0):,}" for s in STATUSES)
        what = "rescored" if self.rescore else "scored"
        return (f"{what} {self.n_scored:,} of {self.n_catalog:,} objects of {self.catalog} with model "
                f"{self.model_version} [{self.model_fingerprint[:19]}] ({self.n_skipped:,} already scored by it, "
                f"skipped) in {self.seconds:.1f} s "
                f"({self.objects_per_s:,.0f} objects/s, {self.inference} inference, {self.model_loads} worker model "
                f"loads); "
                f"{self.path}: {self.n_night_rows:,} rows ({statuses})")


# ---------------------------------------------------------------------------------------------------------------
# Worker side: pure batch scoring.

def clean_photometry(frame: pd.DataFrame, names=None) -> pd.DataFrame:
    """Copy of ``frame`` with the features ``names`` computed (default: the colours, and the redshift encodings
    when ``frame`` has a redshift), unusable catalog values (missing, NaN, sentinel, out of range) set to NaN.

    Standardisation then maps each NaN to the training mean, so a -9999 sentinel never reaches the model as a huge
    z-score.
    """
    from skyclass.features import COLOURS, REDSHIFT_ENCODINGS, add_features_pandas

    if names is None:
        names = (*lake.MAGNITUDES, *COLOURS, *(REDSHIFT_ENCODINGS if "redshift" in frame.columns else ()))
    return add_features_pandas(frame, names)


def score_frame(frame: pd.DataFrame, spec: ScoringSpec, models: WorkerModels) -> pd.DataFrame:
    """Classify one batch: catalog rows (objid, magnitudes, optional ``jpeg``) → rows of ``lake.PREDICTIONS``.

    Parameters
    ----------
    frame : pandas.DataFrame
        ``objid``, the magnitudes ``u..z`` (plus ``redshift`` if the package uses it) and, for image packages,
        ``jpeg`` (bytes or None).
    spec : ScoringSpec
    models : skyclass.inference.WorkerModels
        From :func:`skyclass.inference.worker_models`.

    Returns
    -------
    pandas.DataFrame
        One row per input row, in input order, with the columns of ``lake.PREDICTIONS``.
    """
    from skyclass.features import inputs_ok_pandas

    n = len(frame)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _EMPTY_DTYPES.items()})[lake.PREDICTIONS.names]
    photometry_ok = inputs_ok_pandas(frame, spec.features)
    features = clean_photometry(frame.drop(columns="jpeg", errors="ignore"), spec.features)
    if "jpeg" in frame.columns:
        features["jpeg"] = frame["jpeg"].to_numpy()
    batch = predict_batch(features, spec, models)
    proba, domain, domain_score = batch.proba, batch.domain, batch.domain_score
    image_ok = batch.cutout_used if spec.needs_images else np.ones(n, dtype=bool)
    status = np.where(~photometry_ok, STATUS_BAD_PHOTOMETRY, np.where(image_ok, STATUS_OK, STATUS_NO_CUTOUT))
    classes = np.asarray(spec.classes, dtype=object)
    out = pd.DataFrame({
        "objid": frame["objid"].to_numpy(dtype=np.int64),
        "predicted_class": classes[proba.argmax(axis=1)],
    })
    for name, column in PROBABILITY_COLUMNS.items():
        out[column] = proba[:, spec.classes.index(name)]
    out["model_version"] = spec.version
    out["model_fingerprint"] = spec.fingerprint
    out["status"] = status
    out["domain"], out["domain_score"] = domain, np.asarray(domain_score, dtype=np.float32)
    out["skyclass_version"], out["data_release"] = spec.skyclass_version, spec.data_release
    out["scored_at"] = pd.Timestamp(spec.scored_at) if spec.scored_at else pd.NaT
    return out[lake.PREDICTIONS.names]


def _score_batches(batches: Iterator[pd.DataFrame], spec: ScoringSpec, loads=None) -> Iterator[pd.DataFrame]:
    # The mapInPandas function: runs in Python workers; the models come from skyclass.inference's worker cache.
    models = worker_models(spec, loads)
    for frame in batches:
        yield score_frame(frame, spec, models)


# ---------------------------------------------------------------------------------------------------------------
# Driver side.

def resolve_run_date(run_date: Optional[str]) -> str:
    """``YYYY-MM-DD`` of the night (today in UTC when None).

    Raises
    ------
    ScoreError
        ``run_date`` is not a valid ``YYYY-MM-DD`` date.
    """
    if run_date is None:
        return datetime.now(timezone.utc).date().isoformat()
    text = str(run_date)
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise ScoreError(f"score.run_date must be a date written YYYY-MM-DD, got {run_date!r}") from None


def resolve_package_path(conf) -> str:
    """The model package to score with: ``score.model`` or the newest package under ``lake.models``."""
    if conf.score.model:
        return conf.score.model
    from skyclass.package import latest_package

    return latest_package(conf.lake.path("models"))


def _night_dirname(run_date: str) -> str:
    return f"run_date={run_date}"


def read_predictions(spark, predictions_root: str):
    """All partitions of the predictions table with a string ``run_date`` column, or None if there are none.

    A night whose swap was interrupted is recovered first (:func:`skyclass.storage.recover_swaps_in`)."""
    storage.recover_swaps_in(predictions_root)
    if not any(e.is_dir and e.name.startswith("run_date=") for e in storage.list_entries(predictions_root)):
        return None
    from pyspark.sql import types as T

    # An explicit schema makes run_date a string (no date inference) and ignores the swap's _-prefixed staging folders.
    schema = T.StructType(lake.PREDICTIONS.spark_schema().fields + [T.StructField("run_date", T.StringType())])
    return spark.read.schema(schema).parquet(storage.spark_uri(predictions_root))


def replace_partition(spark, predictions_root: str, run_date: str, write) -> str:
    """Write a night's partition to a staging folder, then swap it in; other nights are never touched.

    :func:`skyclass.storage.replace_directory` does the swap; its staging folders start with ``_``, so Spark's
    partition discovery ignores them even if a crash leaves one behind, and a crash between its renames is
    recovered by the next reader or writer.

    Parameters
    ----------
    spark : SparkSession
    predictions_root : str
    run_date : str
    write : callable
        ``write(staging_path)`` writes the complete new partition there.

    Returns
    -------
    str
        The partition folder.
    """
    final_path = f"{predictions_root.rstrip('/')}/{_night_dirname(run_date)}"
    storage.replace_directory(final_path, write)
    return final_path


def _status_counts(spark, path: str) -> dict[str, int]:
    return {row["status"]: int(row["count"])
            for row in spark.read.schema(lake.PREDICTIONS.spark_schema()).parquet(storage.spark_uri(path))
            .groupBy("status").count().collect()}


def score_catalog(spark, conf) -> ScoreResult:
    """Label every object of ``conf.score.catalog`` with a model package; write ``predictions/run_date=…/``.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        ``score.model`` (None: newest package under ``lake.models``), ``score.catalog``, ``score.batch_rows``
        (rows per Arrow batch = per model call), ``score.rescore``, ``score.run_date`` (None: today, UTC).

    Returns
    -------
    ScoreResult

    Raises
    ------
    ScoreError
        The catalog table is missing, the package's features or classes do not fit the catalog, or the run date
        is malformed.
    SkyclassError
        No model package exists (from ``latest_package``: run ``skyclass train``).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    began = time.monotonic()
    run_date = resolve_run_date(conf.score.run_date)
    package_path = resolve_package_path(conf)
    from skyclass.package import ModelPackage

    package = ModelPackage.load(package_path)
    spec = ScoringSpec.from_package(package, package_path,
                                    resolve_backend(conf.score.inference, package, package_path))
    _check_spec(spec)
    spec = with_run_provenance(spec, conf)
    catalog_path = conf.lake.table(conf.score.catalog)
    if not storage.table_exists(catalog_path):
        hint = "skyclass extract --photometric" if conf.score.catalog == "photometric" else "skyclass extract"
        raise ScoreError(f"no {conf.score.catalog} table at {catalog_path}; run `{hint}` (or `skyclass simulate` "
                         "for a synthetic lake) first, or choose another table with --catalog")
    catalog = spark.read.parquet(storage.spark_uri(catalog_path))
    raw_columns = list(source_columns((*lake.MAGNITUDES, *spec.features)))
    missing = [c for c in raw_columns if c not in catalog.columns]
    if missing:
        raise ScoreError(f"model {spec.version} uses catalog column(s) {', '.join(missing)} (its features: "
                         f"{', '.join(spec.features)}), which the {conf.score.catalog} table at {catalog_path} "
                         "does not have; extract the table again with that package's train.features in the config "
                         "(extraction fetches the columns they need), score it with a package trained on columns "
                         "the table has (e.g. train.feature_set=photometric), or score the labelled catalog "
                         "(--catalog catalog)")
    objects = catalog.select("objid", *raw_columns)

    predictions_root = conf.lake.path("predictions")
    previous = read_predictions(spark, predictions_root)
    if previous is not None and not conf.score.rescore:
        done = previous.filter(F.col("model_fingerprint") == spec.fingerprint).select("objid")
        objects = objects.join(done, "objid", "left_anti")
        _log_rows_without_fingerprint(previous, spec)
    # The anti-join against every night's predictions runs once: the narrow rows to score (objid and magnitudes,
    # no images) are cached, and the count below, the scoring job and the night's kept rows all read them.
    objects = objects.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_catalog = catalog.count()
        n_to_score = objects.select("objid").distinct().count()
        night_path = f"{predictions_root.rstrip('/')}/{_night_dirname(run_date)}"
        if n_to_score == 0:
            # Nothing new: the night's partition (if any) already holds what a rewrite would produce.
            log.info("all %d objects of %s are already scored by model %s (fingerprint %s); nothing to do",
                     n_catalog, conf.score.catalog, spec.version, spec.fingerprint)
            have_night = storage.table_exists(night_path)
            counts = _status_counts(spark, night_path) if have_night else {}
            return ScoreResult(run_date=run_date, model_version=spec.version, package_path=package_path,
                               catalog=conf.score.catalog, path=night_path, n_catalog=n_catalog, n_scored=0,
                               n_skipped=n_catalog, n_night_rows=sum(counts.values()), status_counts=counts,
                               rescore=conf.score.rescore, seconds=time.monotonic() - began,
                               model_fingerprint=spec.fingerprint, inference=spec.backend)

        to_score = objects
        if spec.needs_images:
            cutouts_path = conf.lake.table("cutouts")
            if storage.table_exists(cutouts_path):
                to_score = objects.join(
                    spark.read.parquet(storage.spark_uri(cutouts_path)).select("objid", "jpeg"), "objid", "left")
            else:
                log.warning("no cutouts table at %s: every object is scored by the tabular fallback (no_cutout)",
                            cutouts_path)
                to_score = objects.withColumn("jpeg", F.lit(None).cast("binary"))
        to_score = one_row_per_object(to_score)

        loads = spark.sparkContext.accumulator(0)
        scored = to_score.mapInPandas(functools.partial(_score_batches, spec=spec, loads=loads),
                                      lake.PREDICTIONS.spark_schema())
        night = scored
        prior_estimate = None
        if conf.score.class_priors == ESTIMATE:
            scored, prior_estimate = estimate_and_apply_priors(scored.persist(), spec)
            night = scored
        if storage.table_exists(night_path):
            # Rows of an earlier run of this night for objects not scored now stay; the rest are replaced.
            kept = (spark.read.schema(lake.PREDICTIONS.spark_schema()).parquet(storage.spark_uri(night_path))
                    .join(objects.select("objid"), "objid", "left_anti").select(*lake.PREDICTIONS.names))
            night = scored.unionByName(kept)

        previous_batch = spark.conf.get(_ARROW_BATCH_KEY, None)
        spark.conf.set(_ARROW_BATCH_KEY, str(conf.score.batch_rows))
        try:
            log.info("scoring %d of %d objects of %s with model %s (%s, fingerprint %s, %s inference) into %s",
                     n_to_score, n_catalog, conf.score.catalog, spec.version, spec.mode, spec.fingerprint,
                     spec.backend, night_path)
            replace_partition(spark, predictions_root, run_date, lambda staging: (
                night.write.parquet(staging),
                lake.write_provenance(staging, night_provenance(conf, spec, catalog_path, n_to_score, prior_estimate))))
        finally:
            if prior_estimate is not None:
                scored.unpersist()
            if previous_batch is None:
                spark.conf.unset(_ARROW_BATCH_KEY)
            else:
                spark.conf.set(_ARROW_BATCH_KEY, previous_batch)
    finally:
        objects.unpersist()
    counts = _status_counts(spark, night_path)
    result = ScoreResult(run_date=run_date, model_version=spec.version, package_path=package_path,
                         catalog=conf.score.catalog, path=night_path, n_catalog=n_catalog, n_scored=n_to_score,
                         n_skipped=n_catalog - n_to_score if not conf.score.rescore else 0,
                         n_night_rows=sum(counts.values()), status_counts=counts, rescore=conf.score.rescore,
                         model_loads=int(loads.value), seconds=time.monotonic() - began,
                         model_fingerprint=spec.fingerprint, inference=spec.backend)
    log.info("%s", result)
    return result


def one_row_per_object(rows):
    """Spark DataFrame → the same with one row per ``objid``, chosen before the model (so nothing is classified
    twice and no shuffle follows the model): a row with usable photometry first, then one with a cutout, then
    the longest cutout (a truncated copy is shorter), then by a hash of the row's values, so the choice is
    deterministic.

    After the sort-merge join of the catalog with the cutouts on ``objid`` the rows are already partitioned and
    sorted by ``objid``, so this aggregation adds no shuffle or sort of the JPEG bytes there.
    """
    from pyspark.sql import functions as F

    from skyclass.features import photometry_ok_column

    has_jpeg = "jpeg" in rows.columns
    jpeg_length = F.coalesce(F.length("jpeg"), F.lit(-1)) if has_jpeg else F.lit(0)
    preference = F.struct((~photometry_ok_column()).cast("int").alias("bad_photometry"),
                          (-jpeg_length).alias("shorter_cutout"),
                          F.xxhash64(*[c for c in rows.columns if c != "objid"]).alias("tie"))
    columns = [c for c in rows.columns if c != "objid"]
    return (rows.groupBy("objid").agg(F.min_by(F.struct(*columns), preference).alias("_row"))
            .select("objid", *(F.col(f"_row.{c}").alias(c) for c in columns)))


def _log_rows_without_fingerprint(previous, spec: ScoringSpec) -> None:
    """Say so when earlier nights scored objects with this version before fingerprints existed: those rows
    cannot prove they came from this package, so their objects are scored again."""
    from pyspark.sql import functions as F

    legacy = (previous.filter(F.col("model_fingerprint").isNull() & (F.col("model_version") == spec.version))
              .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("run_date").alias("nights")).collect()[0])
    if legacy["rows"]:
        log.info("%d prediction rows in %d earlier night(s) name model version %s but carry no model_fingerprint "
                 "(scored before fingerprints); they do not count as scored by package %s, so those objects are "
                 "scored again", legacy["rows"], legacy["nights"], spec.version, spec.fingerprint)


def _check_spec(spec: ScoringSpec) -> None:
    if sorted(spec.classes) != sorted(CLASSES):
        raise ScoreError(f"model {spec.version} at {spec.package_path} predicts classes {list(spec.classes)}; "
                         f"scoring writes {', '.join(CLASSES)} probabilities — use a package trained on them")
    from skyclass.features import FeatureError, parse_features

    try:
        parse_features(spec.features)
    except FeatureError as err:
        raise ScoreError(f"model {spec.version} at {spec.package_path} declares features scoring cannot compute "
                         f"(metadata.json features{err})") from None
    if spec.needs_images and spec.image_size_px <= 0:
        raise ScoreError(f"model {spec.version} is a {spec.mode} model but its metadata.json has no image_size_px")


# ---------------------------------------------------------------------------------------------------------------
# Issue 12: target priors and provenance of a night.

def data_release(conf, catalog_path: Optional[str] = None) -> Optional[str]:
    """The SDSS data release of the scored catalog: its ``_provenance.json``'s ``data_release`` when the builder
    recorded one, else the release segment of ``skyserver.url`` (``…/dr17`` → ``dr17``), else None."""
    if catalog_path:
        try:
            recorded = (lake.read_provenance(catalog_path) or {}).get("data_release")
        except ValueError:
            recorded = None
        if recorded:
            return str(recorded)
    last = conf.skyserver.url.rstrip("/").rpartition("/")[2]
    return last.lower() if re.fullmatch(r"dr\d+", last, re.IGNORECASE) else None


def with_run_provenance(spec: ScoringSpec, conf, now: Optional[datetime] = None) -> ScoringSpec:
    """``spec`` with this run's target priors (``score.class_priors`` given as a mix), skyclass version, data
    release and UTC scoring instant (``now``, injectable for tests)."""
    import dataclasses

    from skyclass.package import code_version
    from skyclass.priors import resolve_target

    instant = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return dataclasses.replace(spec, class_priors=resolve_target(conf.score.class_priors, spec.classes),
                               skyclass_version=code_version(),
                               data_release=data_release(conf, conf.lake.table(conf.score.catalog)),
                               scored_at=instant.isoformat(timespec="microseconds"))


def estimate_and_apply_priors(scored, spec: ScoringSpec):
    """``score.class_priors: estimate``: the EM prior estimate over the run's in-domain rows with usable photometry
    (Spark aggregations, :func:`skyclass.priors.estimate_priors_spark`), then every row re-weighted to it and its
    predicted class recomputed -- column expressions, no Python.

    Rows scored by the tabular fallback are re-weighted with the main model's source priors too (the two
    validation mixes differ only by the objects without a cutout).

    Returns
    -------
    (pyspark.sql.DataFrame, dict)
        The re-weighted rows and the estimate (``priors`` by class, ``iterations``, ``converged``, ``rows``).
    """
    from pyspark.sql import functions as F

    from skyclass.calibration import Calibration
    from skyclass.priors import estimate_priors_spark, reweight_columns

    source = Calibration.from_dict((spec.calibration or {}).get("main")).source_priors
    if source is None:
        raise ScoreError(f"score.class_priors=estimate needs a calibrated package (its validation class mix); model "
                         f"{spec.version} has none: retrain it, or set score.class_priors to a mix or null")
    columns = [PROBABILITY_COLUMNS[c] for c in spec.classes]
    usable = scored.where((F.col("status") != STATUS_BAD_PHOTOMETRY)
                          & (F.col("domain").isNull() | (F.col("domain") == "in")))
    estimate = estimate_priors_spark(usable, columns, source)
    estimate["rows"] = int(usable.count())
    estimate["priors"] = dict(zip(spec.classes, estimate["priors"]))
    estimate["source_priors"] = dict(zip(spec.classes, source))
    log.info("estimated class priors of the night (EM, %d iterations, %d rows): %s", estimate["iterations"],
             estimate["rows"], estimate["priors"])
    new = reweight_columns(columns, source, list(estimate["priors"].values()))
    out = scored
    for column, value in zip(columns, new):
        out = out.withColumn(column, value.cast("float"))
    best = F.greatest(*(F.col(c) for c in columns))
    predicted = F.lit(None).cast("string")
    for name, column in reversed(list(zip(spec.classes, columns))):
        predicted = F.when(F.col(column) == best, F.lit(name)).otherwise(predicted)
    return out.withColumn("predicted_class", predicted).select(*lake.PREDICTIONS.names), estimate


def night_provenance(conf, spec: ScoringSpec, catalog_path: str, n_scored: int, prior_estimate) -> dict:
    """The night partition's ``_provenance.json``: builder, versions, the config, the input tables' snapshots
    (path and their own provenance) and the prior estimate."""
    inputs = {"catalog": {"path": catalog_path, "provenance": _safe_provenance(catalog_path)},
              "model_package": {"path": spec.package_path, "version": spec.version,
                                "fingerprint": spec.fingerprint}}
    if spec.needs_images:
        cutouts_path = conf.lake.table("cutouts")
        inputs["cutouts"] = {"path": cutouts_path, "provenance": _safe_provenance(cutouts_path)}
    return {"builder": "skyclass score", "version": spec.skyclass_version, "created_at": spec.scored_at,
            "data_release": spec.data_release, "rows_scored": int(n_scored), "config": conf.to_dict(),
            "class_priors": {"setting": conf.score.class_priors,
                             "applied": dict(zip(spec.classes, spec.class_priors)) if spec.class_priors else None,
                             "estimate": prior_estimate},
            "inputs": inputs}


def _safe_provenance(path: str):
    try:
        return lake.read_provenance(path)
    except ValueError as err:
        return {"unreadable": str(err)}
