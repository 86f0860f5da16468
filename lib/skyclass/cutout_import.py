"""Cutouts a user already has, into ``lake/cutouts``: ``skyclass cutouts --import PATH``.

Inputs Spark reads itself (the import is a Spark job, not a driver loop):

- a Parquet file or dataset with ``objid`` and ``jpeg`` columns (optionally ``class``, ``ra``, ``dec``, ``run``,
  ``rerun``, ``camcol``, ``field``), e.g. ``../shared/data/sdss/real_cutouts.parquet``;
- a folder of ``<objid>.<anything>`` image files, read with Spark's ``binaryFile`` source. The format is sniffed
  from the bytes, never from the suffix (real downloads are often JPEG bytes under a ``.png`` name); PNG files are
  re-encoded as JPEG. A file whose parent folder is named after a class (``galaxy/``, ``star/``, ``qso/``, any case)
  gives the object that label.

Every image is validated as a download is (:func:`skyclass.cutouts.validate_jpeg`: decodes completely, not blank),
brought to ``cutouts.size_px`` by ``cutouts.import_fit`` and stored with ``source = import:<name>``. The fit:

- ``resize`` scales the whole field down: a 128 px getjpeg cutout at 0.4"/px becomes 64 px at 0.8"/px and keeps
  its 51" of sky (the object, its outskirts and its neighbours);
- ``crop`` (default) keeps the native scale and cuts the central ``size_px`` pixels (25.6" of sky at 64 px).

``bench/images_bench.py --steps scale`` measured both with the same small_cnn on a field-grouped sample of the real
cutouts (6,000 train / 3,000 test objects, 4 epochs: crop 0.818 accuracy and QSO F1 0.57, resize 0.802 and 0.52; see
README "Real SDSS cutouts"): the default is crop. Point sources are told apart by their few central pixels, which a
resize blurs. The stored ``scale_arcsec_per_px`` is the
resulting scale (input scale × input size / size_px for ``resize``; the input scale for ``crop``); the input scale is
``cutouts.import_scale_arcsec_per_px`` (0.4, getjpeg's usual ``scale``).

Deduplicated against the lake (an anti-join on objid: a rerun adds nothing) and within the input (the first row of
an objid wins). A bad file or row (not an image, truncated, blank, too small for the fit, a name that is not an
objid) is reported by name in the result, and the rest still load. Labels that came with the input go to
``lake/labels`` (:data:`LABELS`: a labels-only catalog, objid and class plus run/camcol/field decoded from the objID
bits), which the training table uses for ``train.mode=image``.

New rows are written by Spark to a work folder and their files then moved into the tables under fresh names, while
holding the lake's cutouts lock (the downloader's), so a reader never sees half a file and an import never races a
download.
"""
from __future__ import annotations

import io
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa

from skyclass import lake, objid, storage
from skyclass.config import CLASSES, Config
from skyclass.cutouts import InvalidCutout, validate_jpeg
from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

IMPORT_SOURCE_PREFIX = "import:"
FITS = ("resize", "crop")
PARQUET_MAGIC = b"PAR1"
JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Quality of JPEGs re-encoded after a resize, a crop off the source's block grid, or from PNG: close to getjpeg's
# own, small files. A crop on the grid keeps the source's own tables instead (fit_cutout).
REENCODE_QUALITY = 90

LABELS = lake.Table("labels", (
    lake.Column("objid", pa.int64(), False, "PhotoObj objID"),
    lake.Column("class", pa.string(), False, "GALAXY, STAR or QSO"),
    lake.Column("run", pa.int32(), False, "from the objID bits unless the input gave it"),
    lake.Column("rerun", pa.int32(), False),
    lake.Column("camcol", pa.int32(), False),
    lake.Column("field", pa.int32(), False),
    lake.Column("source", pa.string(), False, "import:<name>"),
))

# What the validating tasks return: one row per input image.
_CHECKED_SCHEMA = ("objid long, origin string, jpeg binary, size_px int, scale_arcsec_per_px double, "
                   "status string, reason string")
STORED = "stored"
FAILED = "failed"


class CutoutImportError(SkyclassError):
    """The import cannot start: the input is missing, empty or not a cutouts Parquet file or image folder."""


@dataclass
class ImportResult:
    source: str
    path: str
    read: int  # images (rows or files) in the input
    stored: int  # new cutouts written to the lake
    already_present: int  # valid images whose objid the lake (or an earlier row of the input) already had
    failed: list = field(default_factory=list)  # (name, reason) of each bad image
    labels_stored: int = 0
    elapsed_s: float = 0.0
    fit: str = "resize"
    scale_arcsec_per_px: Optional[float] = None
    lake_objects: int = 0

    def __str__(self) -> str:
        lines = [f"cutouts import {self.source}: {self.read:,} images read, {self.stored:,} stored, "
                 f"{self.already_present:,} already present, {len(self.failed):,} bad "
                 f"({self.elapsed_s:.1f} s); lake: {self.lake_objects:,} cutouts in {self.path}"]
        if self.scale_arcsec_per_px:
            lines.append(f"  fit {self.fit}: stored at {self.scale_arcsec_per_px:g} arcsec/px")
        if self.labels_stored:
            lines.append(f"  {self.labels_stored:,} labels written to the labels table (labels-only catalog)")
        for name, reason in self.failed[:20]:
            lines.append(f"  bad: {name}: {reason}")
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20:,} more bad images")
        return "\n".join(lines)


# --- pure parts ------------------------------------------------------------------------------------------------

def sniff_image_format(body: bytes) -> Optional[str]:
    """``"jpeg"``, ``"png"`` or None, from the first bytes (never from a file name)."""
    if body[:2] == JPEG_MAGIC:
        return "jpeg"
    if body[:8] == PNG_MAGIC:
        return "png"
    return None


def fitted_scale(input_scale_arcsec_per_px: float, input_size_px: int, size_px: int, fit: str) -> float:
    """Pixel scale of a cutout after :func:`fit_cutout` (a resize spreads the same sky over fewer pixels)."""
    if fit == "resize":
        return input_scale_arcsec_per_px * input_size_px / size_px
    return input_scale_arcsec_per_px


def fit_cutout(body: bytes, size_px: int, fit: str) -> tuple[bytes, int]:
    """Validate one image and bring it to ``size_px`` × ``size_px`` JPEG.

    Parameters
    ----------
    body : bytes
        JPEG or PNG bytes.
    size_px : int
        The lake's cutout side.
    fit : str
        ``resize`` (whole field) or ``crop`` (centre, native scale).

    Returns
    -------
    (bytes, int)
        The JPEG to store (the input bytes unchanged when they already are a JPEG of that size) and the input's
        side in pixels.

    Raises
    ------
    InvalidCutout
        Not an image (``not_image``), not square (``not_square``), too small for a crop (``too_small``), or what
        :func:`skyclass.cutouts.validate_jpeg` refuses (``corrupt_jpeg``, ``blank``).
    """
    from PIL import Image, JpegImagePlugin

    kind = sniff_image_format(body)
    if kind is None:
        raise InvalidCutout("not_image", f"{len(body)} bytes that are neither JPEG nor PNG (start {body[:16]!r})")
    if kind == "png":
        try:
            with Image.open(io.BytesIO(body)) as image:
                image.load()
                rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:
            raise InvalidCutout("corrupt_png", f"PNG of {len(body)} bytes does not decode ({err})") from None
        body = _encode(rgb)
    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidCutout("corrupt_jpeg", f"JPEG of {len(body)} bytes does not decode ({err})") from None
    if width != height:
        raise InvalidCutout("not_square", f"image is {width}x{height} px; cutouts are square")
    # The checks a download gets, at the input's own size: complete, decodable, not blank.
    validate_jpeg(body, width)
    if width == size_px:
        return body, width
    if fit == "crop" and width < size_px:
        raise InvalidCutout("too_small", f"image is {width} px, smaller than the {size_px} px crop")
    with Image.open(io.BytesIO(body)) as image:
        rgb = image.convert("RGB")
        if fit == "resize":
            # LANCZOS averages the pixels a downscale merges (BILINEAR would alias faint structure away).
            return _encode(rgb.resize((size_px, size_px), Image.LANCZOS)), width
        left = (width - size_px) // 2
        crop = rgb.crop((left, left, left + size_px, left + size_px))
        sampling = JpegImagePlugin.get_sampling(image)  # 0: 4:4:4, 1: 4:2:2, 2: 4:2:0, -1: another layout
        # The side of a minimum coded unit: 16 px with chroma subsampled 2x, 8 px without.
        if sampling in (0, 1, 2) and left % (8 if sampling == 0 else 16) == 0:
            # A crop along the source's block grid, saved with the source's own quantisation tables and chroma
            # subsampling, gives back the same DCT blocks: the source's pixels to within rounding (mean 0.06 of
            # 255 over real getjpeg cutouts, 0.7 for a quality-90 re-encode) in fewer bytes. The lake then holds
            # what SkyServer sent, not a second compression of it (README: what that changes for the models).
            return _encode(crop, qtables=image.quantization, subsampling=sampling), width
    return _encode(crop), width


def _encode(image, **settings) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **(settings or {"quality": REENCODE_QUALITY}))
    return out.getvalue()


def objid_from_file_name(path: str) -> Optional[int]:
    """The objid a file is named after (``.../1237648704041648426.png`` → 1237648704041648426), or None."""
    stem = os.path.basename(path).split(".", 1)[0]
    if not stem.isdigit():
        return None
    value = int(stem)
    return value if 0 < value < 1 << 63 else None


def class_from_path(path: str) -> Optional[str]:
    """The class a file's parent folder names (``qso/123.png`` → ``QSO``), or None."""
    parent = os.path.basename(os.path.dirname(path.rstrip("/"))).upper()
    return parent if parent in CLASSES else None


def check_partition(size_px: int, fit: str, input_scale_arcsec_per_px: float):
    """mapInPandas function: rows ``objid, origin, body`` → :data:`_CHECKED_SCHEMA` rows (one per image)."""

    def run(frames):
        import pandas as pd

        for frame in frames:
            rows = []
            for objid_value, origin, body in zip(frame["objid"], frame["origin"], frame["body"]):
                if objid_value is None or pd.isna(objid_value):
                    rows.append((None, origin, None, None, None, FAILED,
                                 "bad_name: the file name is not <objid>.<suffix>"))
                    continue
                if body is None or len(body) == 0:
                    rows.append((int(objid_value), origin, None, None, None, FAILED, "empty: no bytes"))
                    continue
                try:
                    jpeg, input_px = fit_cutout(bytes(body), size_px, fit)
                except InvalidCutout as err:
                    rows.append((int(objid_value), origin, None, None, None, FAILED, f"{err.kind}: {err}"))
                    continue
                rows.append((int(objid_value), origin, jpeg, size_px,
                             fitted_scale(input_scale_arcsec_per_px, input_px, size_px, fit), STORED, None))
            yield pd.DataFrame(rows, columns=["objid", "origin", "jpeg", "size_px", "scale_arcsec_per_px", "status",
                                              "reason"]).astype({"objid": "Int64", "size_px": "Int32"})

    return run


# --- reading the input -----------------------------------------------------------------------------------------

def input_kind(path: str) -> str:
    """``parquet`` or ``images``: a file starting with Parquet's magic bytes, or a folder holding such files, is
    Parquet; any other folder is a folder of image files.

    Raises
    ------
    CutoutImportError
        The path does not exist, or is a file that is not Parquet.
    """
    if not storage.exists(path):
        raise CutoutImportError(f"--import {path}: no such file or folder")
    if storage.is_file(path):
        with storage.open_input(path) as fh:
            magic = fh.read(4)
        if magic == PARQUET_MAGIC:
            if os.path.basename(path.rstrip("/")).startswith(("_", ".")):
                # Spark (Hadoop) treats such files as hidden and would report only "Unable to infer schema".
                raise CutoutImportError(f"--import {path}: Spark does not read files whose names start with '_' "
                                        "or '.'; rename the file (or put it in a folder) and import it again")
            return "parquet"
        raise CutoutImportError(f"--import {path}: a file that is not Parquet; pass a Parquet file with objid and "
                                "jpeg columns, or a folder of <objid>.jpg/.png files")
    names = [e for e in storage.list_entries(path) if not e.name.startswith(("_", "."))]
    for entry in names:
        if not entry.is_dir:
            with storage.open_input(storage.join(path, entry.name)) as fh:
                if fh.read(4) == PARQUET_MAGIC:
                    return "parquet"
    return "images"


def read_input(spark, path: str):
    """The input as ``objid, origin, body`` (+ ``class``, ``ra``, ``dec``, ``run``, ``rerun``, ``camcol``,
    ``field`` where it has them), read by Spark.

    Raises
    ------
    CutoutImportError
        A Parquet input without ``objid`` or ``jpeg``.
    """
    from pyspark.sql import functions as F

    uri = storage.spark_uri(path)
    if input_kind(path) == "parquet":
        frame = spark.read.parquet(uri)
        missing = [c for c in ("objid", "jpeg") if c not in frame.columns]
        if missing:
            raise CutoutImportError(f"--import {path}: Parquet without column(s) {', '.join(missing)} (has "
                                    f"{', '.join(frame.columns)}); cutouts need objid and jpeg")
        name = os.path.basename(path.rstrip("/"))
        origin = F.concat(F.lit(f"{name} objid "), F.col("objid").cast("string"))
        extra = [c for c in ("class", "ra", "dec", "run", "rerun", "camcol", "field") if c in frame.columns]
        return frame.select(F.col("objid").cast("long").alias("objid"), origin.alias("origin"),
                            F.col("jpeg").alias("body"), *extra)
    frame = (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
             .select("path", "content"))
    stem = F.regexp_extract(F.element_at(F.split("path", "/"), -1), r"^([0-9]+)\.[^/]*$", 1)
    parent = F.upper(F.element_at(F.split("path", "/"), -2))
    return frame.select(
        F.when(stem != "", stem.cast("decimal(20,0)")).cast("long").alias("objid"),
        F.col("path").alias("origin"), F.col("content").alias("body"),
        F.when(parent.isin(*CLASSES), parent).alias("class"))


# --- the driver --------------------------------------------------------------------------------------------------

def import_cutouts(spark, conf: Config, path: str, *, name: Optional[str] = None) -> ImportResult:
    """Import existing cutouts (and any labels with them) into the lake.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        Uses ``cutouts.size_px``, ``cutouts.import_fit``, ``cutouts.import_scale_arcsec_per_px``,
        ``cutouts.rows_per_file``, ``cutouts.lock_ttl_s`` and ``lake``.
    path : str
        A Parquet file/dataset with ``objid`` and ``jpeg``, or a folder of ``<objid>.<suffix>`` images.
    name : str, optional
        Provenance name (``source = import:<name>``); default: the input's base name without suffix.

    Returns
    -------
    ImportResult

    Raises
    ------
    CutoutImportError
        The input is missing or not a cutouts input.
    LockHeldError
        A download or another import of this lake is running.
    """
    started = time.monotonic()
    c = conf.cutouts
    name = name or os.path.basename(path.rstrip("/")).split(".", 1)[0] or "cutouts"
    source = IMPORT_SOURCE_PREFIX + name
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    root = conf.lake.path("root")
    lock = storage.Lock(lake.lock_path(root, "cutouts"), run_id=run_id, ttl_s=c.lock_ttl_s, purpose="cutouts import",
                        ttl_setting="cutouts.lock_ttl_s", heartbeat_s=c.lock_ttl_s / 4).acquire()
    try:
        result = _import(spark, conf, path, source, run_id)
    finally:
        lock.release()
    result.elapsed_s = time.monotonic() - started
    log.info("%s", result)
    return result


def _import(spark, conf: Config, path: str, source: str, run_id: str) -> ImportResult:
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    c = conf.cutouts
    cutouts_path = conf.lake.table("cutouts")
    labels_path = conf.lake.table("labels")
    work_path = storage.join(conf.lake.path("root"), "_work", f"import-{run_id}")
    uri = storage.spark_uri
    raw = read_input(spark, path)
    try:
        spark.sparkContext.setJobDescription(f"skyclass: import cutouts from {path}")
        checked = raw.select("objid", "origin", "body").mapInPandas(
            check_partition(c.size_px, c.import_fit, c.import_scale_arcsec_per_px), _CHECKED_SCHEMA)
        # Materialised once: decoding is the expensive part, and counts, failures and the write all need it.
        checked.write.parquet(uri(f"{work_path}/checked"))
        checked = spark.read.parquet(uri(f"{work_path}/checked"))
        counts = {r["status"]: r["count"] for r in checked.groupBy("status").count().collect()}
        scale = _stored_scale(checked)
        failed = [(r["origin"], r["reason"]) for r in checked.where(F.col("status") == FAILED)
                  .select("origin", "reason").orderBy("origin").collect()]
        for origin, reason in failed[:5]:
            log.warning("cutouts import: bad image %s: %s", origin, reason)

        good = checked.where(F.col("status") == STORED)
        # The first row of an objid wins within the input (the lowest origin name: deterministic across reruns).
        first = Window.partitionBy("objid").orderBy("origin")
        good = good.withColumn("_n", F.row_number().over(first)).where(F.col("_n") == 1).drop("_n")
        present = (lake.read_cutouts(spark, cutouts_path).select("objid")
                   if storage.table_exists(cutouts_path) else None)
        new = good if present is None else good.join(present, "objid", "left_anti")
        positions = [c_ for c_ in ("ra", "dec") if c_ in raw.columns]
        if positions:
            new = new.join(raw.select("objid", *positions).dropDuplicates(["objid"]), "objid", "left")
        catalog_path = conf.lake.table("catalog")
        if len(positions) < 2 and storage.table_exists(catalog_path):
            # Positions from the catalog where it knows the object; NaN otherwise (an import need not have them).
            catalog = spark.read.parquet(uri(catalog_path)).select("objid", F.col("ra").alias("_ra"),
                                                                   F.col("dec").alias("_dec"))
            new = new.join(catalog.dropDuplicates(["objid"]), "objid", "left")
            for p in ("ra", "dec"):
                new = new.withColumn(p, F.coalesce(*( [F.col(p)] if p in positions else []), F.col(f"_{p}")))
            new = new.drop("_ra", "_dec")
        for p in ("ra", "dec"):
            if p not in new.columns:
                new = new.withColumn(p, F.lit(None).cast("double"))
            new = new.withColumn(p, F.coalesce(F.col(p).cast("double"), F.lit(float("nan"))))
        now = datetime.now(timezone.utc)
        new = new.withColumn("fetched_at", F.lit(now).cast("timestamp")).withColumn("source", F.lit(source))
        schema = lake.CUTOUTS.spark_schema()
        new = new.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])
        new.write.option("maxRecordsPerFile", c.rows_per_file).parquet(uri(f"{work_path}/new"))
        stored = spark.read.parquet(uri(f"{work_path}/new")).count()
        if stored:
            _commit_files(f"{work_path}/new", cutouts_path, f"part-import-{run_id}")

        labels_stored = 0
        if "class" in raw.columns:
            labels_stored = _import_labels(spark, raw, labels_path, work_path, source, run_id, checked)
    finally:
        spark.sparkContext.setJobDescription(None)
        storage.delete(work_path)
    lake_objects = spark.read.parquet(uri(cutouts_path)).count() if storage.table_exists(cutouts_path) else 0
    valid = counts.get(STORED, 0)
    return ImportResult(source=source, path=cutouts_path, read=valid + counts.get(FAILED, 0), stored=stored,
                        already_present=valid - stored, failed=failed, labels_stored=labels_stored, fit=c.import_fit,
                        scale_arcsec_per_px=scale, lake_objects=lake_objects)


def _stored_scale(checked) -> Optional[float]:
    from pyspark.sql import functions as F

    row = checked.where(F.col("status") == STORED).agg(F.max("scale_arcsec_per_px").alias("s")).collect()[0]
    return row["s"]


def _import_labels(spark, raw, labels_path: str, work_path: str, source: str, run_id: str, checked) -> int:
    """Labels of the input's valid images that ``lake/labels`` lacks → new label files; returns how many."""
    from pyspark.sql import functions as F

    labels = (raw.where(F.upper(F.col("class")).isin(*CLASSES)).select(
        "objid", F.upper(F.col("class")).alias("class"),
        *[c for c in ("run", "rerun", "camcol", "field") if c in raw.columns]).dropDuplicates(["objid"]))
    labels = labels.join(checked.where(F.col("status") == STORED).select("objid").distinct(), "objid", "inner")
    if storage.table_exists(labels_path):
        labels = labels.join(spark.read.parquet(storage.spark_uri(labels_path)).select("objid"), "objid", "left_anti")
    labels = objid.with_field_columns(labels).withColumn("source", F.lit(source))
    schema = LABELS.spark_schema()
    labels = labels.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])
    labels.coalesce(1).write.parquet(storage.spark_uri(f"{work_path}/labels"))
    count = spark.read.parquet(storage.spark_uri(f"{work_path}/labels")).count()
    if count:
        _commit_files(f"{work_path}/labels", labels_path, f"part-import-{run_id}")
    return count


def _commit_files(folder: str, table_path: str, prefix: str) -> None:
    """Move the Parquet files Spark wrote to ``folder`` into ``table_path`` as ``<prefix>-<n>.parquet``."""
    storage.make_dirs(table_path)
    files = sorted(e.name for e in storage.list_entries(folder)
                   if e.name.endswith(".parquet") and not e.name.startswith(("_", ".")))
    for index, file_name in enumerate(files):
        storage.move(storage.join(folder, file_name), storage.join(table_path, f"{prefix}-{index:05d}.parquet"))
