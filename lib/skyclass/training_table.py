"""The training table: catalog JOIN cutouts with label, a deterministic train/validation/test split, photometric
features and the training split's feature statistics.

Reads ``lake/catalog`` and ``lake/cutouts``; writes ``lake/training/{train,validation,test}/`` (schema
:func:`skyclass.lake.training_table`, plain Parquet with several row groups per file so Petastorm can shard them) and
``lake/training/stats.json``. The whole ``training`` folder is swapped in atomically
(:func:`skyclass.storage.replace_directory`), so a reader sees either the previous table or the new one.

stats.json also says what the table was made of, from the data: ``cutout_sources`` (rows per ``lake.CUTOUTS.source``
among the table's rows; ``unknown`` for cutouts written before sources were recorded), ``catalog_simulated``
(the catalog's ``_provenance.json`` says ``simulated: true``) and ``simulated`` (either holds). Training and
evaluation label results SIMULATED from these, never from a config flag.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

from skyclass import features, lake, storage
from skyclass.config import CLASSES, Config, SplitConfig
from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

# The split key is the first 13 hex digits (52 bits) of sha256("<salt>:<objid>"): exact in a double, and anyone
# can recompute an object's split with hashlib, outside Spark.
SPLIT_HASH_HEX_DIGITS = 13
# Features every training table stores and describes in stats.json: those of the presets; a table also holds the
# configured train.features (features.table_features).
TABLE_FEATURES = features.PAPER_FEATURES
# Hidden (underscore) partition folder Spark writes before the folders are renamed to train/validation/test.
_SPLIT_FOLDER_COLUMN = "_split_folder"
# Bytes of a training row besides its JPEG (ids, label, class, ten float32 features, Parquet overhead).
_ROW_OVERHEAD_BYTES = 120


class TrainingTableError(SkyclassError):
    """The training table cannot be built from what the lake holds, or (read by the trainer) it or its statistics
    are missing or unusable; the message says which and what to do."""


@dataclass
class TrainingTableResult:
    path: str
    rows: dict  # split -> rows written
    excluded: dict  # reason -> catalog rows left out
    without_cutout: int  # rows with good photometry and a label left out because they have no cutout
    tabular_only: bool  # no cutouts at all: jpeg is null everywhere
    stats_path: str
    elapsed_s: float
    label_counts: dict = field(default_factory=dict)
    cutout_sources: dict = field(default_factory=dict)  # source -> table rows with a cutout of that source
    catalog_simulated: bool = False

    @property
    def simulated(self) -> bool:
        """The table holds simulated data: a simulated catalog, or any cutout of a simulated source."""
        return self.catalog_simulated or any(n and s in lake.SIMULATED_SOURCES for s, n in self.cutout_sources.items())

    def __str__(self) -> str:
        total = sum(self.rows.values())
        lines = [f"training table: {total:,} rows in {self.path}",
                 "  " + ", ".join(f"{split} {self.rows.get(split, 0):,}" for split in lake.SPLITS),
                 "  train labels: " + ", ".join(f"{c} {self.label_counts.get(c, 0):,}" for c in CLASSES)]
        if self.excluded:
            lines.append("  excluded: " + ", ".join(f"{reason} {n:,}" for reason, n in sorted(self.excluded.items())))
        if self.cutout_sources:
            lines.append("  cutout sources: " + ", ".join(f"{s} {n:,}" for s, n in sorted(self.cutout_sources.items())))
        if self.simulated:
            lines.append("  SIMULATED data: " + ("the catalog is simulated" if self.catalog_simulated else
                                                 "some cutouts are simulated") + "; results on it are labelled so")
        if self.tabular_only:
            lines.append("  WARNING: no cutouts in the lake; tabular-only table (jpeg is null). "
                         "Run `skyclass cutouts` for image/multimodal training.")
        lines.append(f"  statistics (train split) in {self.stats_path}; {self.elapsed_s:.1f} s")
        return "\n".join(lines)


def split_group_key_column(group_by: str = "object"):
    """Spark Column: the string the split hashes. ``object``: the objid; ``field``: ``"<run>-<camcol>-<field>"``,
    decoded from the objID bits (:mod:`skyclass.objid`; SkyServer's run, camcol and field columns are those bits),
    so every object of an SDSS field gets the same split, whichever table (catalog, labels, cutouts) it came from.

    Raises
    ------
    ValueError
        An unknown ``group_by``.
    """
    from pyspark.sql import functions as F

    from skyclass import objid

    if group_by == "object":
        return F.col("objid").cast("string")
    if group_by == "field":
        return F.concat_ws("-", *[objid.part_column(p).cast("string") for p in objid.FIELD_KEY_PARTS])
    raise ValueError(f"unknown split.group_by {group_by!r}; expected object or field")


def split_fraction_column(salt: str, group_by: str = "object"):
    """Spark Column: a number in [0, 1) fixed by ``salt`` and the row's group key alone (uniform over groups).

    Equal to ``int(sha256(f"{salt}:{key}").hexdigest()[:13], 16) / 16**13`` with ``key`` the objid, or
    ``f"{run}-{camcol}-{field}"`` for ``group_by="field"`` (see :func:`split_group_key_column`).
    """
    from pyspark.sql import functions as F

    digest = F.sha2(F.concat(F.lit(f"{salt}:"), split_group_key_column(group_by)), 256)
    key = F.conv(F.substring(digest, 1, SPLIT_HASH_HEX_DIGITS), 16, 10).cast("double")
    return key / float(16 ** SPLIT_HASH_HEX_DIGITS)


def split_column(split: SplitConfig):
    """Spark Column: ``train``, ``validation`` or ``test`` for each object, by :func:`split_fraction_column`."""
    from pyspark.sql import functions as F

    fraction = split_fraction_column(split.salt, getattr(split, "group_by", "object"))
    return (F.when(fraction < split.train, "train")
            .when(fraction < split.train + split.validation, "validation")
            .otherwise("test"))


def label_column():
    """Spark Column: int32 position of ``class`` in :data:`skyclass.config.CLASSES` (null for any other class)."""
    from pyspark.sql import functions as F

    label = F.lit(None).cast("int")
    for index in reversed(range(len(CLASSES))):
        label = F.when(F.col("class") == CLASSES[index], F.lit(index)).otherwise(label)
    return label.cast("int")


def exclusion_reason_column():
    """Spark Column: why a catalog row cannot be a training row (null when it can).

    The catalog's ``quality`` (``zwarning``, ``bad_photometry``) comes first; a class outside CLASSES is
    ``unknown_class``.
    """
    from pyspark.sql import functions as F

    return (F.when(F.col("quality") != lake.QUALITY_OK, F.col("quality"))
            .when(~F.col("class").isin(*CLASSES), F.lit("unknown_class")))


def training_rows(catalog, cutouts, split: SplitConfig, feature_names: Sequence[str] = TABLE_FEATURES):
    """Catalog rows usable for training → rows of :func:`skyclass.lake.training_table` (a pure DataFrame transform).

    Parameters
    ----------
    catalog : pyspark.sql.DataFrame
        Rows of ``lake/catalog`` that passed :func:`exclusion_reason_column` (quality ok, known class).
    cutouts : pyspark.sql.DataFrame or None
        ``objid`` and ``jpeg`` of ``lake/cutouts``; rows without a cutout are dropped. None: no cutouts at all,
        ``jpeg`` is null in every row (a tabular-only table).
    split : SplitConfig
    feature_names : sequence of str
        Features to compute and store (:func:`skyclass.features.table_features`).

    Returns
    -------
    pyspark.sql.DataFrame
        Columns of ``lake.training_table(feature_names)`` in order; features as float32 (NaN stored as null).
    """
    from pyspark.sql import functions as F

    rows = features.add_features(catalog, feature_names)
    if cutouts is None:
        rows = rows.withColumn("jpeg", F.lit(None).cast("binary"))
    else:
        rows = rows.join(cutouts.select("objid", "jpeg"), on="objid", how="inner")
    rows = rows.withColumn("split", split_column(split)).withColumn("label", label_column())
    for name in feature_names:
        value = F.col(name).cast("float")
        # NaN would poison Spark's mean/std and the standardisation; null is skipped by both.
        rows = rows.withColumn(name, F.when(F.isnan(value), F.lit(None).cast("float")).otherwise(value))
    schema = lake.training_table(feature_names).spark_schema()
    return rows.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])


def feature_stats(train, names: Sequence[str] = TABLE_FEATURES) -> dict:
    """Mean and population standard deviation of each feature over ``train`` (nulls skipped), computed in Spark.

    Parameters
    ----------
    train : pyspark.sql.DataFrame
        The training split.
    names : sequence of str

    Returns
    -------
    dict
        ``{feature: {"mean": float, "std": float}}``; a feature with no values gets mean 0 and std 1 so that
        standardising it is harmless.
    """
    from pyspark.sql import functions as F

    aggregates = []
    for name in names:
        aggregates += [F.avg(name).alias(f"{name}__mean"), F.stddev_pop(name).alias(f"{name}__std")]
    row = train.agg(*aggregates).collect()[0]
    stats, empty = {}, []
    for name in names:
        mean, std = row[f"{name}__mean"], row[f"{name}__std"]
        if mean is None or std is None or not math.isfinite(mean) or not math.isfinite(std):
            empty.append(name)
            mean, std = 0.0, 1.0
        stats[name] = {"mean": float(mean), "std": float(std)}
    # One line, not one per feature: a labels-only table (no photometry) has every feature empty.
    if empty and len(empty) == len(names):
        log.warning("no feature has finite values (%d: no photometry) in the training split; storing mean 0, std 1",
                    len(empty))
    elif len(empty) == 1:
        log.warning("feature %s has no finite values in the training split; storing mean 0, std 1", empty[0])
    elif empty:
        log.warning("features %s have no finite values in the training split; storing mean 0, std 1",
                    ", ".join(empty))
    return stats


def build_training_table(spark, conf: Config) -> TrainingTableResult:
    """Join the catalog with the cutouts into ``lake/training`` with split, labels, features and statistics.

    Only catalog rows with quality ``ok`` and a class in CLASSES are used (the others are counted by reason and
    logged). When ``lake/cutouts`` holds any cutout, rows without one are left out (image and multimodal
    training need an image for every row); when it holds none, the table is tabular-only (``jpeg`` null) and a
    warning is logged.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        Uses ``lake`` (paths), ``split`` (fractions and salt), ``cutouts.size_px``, ``cutouts.rows_per_file``
        and ``cutouts.rows_per_row_group`` (file and row-group sizes, as for the cutouts table).

    Returns
    -------
    TrainingTableResult

    Raises
    ------
    TrainingTableError
        The catalog is missing, or no usable row is left for the training split.
    """
    from pyspark.sql import functions as F

    started = time.monotonic()
    root = conf.lake.path("root")
    catalog_path = conf.lake.table("catalog")
    labels_path = conf.lake.table("labels")
    image_mode = conf.train.mode == "image"
    has_labels = storage.table_exists(labels_path)
    if not storage.table_exists(catalog_path):
        if not has_labels:
            raise TrainingTableError(f"no catalog table at {catalog_path}; run `skyclass extract` first (or, for "
                                     "train.mode=image, import labelled cutouts with `skyclass cutouts --import`)")
        if not image_mode:
            raise TrainingTableError(
                f"no catalog table at {catalog_path}, only the labels-only catalog {labels_path} (objid and class, no "
                f"photometry): train.mode={conf.train.mode} needs ugriz photometry; run `skyclass extract` first, "
                "or build the table for train.mode=image")
        catalog = spark.createDataFrame([], lake.CATALOG.spark_schema())
    else:
        catalog = spark.read.parquet(storage.spark_uri(catalog_path))
    missing = [c for c in ("objid", "class", "quality", *lake.MAGNITUDES, "redshift") if c not in catalog.columns]
    if missing:
        raise TrainingTableError(f"catalog table {catalog_path} lacks column(s) {', '.join(missing)}; "
                                 "re-run `skyclass extract` to rewrite it with the current schema")
    table_features = features.table_features(conf)
    missing = [c for c in features.source_columns(table_features) if c not in catalog.columns]
    if missing:
        raise TrainingTableError(f"catalog table {catalog_path} lacks column(s) {', '.join(missing)}, which "
                                 f"train.features needs; re-run `skyclass extract` (it fetches what train.features "
                                 "needs from SkyServer; a CSV export must carry those columns)")
    without_photometry = 0
    labels_only = None
    if has_labels:
        # Labelled objects without photometry (imported cutouts with a class): rows of an image-only table.
        labels_only = (spark.read.parquet(storage.spark_uri(labels_path)).select("objid", "class")
                       .join(catalog.select("objid"), "objid", "left_anti").dropDuplicates(["objid"]))
        if image_mode:
            fill = {c: F.lit(None).cast(t) for c, t in ((m, "double") for m in (*lake.MAGNITUDES, "redshift"))}
            catalog = catalog.unionByName(labels_only.select(
                "objid", "class", F.lit(lake.QUALITY_OK).alias("quality"), *[v.alias(k) for k, v in fill.items()]),
                allowMissingColumns=True)

    reasons = catalog.withColumn("reason", exclusion_reason_column())
    excluded = {r["reason"]: r["count"] for r in reasons.where(F.col("reason").isNotNull())
                .groupBy("reason").count().collect()}
    for reason, count in sorted(excluded.items()):
        log.info("training table: %d catalog rows excluded (%s)", count, reason)
    usable = reasons.where(F.col("reason").isNull()).drop("reason")

    cutouts = _cutouts_or_none(spark, conf.lake.table("cutouts"))
    without_cutout = 0
    if cutouts is None:
        log.warning("training table: the lake has no cutouts (%s); building a TABULAR-ONLY table with jpeg null. "
                    "Run `skyclass cutouts` before training image or multimodal models.", conf.lake.table("cutouts"))
    else:
        without_cutout = usable.join(cutouts.select("objid"), on="objid", how="left_anti").count()
        if without_cutout:
            excluded["no_cutout"] = without_cutout
            log.info("training table: %d usable catalog rows excluded (no cutout yet; `skyclass cutouts` fetches "
                     "them)", without_cutout)

    if labels_only is not None:
        if image_mode:
            without_photometry = usable.where(F.col("u").isNull()).count()
        else:
            # Tabular and multimodal models need photometry: labels-only rows are left out, and said so.
            no_photometry = labels_only.count()
            if no_photometry:
                excluded["no_photometry"] = no_photometry
                log.info("training table: %d labels-only objects (%s) left out: train.mode=%s needs photometry "
                         "(build with train.mode=image to use them)", no_photometry, labels_path, conf.train.mode)

    catalog_simulated = _catalog_is_simulated(catalog_path)
    cutout_sources = {}
    if cutouts is not None:
        # The same inner join training_rows makes (it drops no other row), so these count the table's rows.
        cutout_sources = {r["source"]: int(r["count"]) for r in usable.select("objid")
                          .join(cutouts.select("objid", "source"), on="objid", how="inner")
                          .groupBy("source").count().collect()}
        if cutout_sources.get(lake.SOURCE_UNKNOWN):
            log.warning("training table: %d rows have cutouts of unknown source (written before cutouts recorded "
                        "their source): results on them cannot be labelled simulated or real. Re-download them "
                        "(move %s aside and run `skyclass cutouts`) to know.", cutout_sources[lake.SOURCE_UNKNOWN],
                        conf.lake.table("cutouts"))

    rows = training_rows(usable, cutouts, conf.split, table_features)
    # Counts and statistics need no JPEG bytes: the joined rows without them are computed once and cached (Parquet
    # reads only the columns a query uses); only the write below reads the images, once.
    narrow = rows.drop("jpeg").persist()
    counts = narrow.groupBy("split", "class").count().collect()
    per_split = {s: 0 for s in lake.SPLITS}
    label_counts = {c: 0 for c in CLASSES}
    for r in counts:
        per_split[r["split"]] += r["count"]
        if r["split"] == "train":
            label_counts[r["class"]] += r["count"]
    if per_split["train"] == 0:
        narrow.unpersist()
        raise TrainingTableError(
            f"no usable rows for the training split (rows per split: {per_split}; excluded: {excluded}). Check "
            f"that {catalog_path} holds quality 'ok' rows and that split.train > 0.")
    log.info("training table rows: %s; train labels: %s", per_split, label_counts)

    stats = {
        "classes": list(CLASSES),
        "features": feature_stats(narrow.where(F.col("split") == "train"), table_features),
        "label_counts": label_counts,
        "rows": per_split,
        "image_size_px": _image_size_px(cutouts, conf),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cutout_sources": cutout_sources,
        "catalog_simulated": catalog_simulated,
        "simulated": catalog_simulated or any(s in lake.SIMULATED_SOURCES for s in cutout_sources),
        # Rows of a labels-only catalog (no photometry): only train.mode=image may train on such a table.
        "rows_without_photometry": int(without_photometry),
        "split_group_by": conf.split.group_by,
    }
    bytes_per_row = _cutout_bytes_per_row(spark, conf.lake.table("cutouts")) + _ROW_OVERHEAD_BYTES
    training_root = f"{root.rstrip('/')}/training"

    # One output task per ~rows_per_file rows: each writes at most one file per split of about that size.
    tasks = max(1, math.ceil(sum(per_split.values()) / conf.cutouts.rows_per_file))

    def write(staging: str) -> None:
        # Rows go out in a deterministic pseudo-random order: catalogs often arrive grouped by class (SkyServer
        # exports made by per-class queries), and a row group of one class defeats the trainer's shuffle buffer,
        # which is smaller than a row group. Hash partitioning then a sort inside each partition gives every file
        # that mix with one shuffle of the rows; a global orderBy would add a sampling pass over every JPEG for
        # its range boundaries and gain nothing (readers shuffle row groups, not a global order).
        shuffled = (rows.repartition(tasks, F.col("objid"))
                    .sortWithinPartitions(F.xxhash64(F.col("objid"), F.lit(conf.split.salt), F.lit("order"))))
        (shuffled.withColumn(_SPLIT_FOLDER_COLUMN, F.col("split")).write
         .partitionBy(_SPLIT_FOLDER_COLUMN)
         .option("maxRecordsPerFile", conf.cutouts.rows_per_file)
         # Row groups of ~rows_per_row_group rows: Petastorm hands whole row groups to its workers.
         .option("parquet.block.size", int(max(64 * 1024, conf.cutouts.rows_per_row_group * bytes_per_row)))
         .parquet(staging))
        # One pass over the joined data wrote all three splits; give their folders the names readers expect.
        for split in lake.SPLITS:
            _rename_or_create(f"{staging}/{_SPLIT_FOLDER_COLUMN}={split}", f"{staging}/{split}")
        storage.write_text(f"{staging}/stats.json", json.dumps(stats, indent=2, sort_keys=True))

    storage.replace_directory(training_root, write)
    narrow.unpersist()
    elapsed = time.monotonic() - started
    log.info("training table written to %s in %.1f s", training_root, elapsed)
    return TrainingTableResult(path=training_root, rows=per_split, excluded=excluded, without_cutout=without_cutout,
                               tabular_only=cutouts is None, stats_path=lake.training_stats_path(root),
                               elapsed_s=elapsed, label_counts=label_counts, cutout_sources=cutout_sources,
                               catalog_simulated=catalog_simulated)


def _catalog_is_simulated(catalog_path: str) -> bool:
    """The catalog's provenance says it is simulated (``skyclass simulate`` writes one; extract does not)."""
    try:
        provenance = lake.read_provenance(catalog_path)
    except ValueError as err:
        raise TrainingTableError(str(err)) from None
    return bool(provenance and provenance.get("simulated") is True)


def _cutouts_or_none(spark, path: str):
    """``objid, jpeg, size_px, source`` of the cutouts table, or None when there is no table or it is empty."""
    if not storage.table_exists(path):
        return None
    cutouts = lake.read_cutouts(spark, path).select("objid", "jpeg", "size_px", "source")
    if not cutouts.select("objid").limit(1).collect():
        return None
    return cutouts


def _cutout_bytes_per_row(spark, path: str) -> float:
    """Mean bytes per row of the cutouts table, from its file sizes and Parquet row counts (no data read)."""
    rows, size = lake.table_size(spark, path)
    return size / rows if rows else 0.0


def _image_size_px(cutouts, conf: Config) -> int:
    if cutouts is None:
        return conf.cutouts.size_px
    from pyspark.sql import functions as F

    row = cutouts.agg(F.min("size_px").alias("lo"), F.max("size_px").alias("hi")).collect()[0]
    if row["lo"] != row["hi"]:
        log.warning("cutouts of different sizes (%s..%s px) in the lake; readers resize to %d px", row["lo"],
                    row["hi"], row["hi"])
    return int(row["hi"])


def _rename_or_create(source: str, target: str) -> None:
    """Move ``source`` to ``target``; an empty split (no source folder) becomes an empty folder."""
    if storage.exists(source):
        storage.move(source, target)
    else:
        storage.make_dirs(target)
