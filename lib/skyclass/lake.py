"""The lake's tables: each schema is declared once here, and the Spark schema, the Arrow schema and the Petastorm
reader fields are derived from it.

Layout under ``lake.root`` (see README "The lake")::

    catalog/              labelled objects (PhotoObj JOIN SpecObj), Parquet
    photometric/          unlabelled photometric objects (PhotoObj without spectrum), Parquet
    cutouts/              JPEG cutouts at the training size with objid, ra, dec, scale, size, fetch time, source
    cutout_failures/      objects whose download failed, with the reason; retried on the next run
    training/train|validation|test/   catalog JOIN cutouts with label, split and features
    training/stats.json   per-feature mean/std (training split only), label counts, class names, cutout sources
    <table>/_provenance.json   how a table was made (builder, version, creation time, rows, ``simulated``), where
                          its builder writes one (Spark and pyarrow skip ``_`` files)
    _locks/               lock files of stages that must not run twice at once (cutouts.lock)

The catalog schema also says which photometric columns a catalog may hold (:func:`is_photo_column`) and when a
value is usable, and holds the quality rule of catalog rows (:func:`quality_column`), which extraction applies.
What is computed from the columns for a model is :mod:`skyclass.features` (a later stage).

Every file operation on these paths outside Spark's reader and writer goes through :mod:`skyclass.storage`
(which also swaps tables in: :func:`skyclass.storage.replace_directory`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from skyclass import storage

MAGNITUDES = ("u", "g", "r", "i", "z")  # the catalog's u..z columns (PhotoObj's shorthand for modelMag)
BANDS = MAGNITUDES
# The catalog's per-band PhotoObj columns, ``<family>_<band>`` in lower case (SkyServer's names are
# case-insensitive; the lake stores them lower-case): magnitudes, their errors, extinction and sizes. A feature
# (skyclass.features) may name any of them; extraction fetches what the configured features need.
MAGNITUDE_FAMILIES = ("psfmag", "cmodelmag", "modelmag", "petromag", "fibermag", "fiber2mag", "devmag", "expmag")
PER_BAND_FAMILIES = (MAGNITUDE_FAMILIES + tuple(f"{m}err" for m in MAGNITUDE_FAMILIES)
                     + ("extinction", "petrorad", "petroraderr", "petror50", "petror90", "fracdev", "devrad", "exprad",
                        "devab", "expab"))


def is_photo_column(name: str) -> bool:
    """Whether ``name`` (any case) is a photometric column the catalog can hold: u..z, or ``<family>_<band>`` of
    :data:`PER_BAND_FAMILIES` and :data:`BANDS`."""
    lower = name.lower()
    if lower in MAGNITUDES:
        return True
    family, sep, band = lower.rpartition("_")
    return bool(sep) and family in PER_BAND_FAMILIES and band in BANDS


def is_magnitude_column(name: str) -> bool:
    """u..z or ``<magnitude family>_<band>``: values outside (:data:`MAG_MIN`, :data:`MAG_MAX`) are unusable."""
    lower = name.lower()
    family, _, band = lower.rpartition("_")
    return lower in MAGNITUDES or (family in MAGNITUDE_FAMILIES and band in BANDS)


# Quality values of catalog rows (the first rule that fails wins).
QUALITY_OK = "ok"
QUALITY_ZWARNING = "zwarning"
QUALITY_BAD_PHOTOMETRY = "bad_photometry"

# Where a cutout came from (lake.CUTOUTS.source), recorded from the data itself, never from a config flag.
SOURCE_SKYSERVER = "skyserver"  # an ImgCutout/getjpeg answer that did not say it was rendered
SOURCE_STANDIN = "standin-simulated"  # rendered by our SkyServer stand-in (it says so in a response header)
SOURCE_SIMULATE = "simulate"  # rendered by `skyclass simulate`
SOURCE_UNKNOWN = "unknown"  # a cutouts file written before sources were recorded
SIMULATED_SOURCES = frozenset({SOURCE_STANDIN, SOURCE_SIMULATE})
CUTOUT_SOURCES = (SOURCE_SKYSERVER, SOURCE_STANDIN, SOURCE_SIMULATE, SOURCE_UNKNOWN)
# A small JSON document beside a table's data files; the leading "_" keeps Spark, pyarrow and Petastorm away.
PROVENANCE_FILE = "_provenance.json"

# SDSS writes -9999 (and sometimes other large negatives) for a magnitude it could not measure; real magnitudes
# of SDSS objects lie well inside this range (the shared data goes from ~7 to ~32).
MAG_MIN = 0.0
MAG_MAX = 40.0
# Any other PhotoObj column (errors, extinction, radii) uses -9999 (or -1000) for "not measured".
SENTINEL_MAX = -900.0


# --- the quality rule of catalog rows (extract applies it; scoring flags the same rows) ---------------------------

def photometry_ok_column(bands: Sequence[str] = MAGNITUDES):
    """Spark boolean Column: every magnitude is present and inside the plausible range (no -9999 sentinel)."""
    from pyspark.sql import functions as F

    cond = F.lit(True)
    for m in bands:
        cond = cond & column_ok(F.col(m), m)
    return cond


def column_ok(col, name: str):
    """Spark boolean Column: the value of catalog column ``name`` is usable (present, finite, no sentinel; a
    magnitude also within (MAG_MIN, MAG_MAX))."""
    from pyspark.sql import functions as F

    ok = col.isNotNull() & ~F.isnan(col)
    if is_magnitude_column(name):
        return ok & (col > MAG_MIN) & (col < MAG_MAX)
    return ok & (col > SENTINEL_MAX)


def photometry_ok_pandas(frame, bands: Sequence[str] = MAGNITUDES):
    """Boolean numpy array: the given magnitudes (columns of ``frame``) are all usable (see :func:`column_ok`)."""
    import numpy as np

    ok = np.ones(len(frame), dtype=bool)
    for band in bands:
        ok &= column_ok_values(frame[band], band)
    return ok


def column_ok_values(values, name: str):
    """numpy twin of :func:`column_ok` for a pandas Series (or array) of catalog column ``name``."""
    import numpy as np
    import pandas as pd

    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(x)
    if is_magnitude_column(name):
        return ok & (x > MAG_MIN) & (x < MAG_MAX)
    return ok & (x > SENTINEL_MAX)


def quality_column(table: str):
    """Spark Column: the ``quality`` of a raw ``catalog`` or ``photometric`` row; the first rule that fails wins.

    ``zWarning != 0`` (catalog only) → ``zwarning``; any u..z magnitude missing or implausible (sentinels such as
    -9999) → ``bad_photometry``; else ``ok``.
    """
    from pyspark.sql import functions as F

    quality = F.when(~photometry_ok_column(), F.lit(QUALITY_BAD_PHOTOMETRY)).otherwise(F.lit(QUALITY_OK))
    if table == "catalog":
        quality = F.when(F.coalesce(F.col("zwarning"), F.lit(0)) != 0, F.lit(QUALITY_ZWARNING)).otherwise(quality)
    return quality


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def spark_schema(self):
        """The Spark ``StructType`` of this table."""
        from pyspark.sql import types as T

        return T.StructType([T.StructField(c.name, _spark_type(c.type), c.nullable) for c in self.columns])

    def with_columns(self, extra: Sequence[Column]) -> "Table":
        """This table with further columns appended (configurable photometry columns)."""
        have = set(self.names)
        return Table(self.name, self.columns + tuple(c for c in extra if c.name not in have))


def _spark_type(t: pa.DataType):
    from pyspark.sql import types as T

    if pa.types.is_int64(t):
        return T.LongType()
    if pa.types.is_int32(t):
        return T.IntegerType()
    if pa.types.is_float64(t):
        return T.DoubleType()
    if pa.types.is_float32(t):
        return T.FloatType()
    if pa.types.is_string(t):
        return T.StringType()
    if pa.types.is_binary(t):
        return T.BinaryType()
    if pa.types.is_boolean(t):
        return T.BooleanType()
    if pa.types.is_timestamp(t):
        return T.TimestampType()
    if pa.types.is_decimal(t):
        return T.DecimalType(t.precision, t.scale)
    raise TypeError(f"no Spark type declared for Arrow type {t}")


# specObjID exceeds the signed 64-bit range (up to ~1.3e19): exact as DECIMAL(20,0), never float.
SPECOBJID_TYPE = pa.decimal128(20, 0)

_MAG_COLUMNS = tuple(Column(m, pa.float64(), doc=f"{m} magnitude (modelMag)") for m in MAGNITUDES)

CATALOG = Table("catalog", (
    Column("objid", pa.int64(), False, "PhotoObj objID"),
    Column("specobjid", SPECOBJID_TYPE, False, "SpecObj specObjID (unsigned 64-bit)"),
    Column("ra", pa.float64(), False, "degrees"),
    Column("dec", pa.float64(), False, "degrees"),
    *_MAG_COLUMNS,
    Column("class", pa.string(), False, "SpecObj class: GALAXY, STAR or QSO"),
    Column("redshift", pa.float64(), doc="SpecObj z"),
    Column("zwarning", pa.int64(), doc="SpecObj zWarning (0 = no known problem)"),
    Column("quality", pa.string(), False, "ok | zwarning | bad_photometry"),
))

PHOTOMETRIC = Table("photometric", (
    Column("objid", pa.int64(), False, "PhotoObj objID"),
    Column("ra", pa.float64(), False, "degrees"),
    Column("dec", pa.float64(), False, "degrees"),
    *_MAG_COLUMNS,
    Column("quality", pa.string(), False, "ok | bad_photometry"),
))

CUTOUTS = Table("cutouts", (
    Column("objid", pa.int64(), False),
    Column("ra", pa.float64(), False),
    Column("dec", pa.float64(), False),
    Column("scale_arcsec_per_px", pa.float64(), False),
    Column("size_px", pa.int32(), False),
    Column("jpeg", pa.binary(), False, "JPEG bytes as served by ImgCutout/getjpeg"),
    Column("fetched_at", pa.timestamp("us", tz="UTC"), False),
    Column("source", pa.string(), False, "skyserver | standin-simulated | simulate (read as unknown when absent)"),
))

CUTOUT_FAILURES = Table("cutout_failures", (
    Column("objid", pa.int64(), False),
    Column("ra", pa.float64(), False),
    Column("dec", pa.float64(), False),
    Column("reason", pa.string(), False),
    Column("attempts", pa.int32(), False),
    Column("failed_at", pa.timestamp("us", tz="UTC"), False),
))

_TRAINING_KEYS = (
    Column("objid", pa.int64(), False),
    Column("split", pa.string(), False, "train | validation | test"),
    Column("label", pa.int32(), False, "index into CLASSES"),
    Column("class", pa.string(), False),
)
_TRAINING_JPEG = Column("jpeg", pa.binary(), True, "cutout JPEG; null when the object has none")


def training_table(features: Sequence[str]) -> Table:
    """Schema of the training table holding the given feature columns (float32, in this order).

    Which features a table holds is the training table builder's choice (skyclass.training_table: every preset's
    and the configured ones); :data:`TRAINING` is the table of the ``paper`` preset.
    """
    return Table("training", _TRAINING_KEYS + tuple(Column(f, pa.float32(), doc="feature") for f in features)
                 + (_TRAINING_JPEG,))

PREDICTIONS = Table("predictions", (
    Column("objid", pa.int64(), False),
    Column("predicted_class", pa.string(), True),
    Column("p_galaxy", pa.float32(), True),
    Column("p_star", pa.float32(), True),
    Column("p_qso", pa.float32(), True),
    Column("model_version", pa.string(), False),
    Column("model_fingerprint", pa.string(), True,
           "fingerprint of the model package (skyclass.package); null in nights scored before fingerprints"),
    Column("status", pa.string(), False, "ok | no_cutout | bad_photometry"),
    # Trust and provenance (issue 12); null in nights scored before they existed.
    Column("domain", pa.string(), True, "in | outside_magnitudes | far_from_training (skyclass.domain)"),
    Column("domain_score", pa.float32(), True, "k-th training-neighbour distance / threshold (> 1: far)"),
    Column("skyclass_version", pa.string(), True, "skyclass code version that scored the row"),
    Column("data_release", pa.string(), True, "SDSS data release of the catalog, e.g. dr17"),
    Column("scored_at", pa.timestamp("us", tz="UTC"), True, "UTC instant of the scoring run"),
))

SPLITS = ("train", "validation", "test")


def training_split_path(lake_root: str, split: str) -> str:
    """Folder of one split of the training table (each split is its own Parquet dataset, for Petastorm)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return os.path.join(lake_root, "training", split)


def training_stats_path(lake_root: str) -> str:
    return os.path.join(lake_root, "training", "stats.json")


def read_cutouts(spark, path: str):
    """The cutouts table with every column of :data:`CUTOUTS`; ``source`` is ``unknown`` where a file lacks it.

    Files written before the ``source`` column existed sit beside newer ones in one table; an explicit schema makes
    Spark read the column as null from the old files (instead of depending on which footer it infers from), and
    null becomes :data:`SOURCE_UNKNOWN`.

    Parameters
    ----------
    spark : SparkSession
    path : str
        The cutouts table.

    Returns
    -------
    pyspark.sql.DataFrame
    """
    from pyspark.sql import functions as F

    frame = spark.read.schema(CUTOUTS.spark_schema()).parquet(storage.spark_uri(path))
    return frame.withColumn("source", F.coalesce(F.col("source"), F.lit(SOURCE_UNKNOWN)))


def _provenance_path(table_path: str) -> str:
    return storage.join(table_path, PROVENANCE_FILE)


def write_provenance(table_path: str, provenance: dict) -> str:
    """Write ``<table_path>/_provenance.json``: how the table was made (STYLE guideline 14).

    Parameters
    ----------
    table_path : str
        The table folder (it must exist; a staging folder works, so the file travels with the table's swap).
    provenance : dict
        JSON-serialisable; by convention ``builder``, ``version``, ``created_at``, ``rows``, ``simulated`` and
        ``inputs``.

    Returns
    -------
    str
        Path of the file.
    """
    path = _provenance_path(table_path)
    storage.write_text(path, json.dumps(provenance, indent=2, sort_keys=True))
    return path


def read_provenance(table_path: str):
    """The provenance a table's builder wrote (see :func:`write_provenance`), or None when there is none.

    Raises
    ------
    ValueError
        The file exists but is not a JSON object (the message names it).
    """
    path = _provenance_path(table_path)
    if not storage.is_file(path):
        return None
    text = storage.read_text(path)
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it or rebuild the table") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} holds {type(document).__name__}, not a JSON object; delete it or rebuild the table")
    return document


def lock_path(lake_root: str, name: str) -> str:
    """The lock file ``<lake>/_locks/<name>.lock`` (see :class:`skyclass.storage.Lock`)."""
    return f"{lake_root.rstrip('/')}/_locks/{name}.lock"


def table_size(spark, path: str) -> tuple[int, int]:
    """Rows and bytes of a lake table's visible Parquet files, from Parquet footers (no column data is read).

    Parameters
    ----------
    spark : SparkSession
    path : str
        Table folder (local path or URI).

    Returns
    -------
    (int, int)
        ``(rows, bytes)``; ``(0, 0)`` when there is no table.
    """
    if not storage.table_exists(path):
        return 0, 0
    return spark.read.parquet(storage.spark_uri(path)).count(), storage.visible_files_size(path)
