"""Export a night's predictions for users outside skyclass: a HATS catalog (what LSDB opens), a CSV or a FITS file.

Each export is a night of ``predictions/run_date=…`` joined with the scored catalog's position and photometry
(``ra``, ``dec`` and ``export.catalog_columns`` where the catalog has them: magnitudes, ``quality``, a domain flag…),
so a user can filter on them without the lake.

HATS (HEALPix Adaptive Tiling Scheme; the layout hats/LSDB read)::

    <export.output>/skyclass_<run_date>/
        hats.properties            catalog properties (rows, ra/dec/healpix columns, max rows, builder, date, ...)
        partition_info.csv         Norder,Npix of every partition
        dataset/_common_metadata   the Parquet schema of the leaves
        dataset/_metadata          every leaf's row-group footers, file paths relative to dataset/, in
                                   breadth-first pixel order (sorted by the pixels' first order-29 index)
        dataset/Norder=K/Dir=D/Npix=N.parquet   one leaf per partition (D = N // 10000 * 10000), rows sorted by
                                   ``_healpix_29``

How it runs: the order-29 nested HEALPix index ``_healpix_29`` is computed on the executors with cdshealpix (per
Arrow batch); the driver collects only the row counts per pixel of order ``export.highest_order`` and chooses the
partitions top-down -- a pixel holding more than ``export.max_rows_per_partition`` rows is split into its four
children -- so a dense field is tiled deeper than the sparse sky around it; then each partition is written by one
Spark task (``applyInPandas``; a retried task rewrites the same file) and the driver writes the metadata files from
the leaves' footers. The whole catalog is written to a staging folder and swapped in with
:func:`skyclass.storage.replace_directory`, so a rerun replaces the export atomically.

CSV and FITS are single files, moved into place whole (:func:`skyclass.storage.move` / :func:`~skyclass.storage.
write_bytes`); the FITS table is built on the driver with astropy, so it suits a night or a field (millions of
rows), not a whole survey -- use HATS for that.
"""
from __future__ import annotations

import functools
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from skyclass import storage
from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

HEALPIX_COLUMN = "_healpix_29"
HEALPIX_ORDER = 29
# Order 29 pixels number 12 * 4**29 < 2**63: the index fits a signed int64, as HATS stores it.
MAX_ORDER = HEALPIX_ORDER
FORMATS = ("hats", "csv", "fits")
HATS_VERSION = "v1.0"
_PARTITION_COLUMN = "_skyclass_partition"


class ExportError(SkyclassError):
    """An export cannot be made: no such night, predictions without a catalog position, a partition that cannot
    be split below the row cap."""


@dataclass(frozen=True)
class Partition:
    """One HATS partition: a HEALPix pixel ``pixel`` of order ``order`` holding ``rows`` rows."""

    order: int
    pixel: int
    rows: int

    @property
    def directory(self) -> int:
        """The ``Dir=`` folder number: pixels are grouped by ten thousands so no folder holds too many files."""
        return self.pixel // 10_000 * 10_000

    @property
    def relative_path(self) -> str:
        """Leaf path relative to ``dataset/``."""
        return f"Norder={self.order}/Dir={self.directory}/Npix={self.pixel}.parquet"

    @property
    def first_index(self) -> int:
        """The first order-29 index inside this pixel (nested scheme: children share the parent's high bits)."""
        return self.pixel << (2 * (HEALPIX_ORDER - self.order))

    @property
    def end_index(self) -> int:
        """One past the last order-29 index inside this pixel."""
        return (self.pixel + 1) << (2 * (HEALPIX_ORDER - self.order))


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote; ``str()`` is the CLI summary."""

    format: str
    run_date: str
    path: str
    rows: int
    files: int  # data files written (HATS leaves; 1 for CSV and FITS)
    largest_partition_rows: int = 0
    partitions: Sequence[Partition] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        text = (f"exported {self.rows:,} predictions of night {self.run_date} as {self.format.upper()} to {self.path} "
                f"in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s)")
        if self.format == "hats":
            orders = sorted({p.order for p in self.partitions})
            text += (f"; {self.files} partitions (orders {orders[0]}–{orders[-1]}), largest "
                     f"{self.largest_partition_rows:,} rows") if orders else ""
        return text


# ---------------------------------------------------------------------------------------------------------------
# Pure parts: the HEALPix index and the partition plan.

def healpix_index(ra_deg, dec_deg, order: int = HEALPIX_ORDER) -> np.ndarray:
    """Nested HEALPix index of each position at ``order`` (cdshealpix), as int64.

    Parameters
    ----------
    ra_deg, dec_deg : array-like
        ICRS right ascension and declination in degrees.
    order : int
        HEALPix order (depth), 0..29.

    Returns
    -------
    numpy.ndarray of int64

    Raises
    ------
    ExportError
        A declination outside [-90, 90] or a non-finite position.
    """
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix.nested import lonlat_to_healpix

    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ExportError(f"{int(bad.sum())} positions are not valid sky coordinates (first: ra={ra[i]!r}, "
                          f"dec={dec[i]!r}); fix or drop those catalog rows before exporting")
    if len(ra) == 0:
        return np.zeros(0, dtype=np.int64)
    # One thread: an executor core already runs one task; rayon would otherwise start a thread per CPU per task.
    return lonlat_to_healpix(Longitude(ra, u.deg), Latitude(dec, u.deg), order, num_threads=1).astype(np.int64)


def plan_partitions(pixels, counts, fine_order: int, max_rows: int) -> list[Partition]:
    """Choose HATS partitions top-down: the coarsest pixels holding at most ``max_rows`` rows.

    Starting at order 0, every pixel whose rows fit ``max_rows`` becomes a partition; the others are split into
    their four children at the next order, down to ``fine_order``.

    Parameters
    ----------
    pixels : array-like of int
        Occupied pixels at ``fine_order`` (nested scheme), each once.
    counts : array-like of int
        Rows in each of ``pixels``.
    fine_order : int
        The order of ``pixels``: the deepest a partition may be.
    max_rows : int
        The cap on rows per partition.

    Returns
    -------
    list of Partition
        Sorted by their first order-29 index (HATS's breadth-first order); they do not overlap and cover every
        pixel given.

    Raises
    ------
    ExportError
        A pixel of ``fine_order`` alone holds more than ``max_rows`` rows.
    """
    pixels = np.asarray(pixels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    partitions: list[Partition] = []
    for order in range(0, fine_order + 1):
        if len(pixels) == 0:
            break
        parents = pixels >> (2 * (fine_order - order))
        unique, inverse = np.unique(parents, return_inverse=True)
        sums = np.bincount(inverse, weights=counts).astype(np.int64)
        fits = sums <= max_rows
        partitions.extend(Partition(order, int(p), int(n)) for p, n in zip(unique[fits], sums[fits]))
        keep = ~fits[inverse]
        pixels, counts = pixels[keep], counts[keep]
    if len(pixels):
        worst = int(np.argmax(counts))
        raise ExportError(f"HEALPix pixel {int(pixels[worst])} of order {fine_order} alone holds "
                          f"{int(counts[worst]):,} rows, more than export.max_rows_per_partition = {max_rows:,}; "
                          "raise export.max_rows_per_partition or export.highest_order")
    return sorted(partitions, key=lambda p: p.first_index)


def partition_of(index29: np.ndarray, first_indices: np.ndarray) -> np.ndarray:
    """Position in ``first_indices`` (the sorted first order-29 indices of the partitions) of the partition holding
    each order-29 index."""
    return np.searchsorted(first_indices, index29, side="right") - 1


# ---------------------------------------------------------------------------------------------------------------
# Worker side.

def _with_healpix(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for frame in batches:
        frame.insert(0, HEALPIX_COLUMN, healpix_index(frame["ra"].to_numpy(), frame["dec"].to_numpy()))
        yield frame


def _with_partition(batches: Iterator[pd.DataFrame], first_indices: np.ndarray) -> Iterator[pd.DataFrame]:
    for frame in batches:
        frame[_PARTITION_COLUMN] = partition_of(frame[HEALPIX_COLUMN].to_numpy(), first_indices).astype(np.int32)
        yield frame


def _write_leaf(frame: pd.DataFrame, dataset_dir: str, partitions: Sequence[tuple[int, int]],
                arrow_schema) -> pd.DataFrame:
    """Write one partition's rows as its leaf file; returns (partition, rows, bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = int(frame[_PARTITION_COLUMN].iloc[0])
    order, pixel = partitions[number]
    leaf = Partition(order, pixel, len(frame))
    frame = frame.drop(columns=[_PARTITION_COLUMN]).sort_values(HEALPIX_COLUMN, kind="stable")
    table = pa.Table.from_pandas(frame, schema=arrow_schema, preserve_index=False)
    path = storage.join(dataset_dir, leaf.relative_path)
    # Atomic: a retried or speculative task replaces the file whole, never leaves half of one.
    with storage.atomic_output(path) as stream:
        pq.write_table(table, stream)
    return pd.DataFrame({"partition": [number], "rows": [len(frame)], "bytes": [storage.file_size(path)]})


# ---------------------------------------------------------------------------------------------------------------
# Driver side.

def night_dirname(run_date: str) -> str:
    return f"run_date={run_date}"


def nights(predictions_root: str) -> list[str]:
    """The run dates with a predictions partition, oldest first."""
    storage.recover_swaps_in(predictions_root)
    return sorted(e.name[len("run_date="):] for e in storage.list_entries(predictions_root)
                  if e.is_dir and e.name.startswith("run_date="))


def resolve_export_night(conf) -> str:
    """The night to export: ``export.run_date``, else the newest night under ``lake.predictions``.

    Raises
    ------
    ExportError
        There is no such night (or none at all).
    """
    root = conf.lake.path("predictions")
    have = nights(root)
    wanted = conf.export.run_date
    if wanted is None:
        if not have:
            raise ExportError(f"no predictions under {root}; run `skyclass score` first")
        return have[-1]
    from skyclass.score import resolve_run_date

    wanted = resolve_run_date(wanted)
    if wanted not in have:
        raise ExportError(f"no predictions for night {wanted} under {root} (nights there: "
                          f"{', '.join(have) or 'none'}); run `skyclass score --run-date {wanted}` or pick "
                          "another --run-date")
    return wanted


def labelled_night(spark, conf, run_date: str):
    """A night's predictions joined with the scored catalog's ``ra``, ``dec`` and ``export.catalog_columns``.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        ``export.catalog`` (None: ``score.catalog``), ``export.catalog_columns``, ``lake``.
    run_date : str

    Returns
    -------
    pyspark.sql.DataFrame
        Every prediction column, then ``ra``, ``dec`` and those catalog columns the catalog has (others are
        skipped, logged).

    Raises
    ------
    ExportError
        The catalog is missing, or some predictions have no position in it (nothing is exported then: a silently
        shorter export would lose labels).
    """
    from pyspark.sql import functions as F

    catalog_name = conf.export.catalog or conf.score.catalog
    catalog_path = conf.lake.table(catalog_name)
    if not storage.table_exists(catalog_path):
        raise ExportError(f"no {catalog_name} table at {catalog_path} to take positions from; set export.catalog "
                          "to the table the night was scored from")
    night_path = storage.join(conf.lake.path("predictions"), night_dirname(run_date))
    predictions = spark.read.parquet(storage.spark_uri(night_path))
    catalog = spark.read.parquet(storage.spark_uri(catalog_path))
    wanted = [c for c in conf.export.catalog_columns if c not in ("objid", "ra", "dec")]
    present = [c for c in wanted if c in catalog.columns and c not in predictions.columns]
    skipped = [c for c in wanted if c not in catalog.columns and c not in predictions.columns]
    if skipped:
        log.info("export: the %s table has no column(s) %s; exported without them", catalog_name, skipped)
    positions = catalog.select("objid", "ra", "dec", *present).dropDuplicates(["objid"])
    joined = predictions.join(positions, "objid", "left")
    missing = joined.filter(F.col("ra").isNull() | F.col("dec").isNull()).count()
    if missing:
        raise ExportError(f"{missing:,} predictions of night {run_date} have no ra/dec in the {catalog_name} table at "
                          f"{catalog_path}; set export.catalog to the table that night was scored from")
    return joined.select(*predictions.columns, "ra", "dec", *present)


def export_predictions(spark, conf) -> ExportResult:
    """Export a night's predictions in ``export.format`` (``hats``, ``csv`` or ``fits``).

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        The ``export`` section (format, output, run_date, catalog, catalog_columns, max_rows_per_partition,
        highest_order) and ``lake``.

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        See :func:`resolve_export_night`, :func:`labelled_night` and :func:`plan_partitions`.
    """
    began = time.monotonic()
    run_date = resolve_export_night(conf)
    frame = labelled_night(spark, conf, run_date)
    fmt = conf.export.format
    if fmt == "hats":
        result = write_hats(spark, frame, export_path(conf, run_date), run_date=run_date,
                            max_rows=conf.export.max_rows_per_partition, highest_order=conf.export.highest_order)
    elif fmt == "csv":
        result = write_csv(frame, export_path(conf, run_date), run_date=run_date)
    elif fmt == "fits":
        result = write_fits(frame, export_path(conf, run_date), run_date=run_date)
    else:  # config validation admits only FORMATS
        raise ExportError(f"export.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    result = _with_seconds(result, time.monotonic() - began)
    log.info("%s", result)
    return result


def export_path(conf, run_date: str, fmt: Optional[str] = None) -> str:
    """Where a night's export goes: ``<export.output>/skyclass_<run_date>`` (a folder for HATS, ``.csv``/``.fits``)."""
    from skyclass.config import resolve_path

    fmt = fmt or conf.export.format
    base = storage.join(resolve_path(conf.export.output), f"skyclass_{run_date}")
    return base if fmt == "hats" else f"{base}.{fmt}"


def _with_seconds(result: ExportResult, seconds: float) -> ExportResult:
    import dataclasses

    return dataclasses.replace(result, seconds=seconds)


def write_hats(spark, frame, path: str, *, run_date: str, max_rows: int, highest_order: int,
               catalog_name: Optional[str] = None, properties: Optional[Mapping[str, str]] = None) -> ExportResult:
    """Write a DataFrame with ``ra``/``dec`` columns (degrees) as a HATS catalog at ``path``, replacing any.

    Parameters
    ----------
    spark : SparkSession
    frame : pyspark.sql.DataFrame
        The rows; must have double ``ra`` and ``dec`` columns and no ``_healpix_29`` column.
    path : str
        The catalog folder (any form of :mod:`skyclass.storage`).
    run_date : str
        Recorded in ``hats.properties`` (``skyclass_run_date``).
    max_rows : int
        Cap on rows per partition.
    highest_order : int
        The deepest partition order allowed.
    catalog_name : str, optional
        ``obs_collection`` (default: the folder's name).
    properties : mapping, optional
        Further ``hats.properties`` entries (provenance).

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        ``frame`` is empty, a position is invalid, or a pixel of ``highest_order`` exceeds ``max_rows``.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    began = time.monotonic()
    if not 0 <= highest_order <= MAX_ORDER:
        raise ExportError(f"export.highest_order must be within 0..{MAX_ORDER}, got {highest_order}")
    with_index_schema = T.StructType([T.StructField(HEALPIX_COLUMN, T.LongType(), False), *frame.schema.fields])
    indexed = frame.mapInPandas(_with_healpix, with_index_schema).cache()
    try:
        shift = 2 * (HEALPIX_ORDER - highest_order)
        rows = (indexed.groupBy(F.shiftright(HEALPIX_COLUMN, shift).alias("pixel")).count().collect())
        if not rows:
            raise ExportError(f"nothing to export to {path}: the night {run_date} has no predictions")
        pixels = np.array([r["pixel"] for r in rows], dtype=np.int64)
        counts = np.array([r["count"] for r in rows], dtype=np.int64)
        partitions = plan_partitions(pixels, counts, highest_order, max_rows)
        first = np.array([p.first_index for p in partitions], dtype=np.int64)
        log.info("export: %d rows in %d partitions (orders %d..%d, cap %d rows) -> %s", int(counts.sum()),
                 len(partitions), min(p.order for p in partitions), max(p.order for p in partitions), max_rows, path)
        arrow_schema = to_arrow_schema(with_index_schema)
        written_schema = T.StructType([T.StructField("partition", T.IntegerType()),
                                       T.StructField("rows", T.LongType()), T.StructField("bytes", T.LongType())])
        tagged_schema = T.StructType([*with_index_schema.fields, T.StructField(_PARTITION_COLUMN, T.IntegerType())])
        tagged = indexed.mapInPandas(functools.partial(_with_partition, first_indices=first), tagged_schema)
        plan = [(p.order, p.pixel) for p in partitions]

        def write(staging_uri: str) -> None:
            dataset = storage.join(staging_uri, "dataset")
            written = (tagged.groupBy(_PARTITION_COLUMN)
                       .applyInPandas(functools.partial(_write_leaf, dataset_dir=dataset, partitions=plan,
                                                        arrow_schema=arrow_schema), written_schema).collect())
            by_number = {int(r["partition"]): int(r["rows"]) for r in written}
            for number, partition in enumerate(partitions):
                if by_number.get(number) != partition.rows:
                    raise ExportError(f"partition {partition.relative_path} was written with "
                                      f"{by_number.get(number)} rows, expected {partition.rows}; the export at "
                                      f"{path} is unchanged")
            total_bytes = sum(int(r["bytes"]) for r in written)
            write_hats_metadata(staging_uri, partitions, arrow_schema, catalog_name=catalog_name or
                                storage.split(path)[1], total_bytes=total_bytes, max_rows=max_rows,
                                extra={"skyclass_run_date": run_date, **(properties or {})})

        storage.replace_directory(path, write)
    finally:
        indexed.unpersist()
    return ExportResult("hats", run_date, path, rows=int(counts.sum()), files=len(partitions),
                        largest_partition_rows=max(p.rows for p in partitions), partitions=tuple(partitions),
                        seconds=time.monotonic() - began)


def write_hats_metadata(catalog_path: str, partitions: Sequence[Partition], arrow_schema, *, catalog_name: str,
                        total_bytes: int, max_rows: int, extra: Optional[Mapping[str, str]] = None) -> None:
    """Write ``hats.properties``, ``partition_info.csv``, ``dataset/_common_metadata`` and ``dataset/_metadata``
    for the leaves already written under ``catalog_path``.

    ``_metadata`` concatenates the leaves' own footers (read back from the files, so the row-group offsets are
    the real ones), each with its path relative to ``dataset/``, in the partitions' order.

    Parameters
    ----------
    catalog_path : str
    partitions : sequence of Partition
        In breadth-first order (as :func:`plan_partitions` returns them).
    arrow_schema : pyarrow.Schema
        The leaves' schema.
    catalog_name : str
    total_bytes : int
        Bytes of all leaves (``hats_estsize``).
    max_rows : int
        The partition cap (``hats_max_rows``).
    extra : mapping, optional
        Further properties.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skyclass import __version__

    dataset = storage.join(catalog_path, "dataset")
    footers = []
    for partition in partitions:
        with storage.open_input(storage.join(dataset, partition.relative_path)) as stream:
            footer = pq.read_metadata(stream)
        footer.set_file_path(partition.relative_path)
        footers.append(footer)
    common = pa.BufferOutputStream()
    pq.write_metadata(arrow_schema, common)
    storage.write_bytes(storage.join(dataset, "_common_metadata"), common.getvalue().to_pybytes())
    combined = pq.read_metadata(pa.BufferReader(common.getvalue()))
    for footer in footers:
        combined.append_row_groups(footer)
    sink = io.BytesIO()
    combined.write_metadata_file(sink)
    storage.write_bytes(storage.join(dataset, "_metadata"), sink.getvalue())

    storage.write_text(storage.join(catalog_path, "partition_info.csv"),
                       "Norder,Npix\n" + "".join(f"{p.order},{p.pixel}\n" for p in partitions))
    now = datetime.now(timezone.utc)
    sky_fraction = sum(1.0 / (12 * 4 ** p.order) for p in partitions)
    props = {
        "obs_collection": catalog_name,
        "dataproduct_type": "object",
        "hats_nrows": str(sum(p.rows for p in partitions)),
        "hats_col_ra": "ra",
        "hats_col_dec": "dec",
        "hats_col_healpix": HEALPIX_COLUMN,
        "hats_col_healpix_order": str(HEALPIX_ORDER),
        "hats_npix_suffix": ".parquet",
        "hats_max_rows": str(max_rows),
        "hats_order": str(max(p.order for p in partitions)),
        "hats_builder": f"skyclass v{__version__}",
        "hats_creation_date": now.strftime("%Y-%m-%dT%H:%MUTC"),
        "hats_release_date": now.strftime("%Y-%m-%d"),
        "hats_version": HATS_VERSION,
        "hats_estsize": str(max(1, total_bytes // 1024)),
        "moc_sky_fraction": f"{sky_fraction:.5f}",
        **{k: str(v) for k, v in (extra or {}).items()},
    }
    storage.write_text(storage.join(catalog_path, "hats.properties"),
                       "#HATS catalog\n" + "".join(f"{k}={_property_value(v)}\n" for k, v in props.items()))


def _property_value(value: str) -> str:
    # Java properties: one line per key; a newline in a value would start a bogus key.
    return str(value).replace("\\", "\\\\").replace("\n", " ")


def read_hats_properties(catalog_path: str) -> dict[str, str]:
    """The ``hats.properties`` of a catalog as a dict (comments skipped)."""
    props = {}
    for line in storage.read_text(storage.join(catalog_path, "hats.properties")).splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "!")):
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def write_csv(frame, path: str, *, run_date: str) -> ExportResult:
    """Write a DataFrame as one CSV file with a header at ``path`` (any storage form), replacing it whole.

    Spark writes it with one task into a hidden folder beside ``path``; the single part file is then moved into
    place, so a reader sees the old file or the whole new one.

    Returns
    -------
    ExportResult
    """
    parent, name = storage.split(path)
    temp = storage.join(parent, f"{storage.TEMP_PREFIX}{name}-{time.monotonic_ns()}")
    try:
        frame.orderBy("objid").coalesce(1).write.option("header", True).csv(storage.spark_uri(temp))
        parts = [e.path for e in storage.list_entries(temp) if e.name.startswith("part-") and e.name.endswith(".csv")]
        if len(parts) != 1:
            raise ExportError(f"the CSV export of night {run_date} produced {len(parts)} part files in {temp}, "
                              "expected one")
        rows = frame.count()
        storage.move(parts[0], path)
    finally:
        storage.delete(temp)
    return ExportResult("csv", run_date, path, rows=int(rows), files=1)


def write_fits(frame, path: str, *, run_date: str) -> ExportResult:
    """Write a DataFrame as a FITS binary table (astropy) at ``path``, replacing it whole.

    The table is collected to the driver: fine for a night or a field, not for a survey (use HATS).

    Returns
    -------
    ExportResult
    """
    from astropy.table import Table

    pdf = frame.orderBy("objid").toPandas()
    # FITS binary tables have no timestamp type (astropy would store a Time object column): instants as ISO 8601 UTC.
    for column in pdf.columns:
        if pd.api.types.is_datetime64_any_dtype(pdf[column]):
            pdf[column] = pdf[column].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").fillna("")
    table = Table.from_pandas(pdf)
    table.meta["EXTNAME"] = "SKYCLASS"
    table.meta["RUNDATE"] = run_date
    table.meta["ORIGIN"] = "skyclass"
    for column in ("ra", "dec"):
        if column in table.colnames:
            table[column].unit = "deg"
    sink = io.BytesIO()
    table.write(sink, format="fits")
    storage.write_bytes(path, sink.getvalue())
    return ExportResult("fits", run_date, path, rows=len(pdf), files=1)
