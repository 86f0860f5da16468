"""Extraction: SkyServer (or a CSV export of it) → ``lake/catalog`` (labelled) and ``lake/photometric``.

Labelled objects (:func:`extract_catalog`)
    ``SpecObj s JOIN PhotoObj p ON s.bestObjID = p.objID`` (template ``sql/catalog_page.sql``), keyset-paged on
    specObjID. The id space ``[extract.min_specobjid, extract.max_specobjid]`` is split into ``extract.tasks``
    ranges; Spark runs one task per range, each with its own client and ``1/tasks`` of the job's rate limit
    (``skyserver.max_queries_per_s``). A task fetches ``TOP page_rows`` rows with specObjID above the last one it
    has, until a page comes back short. A page of exactly ``skyserver.row_cap`` rows may have been cut by the server,
    so it is discarded and the rest of the range is halved and fetched as two ranges.

Columns
    ``objID``, ra, dec, u..z, the columns of ``extract.photo_columns`` and every PhotoObj column the configured
    features need (``train.features``: the config adds them to ``extract.photo_columns`` when it is loaded, see
    :mod:`skyclass.features`), lower-cased in the lake.

Unlabelled objects (:func:`extract_photometric`)
    Primary PhotoObj detections without a spectrum in the box ``extract.box_ra_deg`` × ``extract.box_dec_deg``
    (``sql/photometric_page.sql``); the box is split into ``extract.tasks`` ra strips, keyset-paged on objID; a
    truncated page halves the strip's ra range.

Resuming and replacing
    Each completed range is written to ``<table>.ranges/<plan-id>/<range-id>/`` (one Parquet file and a ``_DONE``
    marker with the range's statistics) by the task that fetched it, through :mod:`skyclass.storage`. The plan id
    is a hash of everything that decides the ranges and their content (URL, template text, columns, id bounds or
    box, number of tasks). The staging belongs to one run, the night ``extract.run_date`` (``--run-date``, default
    today in UTC), recorded in ``_RUN.json`` of the plan folder: a rerun of the same run skips ranges that have a
    ``_DONE`` marker, so an interrupted run resumes where it stopped; a later night with the same plan discards
    the staging (logged) and fetches afresh, unless ``extract.resume`` (``--resume``); a different plan discards
    the old staging. When every range is done, the ranges are assembled, the quality rules applied, and the table
    swapped in whole with :func:`skyclass.storage.replace_directory` (a rerun replaces, never appends); the
    staging folder is then deleted, so the next run fetches afresh.

Quality rules (both tables; the first rule that applies wins)
    ``zWarning != 0`` → quality ``zwarning``; any magnitude missing or implausible (sentinels such as -9999, see
    :func:`skyclass.lake.quality_column`) → ``bad_photometry``; else ``ok``. ``extract.bad_rows``:
    ``flag`` keeps such rows with their quality value, ``drop`` removes them; both are counted and logged.

CSV import (``from_csv``)
    A SkyServer/CasJobs CSV export instead of queries: column names are case-insensitive; SkyServer's names
    (objID, specObjID, zWarning) or the lower-case export names of ``../shared/data/sdss/labelled.csv`` where
    ``redshift`` is SpecObj.z (a file with two ``z`` columns and no ``redshift`` takes the first as the magnitude
    and the second as SpecObj.z, the order of ``p.*, s.*``); a missing zWarning column means 0. Ids are read as
    text and converted exactly (specobjid to DECIMAL(20,0)), never through float.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable, Iterator, Optional, Sequence

import pandas as pd
import pyarrow as pa

from skyclass import lake, storage
from skyclass.config import CLASSES
from skyclass.errors import SkyclassError
from skyclass.skyserver import (SkyServerClient, SqlValueError, render_sql, sql_float, sql_identifier, sql_int,
                                sql_template)

log = logging.getLogger(__name__)

REQUIRED_PHOTO_COLUMNS = ("ra", "dec") + lake.MAGNITUDES
# Names the catalog table gives to SpecObj columns or its own columns: a photo column may not reuse them.
_RESERVED_NAMES = {"objid", "specobjid", "class", "redshift", "zwarning", "quality", "bestobjid"}
# PhotoObj columns that hold integers (flags, counters, ids); every other photo column is read as float64.
INTEGER_PHOTO_COLUMNS = frozenset({
    "run", "rerun", "camcol", "field", "obj", "mode", "type", "flags", "flags_u", "flags_g", "flags_r", "flags_i",
    "flags_z", "nchild", "clean", "status", "thingid", "resolvestatus", "insidemask", "skyversion", "parentid",
    "fieldid", "probpsf", "htmid", "nprof",
})
UINT64_MAX = 2**64 - 1
_DONE = "_DONE"


class ExtractError(SkyclassError):
    """Extraction cannot proceed (bad input file, bad configuration, SkyServer failure after retries)."""


# --- results -----------------------------------------------------------------------------------------------------

@dataclass
class ExtractResult:
    """Summary of one extraction (printed by the CLI)."""

    table: str
    path: str
    source: str
    rows_written: int
    class_counts: dict = field(default_factory=dict)
    flagged: dict = field(default_factory=dict)  # reason -> rows kept with that quality value
    dropped: dict = field(default_factory=dict)  # reason -> rows removed
    pages: int = 0  # pages fetched by this run (resumed ranges excluded)
    requests: int = 0  # HTTP attempts of this run, retries and the planning (histogram) query included
    ranges: int = 0
    ranges_resumed: int = 0
    splits: int = 0  # truncated pages whose range was halved
    fetch_s: float = 0.0  # wall time of the parallel fetch (the rest is assembling and writing the table)
    elapsed_s: float = 0.0
    run_date: Optional[str] = None  # the run the staged ranges belonged to (None: a CSV import)

    @property
    def rows_per_s(self) -> float:
        return self.rows_written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        lines = [f"{self.table}: {self.rows_written:,} rows written to {self.path}",
                 f"  source: {self.source}"]
        if self.ranges:
            lines.append(f"  {self.pages:,} pages ({self.requests:,} requests, {self.splits} truncated-page splits) "
                         f"in {self.ranges} ranges, {self.ranges_resumed} resumed from an earlier attempt"
                         + (f" (run {self.run_date})" if self.run_date else ""))
        lines.append(f"  {self.elapsed_s:.1f} s, {self.rows_per_s:,.0f} rows/s"
                     + (f" (fetching {self.fetch_s:.1f} s)" if self.ranges else ""))
        if self.class_counts:
            lines.append("  classes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.class_counts.items())))
        for label, counts in (("flagged (kept)", self.flagged), ("dropped", self.dropped)):
            if counts:
                lines.append(f"  {label}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
        return "\n".join(lines)


# --- plans -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IdRange:
    """specObjIDs in (after, end]: exclusive lower bound, inclusive upper bound."""

    index: int
    after: int
    end: int

    @property
    def range_id(self) -> str:
        return f"r{self.index:04d}"


@dataclass(frozen=True)
class RaStrip:
    """Objects with ra_min <= ra < ra_max (<= for the box's last strip) and dec_min <= dec <= dec_max."""

    index: int
    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float
    last: bool

    @property
    def range_id(self) -> str:
        return f"s{self.index:04d}"


def plan_id_ranges(min_id: int, max_id: int, parts: int) -> list[IdRange]:
    """Split the ids [min_id, max_id] into ``parts`` contiguous ranges of (nearly) equal width.

    Raises
    ------
    ValueError
        min_id > max_id, ids outside 0..2**64-1, or parts < 1.
    """
    if not (0 <= min_id <= max_id <= UINT64_MAX) or parts < 1:
        raise ValueError(f"need 0 <= min_id <= max_id <= 2**64-1 and parts >= 1, got {min_id}, {max_id}, {parts}")
    width = max_id - min_id + 1
    parts = min(parts, width)
    edges = [min_id - 1 + (width * k) // parts for k in range(parts + 1)]
    return [IdRange(k, edges[k], edges[k + 1]) for k in range(parts)]


HISTOGRAM_BUCKETS = 4096


def histogram_sql(min_id: int, max_id: int, buckets: int = HISTOGRAM_BUCKETS) -> tuple[str, int]:
    """(SQL of the specObjID histogram over [min_id, max_id], bucket width)."""
    width = max(1, -(-(max_id - min_id + 1) // buckets))
    return render_sql("specobjid_histogram", bucket_width=sql_int(width, minimum=1),
                      min_specobjid=sql_int(min_id, minimum=0, maximum=UINT64_MAX),
                      max_specobjid=sql_int(max_id, minimum=0, maximum=UINT64_MAX)), width


def plan_balanced_ranges(min_id: int, max_id: int, parts: int, bucket_counts: Sequence[tuple[int, int]],
                         bucket_width: int) -> list[IdRange]:
    """Split [min_id, max_id] into at most ``parts`` ranges holding about equal numbers of rows.

    Parameters
    ----------
    bucket_counts : sequence of (bucket, rows)
        Rows per bucket, bucket k covering ids ``k*bucket_width .. (k+1)*bucket_width - 1`` (the histogram query).
    bucket_width : int

    Returns
    -------
    list of IdRange
        Contiguous, covering [min_id, max_id] exactly; boundaries fall on bucket ends, so a bucket holding more
        than 1/parts of the rows gives fewer ranges. Equal-width ranges when the histogram is empty.
    """
    counts = sorted((int(b), int(n)) for b, n in bucket_counts if int(n) > 0)
    total = sum(n for _, n in counts)
    if total == 0 or parts == 1:
        return plan_id_ranges(min_id, max_id, parts)
    ends, cumulative, j = [], 0, 1
    for bucket, n in counts:
        cumulative += n
        while j < parts and cumulative >= total * j / parts:
            end = min(max_id, (bucket + 1) * bucket_width - 1)
            if end < max_id and (not ends or end > ends[-1]):
                ends.append(end)
            j += 1
    edges = [min_id - 1, *ends, max_id]
    return [IdRange(k, edges[k], edges[k + 1]) for k in range(len(edges) - 1)]


def plan_ra_strips(box_ra_deg: Sequence[float], box_dec_deg: Sequence[float], parts: int) -> list[RaStrip]:
    """Split an ra/dec box into ``parts`` ra strips of equal width."""
    ra_min, ra_max = float(box_ra_deg[0]), float(box_ra_deg[1])
    dec_min, dec_max = float(box_dec_deg[0]), float(box_dec_deg[1])
    edges = [ra_min + (ra_max - ra_min) * k / parts for k in range(parts)] + [ra_max]
    return [RaStrip(k, edges[k], edges[k + 1], dec_min, dec_max, k == parts - 1) for k in range(parts)]


def photo_columns(conf) -> tuple[list[str], list[str]]:
    """(all photo columns to fetch, the extra ones beyond ra, dec, u..z), validated, as configured.

    Raises
    ------
    ExtractError
        A name in ``extract.photo_columns`` is not a plain identifier or clashes with a catalog column.
    """
    names: list[str] = list(REQUIRED_PHOTO_COLUMNS)
    extra: list[str] = []
    for name in conf.extract.photo_columns:
        try:
            sql_identifier(name)
        except SqlValueError as err:
            raise ExtractError(f"extract.photo_columns: {err}") from None
        lower = name.lower()
        if lower in _RESERVED_NAMES:
            raise ExtractError(f"extract.photo_columns: {name!r} clashes with a catalog column of the same name; "
                               "remove it (the SpecObj side already provides it)")
        if lower not in {n.lower() for n in names}:
            names.append(lower)
            extra.append(lower)
    return names, extra


def extra_lake_columns(extra: Sequence[str]) -> list[lake.Column]:
    """Lake columns for extra photo columns: int64 for PhotoObj's integer columns, float64 for the rest."""
    return [lake.Column(name, pa.int64() if name in INTEGER_PHOTO_COLUMNS else pa.float64(),
                        doc="PhotoObj column (extract.photo_columns)") for name in extra]


def catalog_page_sql(after_specobjid: int, range_end: int, top: int, columns: Sequence[str]) -> str:
    """SQL of one labelled page: ``TOP top`` rows with ``after_specobjid < specObjID <= range_end``."""
    return render_sql("catalog_page", top=sql_int(top, minimum=1),
                      photo_columns=", ".join(f"p.{sql_identifier(c)}" for c in columns),
                      after_specobjid=sql_int(after_specobjid, minimum=-1, maximum=UINT64_MAX),
                      range_end=sql_int(range_end, minimum=0, maximum=UINT64_MAX))


def photometric_page_sql(strip: RaStrip, ra_min: float, ra_max: float, after_objid: int, top: int,
                         columns: Sequence[str]) -> str:
    """SQL of one photometric page: ``TOP top`` rows in [ra_min, ra_max) of the strip's dec band, objID above."""
    return render_sql("photometric_page", top=sql_int(top, minimum=1),
                      photo_columns=", ".join(f"p.{sql_identifier(c)}" for c in columns),
                      ra_min=sql_float(ra_min), ra_max=sql_float(ra_max),
                      ra_max_op="<=" if strip.last and ra_max == strip.ra_max else "<",
                      dec_min=sql_float(strip.dec_min), dec_max=sql_float(strip.dec_max),
                      after_objid=sql_int(after_objid, minimum=-1, maximum=2**63 - 1))


# --- fetching one range (runs in a Spark task) ---------------------------------------------------------------------

@dataclass
class RangeStats:
    range_id: str
    rows: int = 0
    pages: int = 0
    splits: int = 0
    requests: int = 0
    elapsed_s: float = 0.0


def fetch_catalog_range(client: SkyServerClient, rng: IdRange, columns: Sequence[str], page_rows: int,
                        row_cap: int) -> tuple[pd.DataFrame, RangeStats]:
    """All labelled rows of one specObjID range, by keyset pages; truncated pages split the remaining range.

    Returns
    -------
    (pandas.DataFrame, RangeStats)
        Rows as SkyServer returned them (exact ids) and the range's page statistics.

    Raises
    ------
    SkyServerError
        A page failed after the client's retries.
    ExtractError
        A single specObjID returned a full row cap (cannot happen with unique ids; a server fault).
    """
    stats = RangeStats(rng.range_id)
    started = time.monotonic()
    sent_before = client.requests_sent
    frames = []
    work = [(rng.after, rng.end)]
    while work:
        after, end = work.pop()
        page = client.sql(catalog_page_sql(after, end, page_rows, columns))
        stats.pages += 1
        if len(page) >= row_cap:
            # SkyServer cut the answer at its row cap: the page may miss rows, so split what is left of the range.
            if end - after < 2:
                raise ExtractError(f"specObjID range ({after}, {end}] returned the full row cap ({row_cap}) and "
                                   "cannot be split further; check skyserver.row_cap")
            middle = after + (end - after) // 2
            work.extend([(middle, end), (after, middle)])
            stats.splits += 1
            continue
        if len(page):
            frames.append(page)
        if len(page) == page_rows:
            work.append((int(_column(page, "specobjid").max()), end))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    stats.rows = len(frame)
    stats.requests = client.requests_sent - sent_before
    stats.elapsed_s = time.monotonic() - started
    return frame, stats


def fetch_photometric_strip(client: SkyServerClient, strip: RaStrip, columns: Sequence[str], page_rows: int,
                            row_cap: int) -> tuple[pd.DataFrame, RangeStats]:
    """All photometric rows of one ra strip, by objID keyset pages; a truncated page halves the ra range.

    Raises
    ------
    SkyServerError
        A page failed after the client's retries.
    """
    stats = RangeStats(strip.range_id)
    started = time.monotonic()
    sent_before = client.requests_sent
    frames = []
    work = [(strip.ra_min, strip.ra_max, -1)]
    while work:
        ra_min, ra_max, after = work.pop()
        page = client.sql(photometric_page_sql(strip, ra_min, ra_max, after, page_rows, columns))
        stats.pages += 1
        if len(page) >= row_cap:
            middle = (ra_min + ra_max) / 2
            if not ra_min < middle < ra_max:
                raise ExtractError(f"ra range [{ra_min}, {ra_max}] returned the full row cap ({row_cap}) and cannot "
                                   "be split further; check skyserver.row_cap")
            # Rows with objID <= after were fetched for the whole strip, so both halves keep the cursor.
            work.extend([(middle, ra_max, after), (ra_min, middle, after)])
            stats.splits += 1
            continue
        if len(page):
            frames.append(page)
        if len(page) == page_rows:
            work.append((ra_min, ra_max, int(_column(page, "objid").max())))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    stats.rows = len(frame)
    stats.requests = client.requests_sent - sent_before
    stats.elapsed_s = time.monotonic() - started
    return frame, stats


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    for column in frame.columns:
        if column.lower() == name:
            return frame[column]
    raise ExtractError(f"SkyServer's answer has no column {name!r} (columns: {', '.join(frame.columns)})")


def raw_schema(table: str, extra: Sequence[str]) -> pa.Schema:
    """Arrow schema of the staged (pre-quality) rows of ``catalog`` or ``photometric``."""
    base = lake.CATALOG if table == "catalog" else lake.PHOTOMETRIC
    columns = [c for c in base.columns if c.name != "quality"] + extra_lake_columns(extra)
    return pa.schema([pa.field(c.name, c.type, nullable=True) for c in columns])


def frame_to_arrow(frame: pd.DataFrame, schema: pa.Schema, what: str) -> pa.Table:
    """SkyServer rows (any column-name case) → Arrow table of ``schema``; ids exact, missing zWarning → 0.

    Raises
    ------
    ExtractError
        A column of the schema is missing, or a value cannot be converted.
    """
    by_lower = {c.lower(): c for c in frame.columns}
    arrays = []
    for f in schema:
        if f.name not in by_lower:
            if f.name == "zwarning":
                arrays.append(pa.array([0] * len(frame), pa.int64()))
                continue
            if len(frame) == 0:
                arrays.append(pa.array([], f.type))
                continue
            raise ExtractError(f"{what}: no column {f.name!r} in the answer (got {', '.join(frame.columns)})")
        values = frame[by_lower[f.name]]
        try:
            if pa.types.is_decimal(f.type):
                arrays.append(pa.array([None if pd.isna(v) else Decimal(int(v)) for v in values.tolist()], f.type))
            elif pa.types.is_integer(f.type):
                arrays.append(pa.array([None if pd.isna(v) else int(v) for v in values.tolist()], f.type))
            elif pa.types.is_floating(f.type):
                arrays.append(pa.array(pd.to_numeric(values, errors="raise").astype("float64").to_numpy(),
                                       f.type, from_pandas=True))
            else:
                arrays.append(pa.array([None if pd.isna(v) else str(v).strip().upper() if f.name == "class"
                                        else str(v) for v in values.tolist()], f.type))
        except (ValueError, TypeError, pa.ArrowException) as err:
            raise ExtractError(f"{what}: column {f.name!r} cannot be read as {f.type} ({err})") from None
    return pa.Table.from_arrays(arrays, schema=schema)


# --- staging (written by Spark tasks, read by the driver) ---------------------------------------------------------

RUN_MANIFEST = "_RUN.json"


def staging_root(conf, table: str) -> str:
    """Folder of the per-range staging of ``table`` (``<lake>/<table>.ranges``)."""
    return conf.lake.table(table).rstrip("/") + ".ranges"


def write_range(folder: str, table: pa.Table, stats: RangeStats) -> None:
    """Write one completed range: the Parquet file first, then the ``_DONE`` marker (so a marker means whole).

    Runs in Spark tasks; every file goes through :mod:`skyclass.storage`, as on the driver.
    """
    import pyarrow.parquet as pq

    storage.delete(folder)
    storage.make_dirs(folder)
    with storage.open_output(storage.join(folder, f"part-{stats.range_id}.parquet")) as out:
        pq.write_table(table, out)
    storage.write_text(storage.join(folder, _DONE), json.dumps(asdict(stats)))


def read_done_marker(folder: str) -> Optional[dict]:
    """The statistics of a completed range, or None when the range is not done."""
    try:
        return json.loads(storage.read_text(storage.join(folder, _DONE)))
    except FileNotFoundError:
        return None


def resolve_run_date(run_date: Optional[str]) -> str:
    """``YYYY-MM-DD`` of the run (today in UTC when None): the run staged ranges belong to."""
    if run_date is None:
        return datetime.now(timezone.utc).date().isoformat()
    return str(run_date)


def prepare_staging(plan: "ExtractionPlan", run_date: str, resume: bool = False) -> str:
    """The plan's staging folder, owned by the run of ``run_date``; returns ``plan.folder``.

    Staging of other plans under the table's staging root is deleted (their ranges mean something else). Staging
    of this plan left by another run (an interrupted extraction of an earlier night) is deleted too, with a log
    line, unless ``resume``: a later night must fetch afresh, not serve last night's rows. A rerun of the same run
    keeps its own finished ranges. The owner is recorded in the run manifest ``_RUN.json`` of the plan folder.

    Parameters
    ----------
    plan : ExtractionPlan
    run_date : str
        The run's key (``extract.run_date``, default today in UTC).
    resume : bool
        Reuse the staging of whatever run left it (``extract.resume`` / ``--resume``).

    Returns
    -------
    str
        ``plan.folder``, holding only ranges of this run (or, with ``resume``, of the run that left them).
    """
    root, _ = storage.split(plan.folder)
    for entry in storage.list_entries(root):
        if entry.name != plan.plan_id:
            log.info("discarding staging of another extraction plan: %s", entry.path)
            storage.delete(entry.path)
    manifest_path = storage.join(plan.folder, RUN_MANIFEST)
    owner = None
    if storage.exists(plan.folder):
        try:
            owner = json.loads(storage.read_text(manifest_path)).get("run_date")
        except (FileNotFoundError, ValueError, AttributeError):
            owner = None
        if owner != run_date:
            done = sum(read_done_marker(e.path) is not None for e in storage.list_entries(plan.folder) if e.is_dir)
            if resume:
                log.info("%s: resuming the %d ranges staged by run %s in %s (extract.resume)", plan.table, done,
                         owner or "unknown", plan.folder)
            else:
                log.info("%s: discarding %d ranges staged by run %s in %s: they belong to another run (this is "
                         "run %s); pass --resume to reuse them", plan.table, done, owner or "unknown", plan.folder,
                         run_date)
                storage.delete(plan.folder)
    storage.write_text(manifest_path, json.dumps({"run_date": run_date, "plan_id": plan.plan_id, "table": plan.table,
                                                  "resumed_from": owner if owner != run_date else None,
                                                  "written_at": datetime.now(timezone.utc).isoformat()}))
    return plan.folder


def _plan_id(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class ExtractionPlan:
    """The ranges of one extraction and where their staging lives (``folder/<range_id>/``)."""

    table: str
    ranges: tuple
    plan_id: str
    folder: str
    probe_requests: int = 0  # SkyServer requests made to plan (the histogram query)


def catalog_plan(conf) -> ExtractionPlan:
    """The specObjID ranges of a labelled extraction and their staging folder.

    With ``extract.balance_ranges`` (and more than one task) one histogram query to SkyServer gives ranges of about
    equal row counts; otherwise the ranges have equal widths and nothing is fetched.

    Raises
    ------
    ExtractError
        A bad ``extract.photo_columns`` entry.
    SkyServerError
        The histogram query failed.
    """
    columns, _ = photo_columns(conf)
    lo, hi, tasks = conf.extract.min_specobjid, conf.extract.max_specobjid, conf.extract.tasks
    probes = 0
    if conf.extract.balance_ranges and tasks > 1:
        sql, width = histogram_sql(lo, hi)
        with SkyServerClient.from_config(conf.skyserver) as client:
            histogram = client.sql(sql, what="specObjID histogram (extract.balance_ranges) query: " + sql)
            probes = client.requests_sent
        pairs = zip(_column(histogram, "bucket"), _column(histogram, "n")) if len(histogram) else []
        ranges = plan_balanced_ranges(lo, hi, tasks, list(pairs), width)
        log.info("catalog: %d ranges of about equal row counts from the specObjID histogram", len(ranges))
    else:
        ranges = plan_id_ranges(lo, hi, tasks)
    plan_id = _plan_id(table="catalog", url=conf.skyserver.url, template=sql_template("catalog_page"),
                       columns=columns, ranges=[(r.after, r.end) for r in ranges])
    return ExtractionPlan("catalog", tuple(ranges), plan_id, f"{staging_root(conf, 'catalog')}/{plan_id}", probes)


def photometric_plan(conf) -> ExtractionPlan:
    """The ra strips of a photometric extraction and their staging folder (no I/O).

    Raises
    ------
    ExtractError
        No box configured, or a bad ``extract.photo_columns`` entry.
    """
    columns, _ = photo_columns(conf)
    if conf.extract.box_ra_deg is None or conf.extract.box_dec_deg is None:
        raise ExtractError("extract.box_ra_deg and extract.box_dec_deg must be set for a photometric extraction "
                           "(e.g. --set 'extract.box_ra_deg=[230.1, 231.1]'), or pass --from-csv FILE")
    strips = plan_ra_strips(conf.extract.box_ra_deg, conf.extract.box_dec_deg, conf.extract.tasks)
    plan_id = _plan_id(table="photometric", url=conf.skyserver.url, template=sql_template("photometric_page"),
                       columns=columns, strips=[(s.ra_min, s.ra_max, s.dec_min, s.dec_max) for s in strips])
    return ExtractionPlan("photometric", tuple(strips), plan_id, f"{staging_root(conf, 'photometric')}/{plan_id}")


# --- the jobs ----------------------------------------------------------------------------------------------------

def extract_catalog(spark, conf, from_csv: Optional[str] = None) -> ExtractResult:
    """Extract labelled objects (SpecObj JOIN PhotoObj) into ``lake/catalog``, replacing the table.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        Uses ``skyserver.*``, ``extract.*`` and ``lake.root``.
    from_csv : str, optional
        A SkyServer/CasJobs CSV export to import instead of querying SkyServer.

    Returns
    -------
    ExtractResult

    Raises
    ------
    ExtractError
        Bad configuration, a CSV file that is missing or lacks a column, or ranges that failed after retries (the
        completed ones are kept and a rerun resumes).
    """
    return _extract(spark, conf, "catalog", from_csv, catalog_plan, fetch_catalog_range, "duplicate_specobjid")


def extract_photometric(spark, conf, from_csv: Optional[str] = None) -> ExtractResult:
    """Extract unlabelled photometric objects of the configured box into ``lake/photometric``, replacing it.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        Uses ``extract.box_ra_deg``/``box_dec_deg`` (required unless ``from_csv``), ``extract.tasks``,
        ``extract.page_rows``, ``skyserver.*``.
    from_csv : str, optional
        A CSV export like ``unlabelled_abell2065.csv`` (objid, ra, dec, u, g, r, i, z) to import instead.

    Returns
    -------
    ExtractResult

    Raises
    ------
    ExtractError
        No box configured, a bad CSV file, or strips that failed after retries (completed ones are kept).
    """
    return _extract(spark, conf, "photometric", from_csv, photometric_plan, fetch_photometric_strip,
                    "duplicate_objid")


def _extract(spark, conf, table: str, from_csv: Optional[str], make_plan, fetch_piece, duplicate_reason: str):
    """Shared body of the two extractions: a CSV import or parallel fetches of the plan's pieces, then the
    quality rules and the atomic write."""
    started = time.monotonic()
    columns, extra = photo_columns(conf)
    if from_csv:
        raw, duplicates = read_export_csv(spark, from_csv, table, extra)
        result = ExtractResult(table, conf.lake.table(table), f"CSV export {from_csv}", 0)
        if duplicates:
            result.dropped[duplicate_reason] = duplicates
    else:
        def fetch(client, piece):
            return fetch_piece(client, piece, columns, conf.extract.page_rows, conf.skyserver.row_cap)

        raw, result = _fetch_ranges(spark, conf, make_plan(conf), fetch, raw_schema(table, extra))
    return _finish(spark, conf, table, raw, extra, result, started)


def _fetch_ranges(spark, conf, plan: ExtractionPlan,
                  fetch: Callable[[SkyServerClient, object], tuple[pd.DataFrame, RangeStats]], schema: pa.Schema):
    """Fetch every range not yet staged, in parallel Spark tasks; return (raw DataFrame of all ranges, result)."""
    table, ranges, plan_id = plan.table, plan.ranges, plan.plan_id
    run_date = resolve_run_date(conf.extract.run_date)
    plan_folder = prepare_staging(plan, run_date, conf.extract.resume)
    done, pending = {}, []
    for rng in ranges:
        marker = read_done_marker(f"{plan_folder}/{rng.range_id}")
        if marker is None:
            pending.append(rng)
        else:
            done[rng.range_id] = marker
    if done:
        log.info("%s: resuming plan %s: %d of %d ranges already fetched", table, plan_id, len(done), len(ranges))
    result = ExtractResult(table, conf.lake.table(table), f"SkyServer {conf.skyserver.url}", 0, ranges=len(ranges),
                           ranges_resumed=len(done), requests=plan.probe_requests, run_date=run_date)
    if pending:
        # The politeness limit is for the whole job: each concurrently running task gets its share.
        per_task_rate = conf.skyserver.max_queries_per_s / max(1, min(conf.extract.tasks, len(pending)))
        skyserver_conf = conf.skyserver
        log.info("%s: fetching %d ranges in parallel tasks (%.3g queries/s each, %d rows per page)", table,
                 len(pending), per_task_rate, conf.extract.page_rows)

        def run_partition(items: Iterator) -> Iterator[dict]:
            # One client (one requests.Session) per task, nothing shared between tasks.
            with SkyServerClient.from_config(skyserver_conf, max_requests_per_s=per_task_rate) as client:
                for rng in items:
                    try:
                        frame, stats = fetch(client, rng)
                        arrow = frame_to_arrow(frame, schema, f"{table} range {rng.range_id}")
                        write_range(f"{plan_folder}/{rng.range_id}", arrow, stats)
                    except SkyclassError as err:  # report as data; the driver raises once all tasks have finished
                        yield {"range_id": rng.range_id, "error": str(err), "type": type(err).__name__}
                    else:
                        yield asdict(stats)

        fetch_started = time.monotonic()
        outcomes = spark.sparkContext.parallelize(pending, len(pending)).mapPartitions(run_partition).collect()
        result.fetch_s = time.monotonic() - fetch_started
        failures = [o for o in outcomes if "error" in o]
        for outcome in outcomes:
            if "error" not in outcome:
                result.pages += outcome["pages"]
                result.requests += outcome["requests"]
                result.splits += outcome["splits"]
        if failures:
            first = f"{failures[0]['type']}: {failures[0]['error']}"
            if all(f["type"] == "SkyServerQueryError" for f in failures):
                raise ExtractError(f"SkyServer rejected the {table} query ({first}); check extract.photo_columns "
                                   "and the SQL template")
            kept = len(ranges) - len(failures)
            raise ExtractError(f"{len(failures)} of {len(ranges)} {table} ranges failed ({first}); "
                               + (f"the {kept} completed ranges are kept in {plan_folder} and " if kept else "")
                               + "rerunning the same command resumes from the completed ranges")
    folders = [f"{plan_folder}/{rng.range_id}" for rng in ranges]
    raw = spark.read.schema(_spark_schema(schema)).parquet(*[storage.spark_uri(f) for f in folders])
    return raw, result


def _spark_schema(schema: pa.Schema):
    return lake.Table("raw", tuple(lake.Column(f.name, f.type, True) for f in schema)).spark_schema()


def _finish(spark, conf, table: str, raw, extra: Sequence[str], result: ExtractResult, started: float
            ) -> ExtractResult:
    """Quality rules, flag/drop, write with an atomic swap, clean the staging, fill in the counts."""
    from pyspark.sql import functions as F

    frame = raw.withColumn("quality", lake.quality_column(table)).cache()
    try:
        by_quality: dict[str, int] = {}
        by_class: dict[str, int] = {}
        group = ["quality", "class"] if table == "catalog" else ["quality"]
        for row in frame.groupBy(*group).count().collect():
            by_quality[row["quality"]] = by_quality.get(row["quality"], 0) + row["count"]
            if table == "catalog":
                by_class[row["class"]] = by_class.get(row["class"], 0) + (
                    row["count"] if conf.extract.bad_rows == "flag" or row["quality"] == lake.QUALITY_OK else 0)
        bad = {k: v for k, v in by_quality.items() if k != lake.QUALITY_OK}
        if conf.extract.bad_rows == "drop":
            frame_out = frame.filter(F.col("quality") == lake.QUALITY_OK)
            result.dropped.update(bad)
        else:
            frame_out = frame
            result.flagged.update(bad)
        for reason, count in sorted(bad.items()):
            log.info("%s: %d rows with quality %s (%s, extract.bad_rows=%s)", table, count, reason,
                     "kept with the flag" if conf.extract.bad_rows == "flag" else "dropped", conf.extract.bad_rows)
        target = (lake.CATALOG if table == "catalog" else lake.PHOTOMETRIC).with_columns(extra_lake_columns(extra))
        out_schema = target.spark_schema()
        frame_out = frame_out.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in out_schema.fields])
        path = conf.lake.table(table)
        storage.replace_directory(path, lambda staging: frame_out.write.mode("overwrite").parquet(staging))
    finally:
        frame.unpersist()
    storage.delete(staging_root(conf, table))
    result.rows_written = sum(by_quality.values()) - (sum(bad.values()) if conf.extract.bad_rows == "drop" else 0)
    result.class_counts = by_class
    result.elapsed_s = time.monotonic() - started
    log.info("%s: %d rows written to %s in %.1f s", table, result.rows_written, path, result.elapsed_s)
    return result


# --- CSV import --------------------------------------------------------------------------------------------------

_ALIASES = {  # lower-case CSV name -> lake name
    "objid": "objid", "specobjid": "specobjid", "class": "class", "redshift": "redshift", "zwarning": "zwarning",
    "ra": "ra", "dec": "dec", **{m: m for m in lake.MAGNITUDES}, **{f"modelmag_{m}": m for m in lake.MAGNITUDES},
}


def read_export_csv(spark, path: str, table: str, extra: Sequence[str]):
    """Read a SkyServer/CasJobs CSV export into the staged (pre-quality) layout; returns (DataFrame, duplicates).

    Raises
    ------
    ExtractError
        File missing or empty, a required column missing (the message names file and column), ids not written
        as integers, or an unknown class.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.utils import AnalysisException

    try:
        head = [r.value for r in spark.read.text(path).limit(20).collect()]
    except AnalysisException as err:
        raise ExtractError(f"--from-csv {path}: cannot read the file ({str(err).splitlines()[0]})") from None
    header_line = next((line for line in head if line.strip() and not line.lstrip().startswith("#")), None)
    if header_line is None:
        raise ExtractError(f"--from-csv {path}: the file is empty (expected a header line of column names)")
    names = [n.strip().lower() for n in next(csv.reader([header_line]))]
    mapped: dict[str, int] = {}
    z_positions = [k for k, n in enumerate(names) if n == "z"]
    for k, name in enumerate(names):
        target = _ALIASES.get(name, name if name in extra else None)
        if target and target not in mapped:
            mapped[target] = k
    if table == "catalog" and "redshift" not in mapped and len(z_positions) == 2:
        # Two z columns (p.z, s.z of a CasJobs export): PhotoObj's magnitude first, SpecObj's redshift second.
        mapped["z"], mapped["redshift"] = z_positions
    required = ["objid", "ra", "dec", *lake.MAGNITUDES, *extra]
    if table == "catalog":
        required[1:1] = ["specobjid", "class", "redshift"]
    missing = [c for c in required if c not in mapped]
    if missing:
        hint = " (redshift is SpecObj.z: export it as `s.z AS redshift`)" if "redshift" in missing else ""
        raise ExtractError(f"--from-csv {path}: missing column {missing[0]!r}{hint}; the file has "
                           f"{', '.join(names)}; expected (any case) {', '.join(required)}")
    positional = [f"c{k}" for k in range(len(names))]
    text = (spark.read.option("header", True).option("comment", "#")
            .schema(T.StructType([T.StructField(n, T.StringType()) for n in positional])).csv(path))
    column = lambda name: F.trim(F.col(positional[mapped[name]]))  # noqa: E731
    id_patterns = {"objid": r"^-?[0-9]+$"} | ({"specobjid": r"^[0-9]+$"} if table == "catalog" else {})
    schema = raw_schema(table, extra)
    selected = []
    for f in schema:
        spark_type = _spark_schema(pa.schema([f]))[0].dataType
        if f.name not in mapped:  # only zwarning may be absent here
            selected.append(F.lit(0).cast(spark_type).alias(f.name))
        elif f.name == "class":
            selected.append(F.upper(column("class")).alias("class"))
        else:
            selected.append(F.when(column(f.name) != "", column(f.name)).cast(spark_type).alias(f.name))
    bad_id = {name: ~F.coalesce(column(name).rlike(pattern), F.lit(False)) for name, pattern in id_patterns.items()}
    key = "specobjid" if table == "catalog" else "objid"
    checks = [F.count(F.lit(1)).alias("rows"), F.countDistinct(column(key)).alias("distinct_keys"),
              *[F.sum(bad.cast("int")).alias(f"bad_{name}") for name, bad in bad_id.items()]]
    if table == "catalog":
        checks.append(F.sum((~F.upper(column("class")).isin(*CLASSES)).cast("int")).alias("bad_class"))
    # One pass over the file for every check; examples are looked up only when something is wrong.
    summary = text.agg(*checks).collect()[0]
    for name, bad in bad_id.items():
        if summary[f"bad_{name}"]:
            example = text.filter(bad).select(column(name).alias("v")).limit(1).collect()[0]["v"]
            raise ExtractError(f"--from-csv {path}: {name} value {example!r} is not an integer written in full "
                               f"({summary[f'bad_{name}']} such rows); ids must never pass through float — "
                               "re-export the file with ids as integers or text")
    if table == "catalog" and summary["bad_class"]:
        unknown = (text.select(F.upper(column("class")).alias("class")).filter(~F.col("class").isin(*CLASSES))
                   .groupBy("class").count().limit(5).collect())
        raise ExtractError(f"--from-csv {path}: unknown class values "
                           f"{', '.join(f'{r[0]!r} ({r[1]} rows)' for r in unknown)}; expected {', '.join(CLASSES)}")
    frame = text.select(*selected)
    duplicates = summary["rows"] - summary["distinct_keys"]
    if duplicates:
        log.warning("--from-csv %s: %d rows repeat a %s and were dropped", path, duplicates, key)
        frame = frame.dropDuplicates([key])
    return frame, duplicates
