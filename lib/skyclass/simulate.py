"""A SIMULATED lake of any size for load tests: a catalog table and its cutouts, generated inside the executors.

Nothing here is real data. Objects get class-dependent colours (roughly the real loci, as in
``tests/catalog_fixture.py``) and cutouts drawn by the stand-in renderer (:mod:`skyclass.standin.render`), so the
scoring job, the training table and the benchmarks can run on millions of objects without SkyServer.

How it scales: the driver only plans ``ceil(n_objects / rows_per_partition)`` partitions (``spark.range``: one
row per partition); each task generates its objects from ``numpy.random.default_rng([seed, partition])`` and
writes them, so the driver never holds catalog rows or images, and the same ``(n_objects, seed,
rows_per_partition)`` always gives the same lake. The cutouts pass regenerates each partition's objects from the
same generator rather than reading the catalog back, which keeps the true class (the photometric table has none)
for drawing galaxies as galaxies and stars as points.

Statuses the scoring job must handle are exercised on purpose: a fraction of objects has no cutout at all
(``missing_cutout_fraction``), a fraction has one sentinel magnitude (-9999, quality ``bad_photometry``), and
optionally a fraction of cutouts is truncated JPEG bytes (``corrupt_cutout_fraction``).

It cannot destroy a real lake: before writing, :func:`check_lake_is_simulated` refuses any lake whose source
tables (catalog, photometric, cutouts, training) are not all marked simulated, and what it writes is marked so:
each table gets a ``_provenance.json`` (builder ``skyclass simulate``, ``simulated: true``) and every cutout row
carries ``source = simulate``.
"""
from __future__ import annotations

import decimal
import functools
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from skyclass import lake, storage
from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

CLASS_MIX = {"GALAXY": 0.45, "STAR": 0.32, "QSO": 0.23}
# objIDs of simulated objects: far from the fixtures' and the shared data's ranges, one block of 10**10 per seed.
SIMULATED_OBJID_BASE = 1_237_700_000_000_000_000
_OBJIDS_PER_SEED = 10**10
# specObjIDs straddle 2**63 like real DR16+ ids, so DECIMAL(20,0) handling is exercised too.
_SPECOBJID_BASE = 2**63 - 8192 * 100
SENTINEL_MAG = -9999.0
# Cutouts are rendered and yielded in chunks of this many rows, which bounds a task's memory (~2 KB per JPEG).
_RENDER_CHUNK_ROWS = 1000
# Truncated JPEGs keep the header only, like a download cut off mid-body.
_CORRUPT_JPEG_BYTES = 100
BUILDER = "skyclass simulate"
# Tables of a lake that hold (or are made from) source data; a lake may be simulated into only when each one that
# exists is marked simulated. Models, predictions and reports are outputs and are not touched by simulate.
GUARDED_TABLES = ("catalog", "photometric", "cutouts", "training")


class SimulationError(SkyclassError, ValueError):
    """The simulation was asked for something impossible (the message names the argument)."""


class RealLakeError(SimulationError):
    """``skyclass simulate`` was pointed at a lake holding a table that is not marked simulated."""


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate_lake` wrote."""

    catalog: str  # lake table name ("photometric" or "catalog")
    catalog_path: str
    cutouts_path: str
    n_objects: int
    n_cutouts: int
    quality_counts: Mapping[str, int]
    partitions: int
    seed: int
    seconds: float

    @property
    def n_without_cutout(self) -> int:
        return self.n_objects - self.n_cutouts

    def __str__(self) -> str:
        quality = ", ".join(f"{k}={v:,}" for k, v in sorted(self.quality_counts.items()))
        rate = self.n_objects / self.seconds if self.seconds > 0 else float("nan")
        return (f"SIMULATED lake (seed {self.seed}): {self.n_objects:,} objects in {self.catalog_path} "
                f"({quality}), {self.n_cutouts:,} simulated cutouts in {self.cutouts_path} "
                f"({self.n_without_cutout:,} objects without one); {self.partitions} partitions, "
                f"{self.seconds:.1f} s ({rate:,.0f} objects/s)")


def simulated_objects(partition: int, start: int, stop: int, *, seed: int = 0,
                      missing_cutout_fraction: float = 0.03, sentinel_fraction: float = 0.01,
                      corrupt_cutout_fraction: float = 0.0) -> pd.DataFrame:
    """The objects with global indices ``start .. stop-1`` of a simulated lake (partition ``partition``).

    Deterministic: the same arguments always give the same frame.

    Parameters
    ----------
    partition : int
        Partition number; with ``seed`` it seeds the random generator.
    start, stop : int
        Global index range of the partition's objects (objIDs derive from it, so they are unique in the lake).
    seed : int
        Seed of the whole simulated lake (0 <= seed < 10**8).
    missing_cutout_fraction, sentinel_fraction, corrupt_cutout_fraction : float
        Expected fractions of objects without a cutout, with one -9999 magnitude, with a truncated JPEG.

    Returns
    -------
    pandas.DataFrame
        Columns objid, specobjid (Python ints), ra, dec, u, g, r, i, z, class, redshift, zwarning, quality,
        has_cutout, corrupt_cutout.
    """
    n = stop - start
    rng = np.random.default_rng([seed, partition])
    classes = rng.choice(list(CLASS_MIX), size=n, p=list(CLASS_MIX.values()))
    is_galaxy, is_star, is_qso = classes == "GALAXY", classes == "STAR", classes == "QSO"
    r = rng.uniform(14.5, 20.5, n)
    # The real loci, roughly: QSOs are blue in u-g, galaxies red in g-r, stars spread along their sequence.
    ug = np.select([is_galaxy, is_star, is_qso],
                   [rng.normal(1.8, 0.3, n), rng.normal(1.2, 0.5, n), rng.normal(0.3, 0.2, n)])
    gr = np.select([is_galaxy, is_star, is_qso],
                   [rng.normal(0.8, 0.15, n), rng.normal(0.5, 0.3, n), rng.normal(0.2, 0.15, n)])
    ri = rng.normal(0.35, 0.1, n)
    iz = rng.normal(0.2, 0.1, n)
    redshift = np.select([is_galaxy, is_star, is_qso],
                         [rng.uniform(0.01, 0.4, n), rng.normal(0.0, 0.0003, n), rng.uniform(0.3, 3.5, n)])
    g = r + gr
    mags = {"u": g + ug, "g": g, "r": r, "i": r - ri, "z": r - ri - iz}
    # One unmeasured band per sentinel object, as SkyServer reports it.
    sentinel = rng.random(n) < sentinel_fraction
    sentinel_band = rng.integers(0, len(lake.MAGNITUDES), n)
    for k, band in enumerate(lake.MAGNITUDES):
        mags[band] = np.where(sentinel & (sentinel_band == k), SENTINEL_MAG, mags[band].round(5))
    has_cutout = rng.random(n) >= missing_cutout_fraction
    corrupt = has_cutout & (rng.random(n) < corrupt_cutout_fraction)
    zwarning = np.where(rng.random(n) < 0.05, 4, 0)
    index = np.arange(start, stop, dtype=np.int64)
    frame = pd.DataFrame({
        "objid": SIMULATED_OBJID_BASE + seed * _OBJIDS_PER_SEED + index,
        "specobjid": [_SPECOBJID_BASE + 8192 * int(k) for k in index],
        "ra": rng.uniform(0.0, 360.0, n).round(7),
        "dec": np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-10.0)), np.sin(np.radians(70.0)), n))).round(7),
        **mags,
        "class": classes,
        "redshift": redshift.round(7),
        "zwarning": zwarning.astype(np.int64),
        "has_cutout": has_cutout,
        "corrupt_cutout": corrupt,
    })
    frame["quality"] = np.where(~lake.photometry_ok_pandas(frame), lake.QUALITY_BAD_PHOTOMETRY,
                                np.where(zwarning != 0, lake.QUALITY_ZWARNING, lake.QUALITY_OK))
    return frame


def partition_bounds(partition: int, n_objects: int, rows_per_partition: int) -> tuple[int, int]:
    """Global index range ``[start, stop)`` of one partition."""
    start = partition * rows_per_partition
    return start, min(n_objects, start + rows_per_partition)


def catalog_rows(objects: pd.DataFrame, table: str) -> pd.DataFrame:
    """Simulated objects → rows of the lake table ``table`` (``photometric`` or ``catalog``), in schema order."""
    if table == "photometric":
        out = objects.copy()
        # Photometric objects have no spectrum, so no redshift-based quality: only the photometry rule applies.
        out["quality"] = np.where(objects["quality"] == lake.QUALITY_BAD_PHOTOMETRY,
                                  lake.QUALITY_BAD_PHOTOMETRY, lake.QUALITY_OK)
        return out[lake.PHOTOMETRIC.names]
    if table == "catalog":
        out = objects.copy()
        out["specobjid"] = [decimal.Decimal(v) for v in objects["specobjid"]]
        return out[lake.CATALOG.names]
    raise SimulationError(f"unknown catalog table {table!r}; expected photometric or catalog")


def _catalog_batches(batches: Iterator[pd.DataFrame], *, table: str, n_objects: int, rows_per_partition: int,
                     options: Mapping) -> Iterator[pd.DataFrame]:
    # Runs in the executors: each input row is one partition number.
    for batch in batches:
        for partition in batch["id"].tolist():
            start, stop = partition_bounds(int(partition), n_objects, rows_per_partition)
            yield catalog_rows(simulated_objects(int(partition), start, stop, **options), table)


def _cutout_batches(batches: Iterator[pd.DataFrame], *, n_objects: int, rows_per_partition: int, options: Mapping,
                    scale_arcsec_per_px: float, size_px: int, fetched_at: datetime) -> Iterator[pd.DataFrame]:
    # Runs in the executors; imported here so the driver never loads the renderer.
    from skyclass.standin.render import SkyObject, render_cutout

    for batch in batches:
        for partition in batch["id"].tolist():
            start, stop = partition_bounds(int(partition), n_objects, rows_per_partition)
            objects = simulated_objects(int(partition), start, stop, **options)
            objects = objects[objects["has_cutout"]]
            for first in range(0, len(objects), _RENDER_CHUNK_ROWS):
                chunk = objects.iloc[first:first + _RENDER_CHUNK_ROWS]
                jpegs = []
                for objid, ra, dec, cls, g, r, i, corrupt in zip(
                        chunk["objid"].tolist(), chunk["ra"].tolist(), chunk["dec"].tolist(),
                        chunk["class"].tolist(), chunk["g"].tolist(), chunk["r"].tolist(), chunk["i"].tolist(),
                        chunk["corrupt_cutout"].tolist()):
                    sky = SkyObject(objid, ra, dec, cls, g, r, i)
                    jpeg = render_cutout(ra, dec, [sky], scale_arcsec_per_px=scale_arcsec_per_px,
                                         width_px=size_px, height_px=size_px)
                    jpegs.append(jpeg[:_CORRUPT_JPEG_BYTES] if corrupt else jpeg)
                yield pd.DataFrame({
                    "objid": chunk["objid"].to_numpy(np.int64),
                    "ra": chunk["ra"].to_numpy(np.float64),
                    "dec": chunk["dec"].to_numpy(np.float64),
                    "scale_arcsec_per_px": np.full(len(chunk), scale_arcsec_per_px, np.float64),
                    "size_px": np.full(len(chunk), size_px, np.int32),
                    "jpeg": jpegs,
                    "fetched_at": pd.Series([fetched_at] * len(chunk), dtype="datetime64[us]"),
                    "source": lake.SOURCE_SIMULATE,
                })


def why_not_simulated(spark, conf, name: str):
    """Why the lake table ``name`` does not count as simulated, or None when it does (or does not exist).

    ``catalog`` and ``photometric`` need a ``_provenance.json`` saying ``simulated: true``; ``cutouts`` needs
    every row's ``source`` to be a simulated one (``simulate``, ``standin-simulated``: the rows carry their own
    mark, and a table written before sources were recorded reads as ``unknown``); ``training`` needs its
    stats.json to say it was built from a simulated catalog with simulated cutouts only.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
    name : str
        One of :data:`GUARDED_TABLES`.

    Returns
    -------
    str or None
    """
    path = conf.lake.table(name)
    if name == "training":
        stats_path = lake.training_stats_path(conf.lake.path("root"))
        if not storage.table_exists(lake.training_split_path(conf.lake.path("root"), "train")):
            return None
        from skyclass.input_pipeline import load_training_stats

        try:
            stats = load_training_stats(stats_path).raw
        except SkyclassError as err:
            return f"its statistics are unreadable ({err})"
        if not stats.get("catalog_simulated"):
            return f"{stats_path} does not say it was built from a simulated catalog"
        real = sorted(s for s, n in (stats.get("cutout_sources") or {}).items()
                      if n and s not in lake.SIMULATED_SOURCES)
        return f"{stats_path} counts cutouts of source(s) {', '.join(real)}" if real else None
    if not storage.table_exists(path):
        return None
    if name == "cutouts":
        from pyspark.sql import functions as F

        real = [row["source"] for row in lake.read_cutouts(spark, path).select("source").distinct()
                .where(~F.col("source").isin(*lake.SIMULATED_SOURCES)).limit(3).collect()]
        return f"it holds cutouts of source(s) {', '.join(sorted(real))}" if real else None
    try:
        provenance = lake.read_provenance(path)
    except ValueError as err:
        return str(err)
    if provenance is None:
        return f"it has no {lake.PROVENANCE_FILE}"
    if provenance.get("simulated") is not True:
        return f"its {lake.PROVENANCE_FILE} (builder {provenance.get('builder')!r}) does not say simulated: true"
    return None


def check_lake_is_simulated(spark, conf) -> None:
    """Refuse to simulate into a lake that holds real data.

    Raises
    ------
    RealLakeError
        A table of :data:`GUARDED_TABLES` exists and is not marked simulated (see :func:`why_not_simulated`); the
        message names the lake, the table and what to do.
    """
    for name in GUARDED_TABLES:
        why = why_not_simulated(spark, conf, name)
        if why is not None:
            root = conf.lake.path("root")
            raise RealLakeError(
                f"refusing to write a SIMULATED lake into {root}: its {name} table ({conf.lake.table(name)}) is not "
                f"marked simulated ({why}). skyclass simulate replaces the catalog and cutouts tables, which would "
                f"destroy real data or mix simulated objects into it. Point lake.root at another folder, e.g. "
                f"--set lake.root={root.rstrip('/')}-simulated")


def _provenance(rows: int, inputs: Mapping) -> dict:
    from skyclass.package import code_version

    return {"builder": BUILDER, "version": code_version(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": int(rows),
            "simulated": True, "inputs": dict(inputs)}


def _write_marked(spark, path: str, frame, inputs: Mapping) -> None:
    """Write ``frame`` as the table at ``path`` with its provenance, both swapped in together."""

    def write(staging: str) -> None:
        frame.write.parquet(staging)
        # Through the part files: Spark treats the "_"-prefixed staging folder itself as hidden (and warns).
        rows = spark.read.parquet(storage.spark_uri(f"{staging.rstrip('/')}/*.parquet")).count()
        lake.write_provenance(staging, _provenance(rows, inputs))

    storage.replace_directory(path, write)


def simulate_lake(spark, conf, n_objects: int, seed: int = 0, *, rows_per_partition: int | None = None,
                  missing_cutout_fraction: float = 0.03, sentinel_fraction: float = 0.01,
                  corrupt_cutout_fraction: float = 0.0, cutouts: bool = True) -> SimulationResult:
    """Write a SIMULATED catalog table and its cutouts table into the lake, generated in the executors.

    The catalog table is the one ``conf.score.catalog`` names (``photometric`` by default, or the labelled
    ``catalog``); both it and ``cutouts/`` are replaced atomically (any previous table at those paths is gone), each
    with a ``_provenance.json`` marking it simulated. A lake holding a table that is not marked simulated is
    refused before anything is written (:func:`check_lake_is_simulated`).

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        Uses ``lake`` (where to write), ``score.catalog`` (which table), ``cutouts.size_px``,
        ``cutouts.scale_arcsec_per_px`` and ``cutouts.rows_per_file`` (default rows per partition and file).
    n_objects : int
        Number of objects (> 0).
    seed : int
        Seed of the lake, 0 <= seed < 10**8; objIDs of different seeds never collide.
    rows_per_partition : int, optional
        Objects per task and output file; the data depend on it (each partition has its own generator).
    missing_cutout_fraction, sentinel_fraction, corrupt_cutout_fraction : float
        Expected fractions (0..1) of objects without a cutout, with a -9999 magnitude, with a truncated JPEG.
    cutouts : bool
        Write the cutouts table too (False: the catalog only, for tabular-only load tests).

    Returns
    -------
    SimulationResult
        Paths and counts (counted by Spark aggregations over the written tables).

    Raises
    ------
    SimulationError
        An argument is out of range.
    RealLakeError
        The lake holds a table that is not marked simulated.
    """
    if isinstance(n_objects, bool) or not isinstance(n_objects, int) or n_objects <= 0:
        raise SimulationError(f"n_objects must be a positive integer, got {n_objects!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 10**8:
        raise SimulationError(f"seed must be an integer in 0..99999999, got {seed!r}")
    if n_objects > _OBJIDS_PER_SEED:
        raise SimulationError(f"n_objects must be at most {_OBJIDS_PER_SEED:,} (objIDs of one seed), got {n_objects}")
    for name, value in (("missing_cutout_fraction", missing_cutout_fraction),
                        ("sentinel_fraction", sentinel_fraction),
                        ("corrupt_cutout_fraction", corrupt_cutout_fraction)):
        if not 0.0 <= value <= 1.0:
            raise SimulationError(f"{name} must be within 0..1, got {value!r}")
    rows_per_partition = rows_per_partition or conf.cutouts.rows_per_file
    if rows_per_partition <= 0:
        raise SimulationError(f"rows_per_partition must be > 0, got {rows_per_partition}")

    check_lake_is_simulated(spark, conf)
    began = time.monotonic()
    table = conf.score.catalog
    schema = lake.PHOTOMETRIC if table == "photometric" else lake.CATALOG
    catalog_path = conf.lake.table(table)
    cutouts_path = conf.lake.table("cutouts")
    partitions = math.ceil(n_objects / rows_per_partition)
    options = dict(seed=seed, missing_cutout_fraction=missing_cutout_fraction, sentinel_fraction=sentinel_fraction,
                   corrupt_cutout_fraction=corrupt_cutout_fraction)
    log.warning("writing a SIMULATED lake: %d objects in %d partitions to %s (not real SDSS data)",
                n_objects, partitions, catalog_path)

    # One input row per partition: the driver ships partition numbers only, never objects.
    plan = spark.range(0, partitions, 1, numPartitions=partitions)
    catalog_df = plan.mapInPandas(
        functools.partial(_catalog_batches, table=table, n_objects=n_objects, rows_per_partition=rows_per_partition,
                          options=options),
        schema.spark_schema())
    inputs = dict(n_objects=n_objects, rows_per_partition=rows_per_partition, **options)
    _write_marked(spark, catalog_path, catalog_df, {"table": table, **inputs})
    log.info("simulated catalog written to %s in %.1f s", catalog_path, time.monotonic() - began)

    if cutouts:
        fetched_at = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        cutouts_df = plan.mapInPandas(
            functools.partial(_cutout_batches, n_objects=n_objects, rows_per_partition=rows_per_partition,
                              options=options, scale_arcsec_per_px=conf.cutouts.scale_arcsec_per_px,
                              size_px=conf.cutouts.size_px, fetched_at=fetched_at),
            lake.CUTOUTS.spark_schema())
        _write_marked(spark, cutouts_path, cutouts_df, {"catalog": table, **inputs,
                                                        "scale_arcsec_per_px": conf.cutouts.scale_arcsec_per_px,
                                                        "size_px": conf.cutouts.size_px})
        log.info("simulated cutouts written to %s (%.1f s so far)", cutouts_path, time.monotonic() - began)

    quality_counts = {row["quality"]: int(row["count"])
                      for row in spark.read.parquet(storage.spark_uri(catalog_path)).groupBy("quality").count()
                      .collect()}
    n_cutouts = spark.read.parquet(storage.spark_uri(cutouts_path)).count() if cutouts else 0
    result = SimulationResult(catalog=table, catalog_path=catalog_path, cutouts_path=cutouts_path,
                              n_objects=sum(quality_counts.values()), n_cutouts=n_cutouts,
                              quality_counts=quality_counts, partitions=partitions, seed=seed,
                              seconds=time.monotonic() - began)
    log.info("%s", result)
    return result
