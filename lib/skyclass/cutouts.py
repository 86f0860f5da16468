"""Image cutouts into the lake: SkyServer's ImgCutout/getjpeg for every catalog object that lacks one.

How a run works (``download_cutouts``):

1. To-do = the catalog (or a deterministic sample of it) minus the objects already in ``lake/cutouts``
   (an anti-join on objid), written to a snapshot in the run's work folder so that every re-execution of a Spark
   task sees exactly the same objects in the same order.
2. The snapshot is hash-partitioned into ``cutouts.tasks`` Spark tasks. Each task opens one SkyServer client,
   downloads with ``concurrency_per_task`` threads, each with its own ``requests.Session`` (a Session is not
   thread-safe), all at ``max_requests_per_s / tasks`` requests per second together (the client's one rate
   limiter), and validates every body (a JPEG of the asked size that is not blank; an invalid body is fetched
   again like a transient error, within the same retry budget).
3. Commit unit: a chunk of ``rows_per_file`` objects. When the whole chunk is done, its stored cutouts are written
   as ONE Parquet file under a hidden name (``.tmp-…``, ignored by Spark, pyarrow and Petastorm) and renamed to
   ``part-<run>-<task>-<chunk>.parquet``. A killed task therefore leaves only whole chunks visible; a re-run's
   anti-join skips them and fetches the rest. No compaction is needed for correctness.
4. Each object's outcome (stored, or failed with a reason) is the task's Spark output, committed by Spark's own
   output committer once per task, so the run's counts are exact even when Spark retries a task. Failures are
   merged into ``lake/cutout_failures`` (rewritten to hold only objects still failing); the next run retries
   them because they are still missing from ``lake/cutouts``.

Progress: PySpark accumulators only reach the driver when a task ends, which for a long download is far too
late. Tasks therefore send their running counts as UDP datagrams to a listener on the driver, which logs
done/total, rate and failures every few seconds; tasks also log a line per committed chunk to their own log.
The datagrams are best effort (a lost one only delays the display); the final counts come from the committed
outputs.

One download per lake at a time: concurrent runs would fetch the same objects twice and race over the temp files
and the failures table. A run holds ``<lake>/_locks/cutouts.lock`` (:class:`skyclass.storage.Lock`: host, pid,
run id, start, heartbeat every ``cutouts.lock_ttl_s / 4``) from start to end; a second run fails at once naming
the holder, and the lock of a dead run is taken over with a warning. Holding it also makes the clean-up of a killed
run's leftovers (hidden chunk files, ``_work/cutouts-*``) safe. Every file the driver or a task touches goes
through :mod:`skyclass.storage`, so the lake may be a local folder, ``file://``, ``hdfs://`` or an object store.
"""
from __future__ import annotations

import io
import json
import logging
import math
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Optional

from skyclass import lake, storage
from skyclass.config import Config
from skyclass.errors import SkyclassError
from skyclass.skyserver import (GETJPEG_PATH, STANDIN_HEADER, STANDIN_RENDERED, SkyServerClient, SkyServerError,
                                SkyServerHTTPError, SkyServerResponseError, SkyServerUnavailable, TransientAnswer)

log = logging.getLogger(__name__)
# Executors log through their own logger: the driver's logging configuration does not reach them.
task_log = logging.getLogger(__name__ + ".task")

MIN_SIZE_PX = 64  # SkyServer clamps width and height to 64..2048
MAX_SIZE_PX = 2048
# The sample hash must differ from the training split's, or a sample would land in one split.
SAMPLE_HASH_PREFIX = "cutouts-sample:"
SAMPLE_HASH_HEX_DIGITS = 13
# Spark output of the download tasks: one row per object.
OUTCOME_SCHEMA = ("objid long, ra double, dec double, status string, reason string, attempts int, "
                  "jpeg_bytes long, at timestamp")
STORED = "stored"
FAILED = "failed"
_PROGRESS_SEND_INTERVAL_S = 1.0


class CutoutsError(SkyclassError):
    """The download cannot start (no catalog table, bad settings)."""


class InvalidCutout(ValueError):
    """A getjpeg body that is not a usable cutout; ``kind`` is a short category (``not_jpeg``, ``corrupt_jpeg``,
    ``wrong_size``, ``blank``) used to count failures by reason."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


# --- pure parts ------------------------------------------------------------------------------------------------

def cutout_request(ra_deg: float, dec_deg: float, *, scale_arcsec_per_px: float, size_px: int
                   ) -> tuple[str, dict[str, str]]:
    """Path (relative to the release URL) and parameters of an ImgCutout/getjpeg request for a square cutout.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Centre of the cutout.
    scale_arcsec_per_px : float
        Pixel scale; SDSS's native scale is 0.396.
    size_px : int
        Width and height; SkyServer clamps sizes outside 64..2048, so those are refused here instead.

    Returns
    -------
    (str, dict)
        For :meth:`skyclass.skyserver.SkyServerClient.request`.

    Raises
    ------
    ValueError
        Non-finite coordinates, declination outside [-90, 90], non-positive scale or size outside 64..2048.
    """
    if not (math.isfinite(ra_deg) and math.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0):
        raise ValueError(f"cutout centre must be finite with -90 <= dec <= 90, got ra={ra_deg}, dec={dec_deg}")
    if not (math.isfinite(scale_arcsec_per_px) and scale_arcsec_per_px > 0):
        raise ValueError(f"scale_arcsec_per_px must be > 0, got {scale_arcsec_per_px}")
    if not MIN_SIZE_PX <= int(size_px) <= MAX_SIZE_PX:
        raise ValueError(f"size_px must be within {MIN_SIZE_PX}..{MAX_SIZE_PX} (SkyServer clamps to that), "
                         f"got {size_px}")
    size = str(int(size_px))
    # repr keeps every digit of the coordinates: a cutout centred 0.5" off is a different image.
    return GETJPEG_PATH, {"ra": repr(float(ra_deg)), "dec": repr(float(dec_deg)),
                          "scale": repr(float(scale_arcsec_per_px)), "width": size, "height": size, "opt": ""}


def validate_jpeg(body: bytes, size_px: int) -> None:
    """Check that ``body`` is a complete JPEG of ``size_px`` × ``size_px`` pixels that is not blank.

    Raises
    ------
    InvalidCutout
        ``not_jpeg`` (e.g. an HTML error page served with HTTP 200), ``corrupt_jpeg`` (truncated or undecodable),
        ``wrong_size``, or ``blank`` (every pixel the same value).
    """
    from PIL import Image

    if not body.startswith(b"\xff\xd8"):
        raise InvalidCutout("not_jpeg", f"body of {len(body)} bytes is not a JPEG (starts {body[:40]!r})")
    # A truncated download lacks the end-of-image marker; checked explicitly because PIL can be configured
    # process-wide (ImageFile.LOAD_TRUNCATED_IMAGES) to decode truncated files silently.
    if not body.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise InvalidCutout("corrupt_jpeg", f"JPEG of {len(body)} bytes has no end-of-image marker (truncated)")
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            if image.format != "JPEG":
                raise InvalidCutout("not_jpeg", f"body decodes as {image.format}, not JPEG")
            if image.size != (size_px, size_px):
                raise InvalidCutout("wrong_size", f"JPEG is {image.size[0]}x{image.size[1]} px, asked for "
                                                  f"{size_px}x{size_px}")
            extrema = image.getextrema()
    except InvalidCutout:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InvalidCutout("corrupt_jpeg", f"JPEG of {len(body)} bytes does not decode ({err})") from None
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if all(low == high for low, high in bands):
        raise InvalidCutout("blank", f"every pixel has the value {bands[0][0]} (a blank image)")


def per_task_rate(max_requests_per_s: float, tasks: int) -> float:
    """Each task's share of the job's politeness limit (tasks run at once, so the shares add up to the limit).

    Raises
    ------
    ValueError
        A non-positive limit or task count.
    """
    if not max_requests_per_s > 0 or tasks < 1:
        raise ValueError(f"need max_requests_per_s > 0 and tasks >= 1, got {max_requests_per_s}, {tasks}")
    return max_requests_per_s / tasks


def failure_kind(reason: str) -> str:
    """The category of a failure reason (``"http_503: SkyServer failed ..."`` → ``"http_503"``)."""
    return reason.split(":", 1)[0]


def sample_key_column():
    """Spark Column: the key that orders objects for ``max_objects`` samples (smallest first).

    Equal to ``int(sha256(f"cutouts-sample:{objid}").hexdigest()[:13], 16)``.
    """
    from pyspark.sql import functions as F

    digest = F.sha2(F.concat(F.lit(SAMPLE_HASH_PREFIX), F.col("objid").cast("string")), 256)
    return F.conv(F.substring(digest, 1, SAMPLE_HASH_HEX_DIGITS), 16, 10).cast("long")


def objects_to_fetch(catalog, present, max_objects: Optional[int] = None):
    """Catalog objects that need a cutout: the sample minus those already present (a DataFrame transform).

    Parameters
    ----------
    catalog : pyspark.sql.DataFrame
        With ``objid, ra, dec``.
    present : pyspark.sql.DataFrame or None
        ``objid`` of stored cutouts (None: none yet).
    max_objects : int, optional
        Restrict to the ``max_objects`` catalog objects with the smallest :func:`sample_key_column`, so re-runs
        complete the same sample instead of growing it.

    Returns
    -------
    (sample, todo) : pair of pyspark.sql.DataFrame
        ``objid, ra, dec`` of the sample and of the objects to download.
    """
    sample = catalog.select("objid", "ra", "dec").dropDuplicates(["objid"])
    if max_objects is not None:
        sample = (sample.withColumn("_key", sample_key_column()).orderBy("_key", "objid").limit(int(max_objects))
                  .drop("_key"))
    todo = sample if present is None else sample.join(present.select("objid"), on="objid", how="left_anti")
    return sample, todo


# --- one object ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CutoutSettings:
    """What a download task needs (plain values: it travels to the executors)."""

    url: str
    scale_arcsec_per_px: float
    size_px: int
    concurrency: int
    max_requests_per_s: float  # this task's share
    timeout_s: float
    retries: int
    backoff_s: float
    max_backoff_s: float
    user_agent: str
    rows_per_file: int = 5_000
    rows_per_row_group: int = 1_000
    cutouts_dir: str = ""
    run_id: str = ""
    progress_address: Optional[tuple] = None

    @classmethod
    def from_config(cls, conf: Config, **extra) -> "CutoutSettings":
        c = conf.cutouts
        return cls(url=conf.skyserver.url, scale_arcsec_per_px=c.scale_arcsec_per_px, size_px=c.size_px,
                   concurrency=c.concurrency_per_task, max_requests_per_s=per_task_rate(c.max_requests_per_s, c.tasks),
                   timeout_s=c.timeout_s, retries=c.retries, backoff_s=c.backoff_s, max_backoff_s=c.max_backoff_s,
                   user_agent=conf.skyserver.user_agent, rows_per_file=c.rows_per_file,
                   rows_per_row_group=c.rows_per_row_group, **extra)

    def client(self) -> SkyServerClient:
        """The task's client: one rate limiter at this task's share for all its threads, and a
        ``requests.Session`` of each thread's own (see :class:`~skyclass.skyserver.SkyServerClient`)."""
        return SkyServerClient(self.url, timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.backoff_s,
                               max_backoff_s=self.max_backoff_s, max_requests_per_s=self.max_requests_per_s,
                               user_agent=self.user_agent)


@dataclass
class CutoutOutcome:
    objid: int
    ra: float
    dec: float
    jpeg: Optional[bytes]  # None when failed
    reason: Optional[str]  # "<kind>: <detail>" when failed
    attempts: int  # getjpeg requests sent for the object (the client's one retry loop counts them)
    at: datetime
    source: Optional[str] = None  # lake.CUTOUTS.source of a stored cutout (see cutout_source)

    @property
    def stored(self) -> bool:
        return self.jpeg is not None


def fetch_cutout(client: SkyServerClient, settings: CutoutSettings, objid: int, ra_deg: float, dec_deg: float,
                 ) -> CutoutOutcome:
    """Download and validate one cutout; never raises for a failed object, it returns a failure outcome.

    A body that fails :func:`validate_jpeg` is a passing failure like a 5xx: the client's one retry loop fetches it
    again, within the same budget of ``settings.retries`` further attempts as connection errors, 5xx and 429.

    Parameters
    ----------
    client : SkyServerClient
    settings : CutoutSettings
    objid : int
    ra_deg, dec_deg : float

    Returns
    -------
    CutoutOutcome
        ``attempts`` counts the getjpeg requests sent for the object.
    """
    what = f"cutout of objID {objid} (ra={ra_deg}, dec={dec_deg})"
    try:
        path, params = cutout_request(ra_deg, dec_deg, scale_arcsec_per_px=settings.scale_arcsec_per_px,
                                      size_px=settings.size_px)
    except ValueError as err:
        return _failure(objid, ra_deg, dec_deg, f"bad_position: {err}", 0)

    def valid_jpeg(response) -> tuple[bytes, str]:
        body = response.content
        try:
            validate_jpeg(body, settings.size_px)
        except InvalidCutout as err:
            raise TransientAnswer(err.kind, str(err)) from None
        return body, cutout_source(response.headers)

    try:
        (body, source), attempts = client.fetch(path, params, what=what, check=valid_jpeg)
    except SkyServerHTTPError as err:
        return _failure(objid, ra_deg, dec_deg, f"http_{err.status}: {err}", err.attempts)
    except SkyServerUnavailable as err:
        return _failure(objid, ra_deg, dec_deg, f"unavailable: {err}", err.attempts)
    except SkyServerResponseError as err:
        return _failure(objid, ra_deg, dec_deg, f"{err.kind}: {err}", err.attempts)
    except SkyServerError as err:
        return _failure(objid, ra_deg, dec_deg, f"rejected: {err}", err.attempts)
    return CutoutOutcome(objid, ra_deg, dec_deg, body, None, attempts, _now(), source=source)


def cutout_source(headers) -> str:
    """``lake.CUTOUTS.source`` of a getjpeg answer: ``standin-simulated`` when the answer says our stand-in rendered
    it (header ``X-Skyclass-Standin: rendered``), else ``skyserver``.

    Parameters
    ----------
    headers : mapping
        The response headers (``requests`` gives a case-insensitive mapping).
    """
    return lake.SOURCE_STANDIN if headers.get(STANDIN_HEADER) == STANDIN_RENDERED else lake.SOURCE_SKYSERVER


def _failure(objid, ra, dec, reason, attempts) -> CutoutOutcome:
    return CutoutOutcome(objid, ra, dec, None, reason, attempts, _now())


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# --- one Spark task ----------------------------------------------------------------------------------------------

def cutouts_arrow_schema():
    """lake.CUTOUTS as written by the tasks: ``fetched_at`` marked UTC, as Spark writes its timestamps, so Spark
    reads the files as TIMESTAMP (a naive Parquet timestamp would come back as TIMESTAMP_NTZ)."""
    import pyarrow as pa

    schema = lake.CUTOUTS.arrow_schema()
    index = schema.get_field_index("fetched_at")
    return schema.set(index, schema.field(index).with_type(pa.timestamp("us", tz="UTC")))


def chunk_file_name(run_id: str, partition: int, chunk: int) -> str:
    return f"part-{run_id}-t{partition:05d}-c{chunk:05d}.parquet"


class _ProgressSender:
    """A task's running counts, sent to the driver's listener as UDP datagrams (best effort, never blocks)."""

    def __init__(self, address, run_id: str, partition: int, attempt: int):
        self.address = tuple(address) if address else None
        self.header = {"run": run_id, "task": partition, "attempt": attempt}
        self.done = self.stored = self.failed = 0
        self._last_sent = 0.0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if self.address else None

    def add(self, outcome: CutoutOutcome) -> None:
        with self._lock:
            self.done += 1
            self.stored += outcome.stored
            self.failed += not outcome.stored
            due = time.monotonic() - self._last_sent >= _PROGRESS_SEND_INTERVAL_S
        if due:
            self.send()

    def add_stored(self, n: int) -> None:
        with self._lock:
            self.done += n
            self.stored += n

    def send(self) -> None:
        if self._sock is None:
            return
        with self._lock:
            self._last_sent = time.monotonic()
            message = dict(self.header, done=self.done, stored=self.stored, failed=self.failed)
        try:
            self._sock.sendto(json.dumps(message).encode(), self.address)
        except OSError:
            pass  # live progress is a convenience; the download must not care

    def close(self) -> None:
        self.send()
        if self._sock is not None:
            self._sock.close()


def _ensure_task_logging() -> None:
    # Python workers start with no logging configuration; give the task logger a stderr handler so per-task
    # lines reach the executor's log (the driver console in local mode).
    if not task_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        task_log.addHandler(handler)
        task_log.setLevel(logging.INFO)
        task_log.propagate = False


def _chunks(batches, rows: int):
    """Re-cut an iterator of pandas frames into frames of ``rows`` rows (the last may be shorter)."""
    import pandas as pd

    pending = []
    pending_rows = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += len(batch)
        while pending_rows >= rows:
            frame = pd.concat(pending, ignore_index=True)
            yield frame.iloc[:rows].reset_index(drop=True)
            rest = frame.iloc[rows:]
            pending, pending_rows = ([rest] if len(rest) else []), len(rest)
    if pending_rows:
        yield pd.concat(pending, ignore_index=True)


def download_partition(settings: CutoutSettings):
    """The function Spark runs per task (``mapInPandas``): download a partition chunk by chunk.

    Each chunk is committed as one Parquet file (see the module docstring) and yields its objects' outcomes as
    rows of :data:`OUTCOME_SCHEMA`. A chunk whose file already exists (written by an earlier attempt of the same
    task) is not fetched again.
    """

    def run(batches: Iterator) -> Iterator:
        from pyspark import TaskContext

        _ensure_task_logging()
        context = TaskContext.get()
        partition = context.partitionId() if context else 0
        attempt = context.attemptNumber() if context else 0
        directory = settings.cutouts_dir
        progress = _ProgressSender(settings.progress_address, settings.run_id, partition, attempt)
        started = time.monotonic()
        # One client for the task: its rate limiter holds the task's share for all the threads together, and each
        # thread gets its own requests.Session from it; closing it after the pool has shut down closes them all.
        client = settings.client()
        try:
            with ThreadPoolExecutor(settings.concurrency, thread_name_prefix=f"cutouts-t{partition}") as pool:
                for chunk_index, chunk in enumerate(_chunks(batches, settings.rows_per_file)):
                    name = chunk_file_name(settings.run_id, partition, chunk_index)
                    final_path = storage.join(directory, name)
                    if storage.exists(final_path):
                        outcomes = _outcomes_of_committed_chunk(final_path, chunk)
                        progress.add_stored(sum(o.stored for o in outcomes))
                        task_log.info("cutouts task %d: chunk %d was committed by an earlier attempt; not fetched "
                                      "again", partition, chunk_index)
                    else:
                        outcomes = list(pool.map(lambda row: _fetch_and_count(client, settings, progress, row),
                                                 chunk.itertuples(index=False)))
                        _commit_chunk(directory, name, outcomes, settings)
                    progress.send()
                    elapsed = time.monotonic() - started
                    task_log.info("cutouts task %d: chunk %d committed (%d objects: %d stored, %d failed); task "
                                  "total %d done, %d failed, %.1f objects/s", partition, chunk_index, len(outcomes),
                                  sum(o.stored for o in outcomes), sum(not o.stored for o in outcomes),
                                  progress.done, progress.failed, progress.done / max(elapsed, 1e-9))
                    yield _outcome_frame(outcomes)
        finally:
            client.close()
            progress.close()

    return run


def _fetch_and_count(client, settings, progress, row) -> CutoutOutcome:
    try:
        outcome = fetch_cutout(client, settings, int(row.objid), float(row.ra), float(row.dec))
    except Exception as err:  # noqa: BLE001 - a bug must become a visible failure row, not a dead chunk
        task_log.exception("cutouts: unexpected error for objID %s", row.objid)
        outcome = _failure(int(row.objid), float(row.ra), float(row.dec), f"error: {type(err).__name__}: {err}", 1)
    progress.add(outcome)
    return outcome


def _commit_chunk(directory: str, name: str, outcomes, settings: CutoutSettings) -> None:
    """Write a chunk's stored cutouts under a hidden name, then rename: readers see all of it or nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stored = [o for o in outcomes if o.stored]
    if not stored:
        return  # nothing to commit; the failures travel in the task's output
    table = pa.table({
        "objid": pa.array([o.objid for o in stored], pa.int64()),
        "ra": pa.array([o.ra for o in stored], pa.float64()),
        "dec": pa.array([o.dec for o in stored], pa.float64()),
        "scale_arcsec_per_px": pa.array([settings.scale_arcsec_per_px] * len(stored), pa.float64()),
        "size_px": pa.array([settings.size_px] * len(stored), pa.int32()),
        "jpeg": pa.array([o.jpeg for o in stored], pa.binary()),
        "fetched_at": pa.array([o.at for o in stored], pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
        "source": pa.array([o.source or lake.SOURCE_UNKNOWN for o in stored], pa.string()),
    }, schema=cutouts_arrow_schema())
    # A hidden temp file (.tmp-…) moved into place: a killed task leaves no half file a reader could see.
    with storage.atomic_output(storage.join(directory, name)) as stream:
        # Row groups of rows_per_row_group rows: Petastorm hands whole row groups to its workers.
        pq.write_table(table, stream, row_group_size=settings.rows_per_row_group)


def _outcomes_of_committed_chunk(path: str, chunk) -> list:
    """Outcomes of a chunk an earlier attempt committed: its objects are stored; the rest of the chunk failed in
    that attempt and are left for the next run (fetching them now would need a second file for the chunk)."""
    import pyarrow.parquet as pq

    with storage.open_input(path) as handle:
        table = pq.read_table(handle, columns=["objid", "jpeg"])
    stored = dict(zip(table.column("objid").to_pylist(), table.column("jpeg").to_pylist()))
    now = _now()
    outcomes = []
    for row in chunk.itertuples(index=False):
        objid = int(row.objid)
        if objid in stored:
            outcomes.append(CutoutOutcome(objid, float(row.ra), float(row.dec), stored[objid], None, 1, now))
        else:
            outcomes.append(_failure(objid, float(row.ra), float(row.dec),
                                     "earlier_attempt: failed in an earlier attempt of this Spark task", 1))
    return outcomes


def _outcome_frame(outcomes):
    import pandas as pd

    return pd.DataFrame({
        "objid": pd.array([o.objid for o in outcomes], dtype="int64"),
        "ra": [o.ra for o in outcomes],
        "dec": [o.dec for o in outcomes],
        "status": [STORED if o.stored else FAILED for o in outcomes],
        "reason": [o.reason for o in outcomes],
        "attempts": pd.array([o.attempts for o in outcomes], dtype="int32"),
        "jpeg_bytes": pd.array([len(o.jpeg) if o.stored else 0 for o in outcomes], dtype="int64"),
        "at": pd.to_datetime([o.at for o in outcomes]),
    })
# --- the driver --------------------------------------------------------------------------------------------------

@dataclass
class CutoutsResult:
    catalog: str
    path: str
    requested: int  # objects this run set out to fetch (catalog or sample minus those present)
    stored: int
    failed: dict  # failure kind -> objects
    skipped_present: int  # sample objects that already had a cutout
    elapsed_s: float
    rate_per_s: float  # objects done (stored or failed) per second of downloading
    lake_objects: int  # cutouts in the lake after the run
    lake_bytes_per_object: Optional[float]
    failures_path: str = ""
    run_id: str = ""
    failure_examples: list = field(default_factory=list)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def __str__(self) -> str:
        lines = [f"cutouts for {self.catalog}: {self.stored:,} stored, {self.failed_total:,} failed, "
                 f"{self.skipped_present:,} already present (requested {self.requested:,})",
                 f"  {self.elapsed_s:.1f} s, {self.rate_per_s:.1f} objects/s; lake: {self.lake_objects:,} cutouts"
                 + (f", {self.lake_bytes_per_object:,.0f} bytes/object" if self.lake_bytes_per_object else "")
                 + f" in {self.path}"]
        if self.failed:
            lines.append("  failed by reason: " + ", ".join(f"{k} {n:,}" for k, n in sorted(self.failed.items())))
            lines.append(f"  failures are listed in {self.failures_path} and retried by the next run")
        return "\n".join(lines)


class _ProgressMonitor:
    """Driver side of the live progress: a UDP listener summing the tasks' latest counts, logging every
    ``interval_s`` seconds."""

    def __init__(self, host: str, run_id: str, total: int, interval_s: float, label: str):
        self.run_id, self.total, self.interval_s, self.label = run_id, total, interval_s, label
        self._latest: dict[int, dict] = {}
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._sock = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.settimeout(0.2)
            self._sock = sock
        except OSError as err:
            log.warning("no live cutout progress (cannot listen on %s: %s); per-task lines are in the executor "
                        "logs", host, err)
        self._thread = threading.Thread(target=self._run, name="cutouts-progress", daemon=True)

    @property
    def address(self) -> Optional[tuple]:
        return self._sock.getsockname() if self._sock is not None else None

    def start(self) -> "_ProgressMonitor":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def counts(self) -> tuple[int, int, int]:
        """(done, stored, failed) summed over the tasks' latest reports."""
        latest = list(self._latest.values())
        return (sum(m["done"] for m in latest), sum(m["stored"] for m in latest), sum(m["failed"] for m in latest))

    def _run(self) -> None:
        next_log = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            if self._sock is not None:
                try:
                    self._receive(self._sock.recv(65536))
                except (socket.timeout, OSError):
                    pass
            else:
                self._stop.wait(0.2)
            if time.monotonic() >= next_log:
                next_log += self.interval_s
                self.log_line()

    def _receive(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if message.get("run") != self.run_id:
            return
        task = int(message["task"])
        previous = self._latest.get(task)
        # A retried task starts its counts again: its newest attempt is the truth.
        if previous is None or message["attempt"] > previous["attempt"] or (
                message["attempt"] == previous["attempt"] and message["done"] >= previous["done"]):
            self._latest[task] = message

    def log_line(self) -> None:
        done, stored, failed = self.counts()
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_duration((self.total - done) / rate)}" if rate > 0 and done < self.total else ""
        log.info("%s: %s/%s done (%.1f%%), %.1f/s, %s stored, %s failed%s", self.label, f"{done:,}",
                 f"{self.total:,}", 100.0 * done / max(self.total, 1), rate, f"{stored:,}", f"{failed:,}", eta)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


def download_cutouts(spark, conf: Config, *, progress_interval_s: float = 10.0) -> CutoutsResult:
    """Download the cutouts the lake lacks for ``conf.cutouts.catalog`` into ``lake/cutouts``.

    A killed run can simply be run again: it fetches only what is still missing and duplicates nothing (see the
    module docstring for the commit unit). Failed objects are written to ``lake/cutout_failures`` with their
    reason and retried by the next run.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        Uses ``cutouts`` (catalog, size, scale, tasks, concurrency, politeness limit, retries, sample size, file
        and row-group sizes), ``skyserver.url`` and ``skyserver.user_agent``, and ``lake``.
    progress_interval_s : float
        Seconds between progress log lines.

    Returns
    -------
    CutoutsResult
        Counts (requested, stored, failed by reason, already present), elapsed time, rate, lake bytes per object.

    Raises
    ------
    CutoutsError
        The catalog table does not exist.
    LockHeldError
        Another download of this lake is running (the message names it and says how to clear a dead run's lock).
    """
    started = time.monotonic()
    c = conf.cutouts
    catalog_path = conf.lake.table(c.catalog)
    if not storage.table_exists(catalog_path):
        step = "skyclass extract --photometric" if c.catalog == "photometric" else "skyclass extract"
        raise CutoutsError(f"no {c.catalog} table at {catalog_path}; run `{step}` first")
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    root = conf.lake.path("root")
    lock = storage.Lock(lake.lock_path(root, "cutouts"), run_id=run_id, ttl_s=c.lock_ttl_s, purpose="cutouts download",
                        ttl_setting="cutouts.lock_ttl_s", heartbeat_s=c.lock_ttl_s / 4).acquire()
    try:
        return _download(spark, conf, run_id, catalog_path, started, progress_interval_s)
    finally:
        lock.release()


def _download(spark, conf: Config, run_id: str, catalog_path: str, started: float,
              progress_interval_s: float) -> CutoutsResult:
    """The body of :func:`download_cutouts`, run while holding the lake's cutouts lock."""
    from pyspark.sql import functions as F

    c = conf.cutouts
    cutouts_path = conf.lake.table("cutouts")
    failures_path = conf.lake.table("cutout_failures")
    work_root = storage.join(conf.lake.path("root"), "_work")
    work_path = storage.join(work_root, f"cutouts-{run_id}")
    # Under the lock no other download is running: whatever temp files and work folders exist are a killed run's.
    storage.remove_hidden_leftovers(cutouts_path)
    storage.remove_hidden_leftovers(work_root, prefix="cutouts-")
    uri = storage.spark_uri

    try:
        present = spark.read.parquet(uri(cutouts_path)).select("objid") if storage.table_exists(cutouts_path) else None
        sample, todo = objects_to_fetch(spark.read.parquet(uri(catalog_path)), present, c.max_objects)
        # Snapshot: every (re-)execution of a download task must see the same objects, whatever lands in the lake
        # meanwhile.
        todo.write.parquet(uri(f"{work_path}/todo"))
        todo = spark.read.parquet(uri(f"{work_path}/todo"))
        requested = todo.count()
        skipped = sample.count() - requested
        log.info("cutouts for %s: %s to fetch, %s already in the lake%s", c.catalog, f"{requested:,}", f"{skipped:,}",
                 f" (sample of {c.max_objects:,})" if c.max_objects else "")

        stored = 0
        failed: dict[str, int] = {}
        examples: list[str] = []
        download_s = 0.0
        if requested:
            storage.make_dirs(cutouts_path)
            host = spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1")
            label = f"cutouts {c.catalog}"
            monitor = _ProgressMonitor(host, run_id, requested, progress_interval_s, label)
            settings = CutoutSettings.from_config(conf, cutouts_dir=cutouts_path, run_id=run_id,
                                                  progress_address=monitor.address)
            log.info("%s: %d tasks x %d threads, at most %g requests/s in all (%g per task), %d objects per commit",
                     label, c.tasks, c.concurrency_per_task, c.max_requests_per_s, settings.max_requests_per_s,
                     c.rows_per_file)
            download_started = time.monotonic()
            monitor.start()
            try:
                spark.sparkContext.setJobDescription(f"skyclass: download {requested:,} cutouts ({c.catalog})")
                (todo.repartition(c.tasks, "objid").sortWithinPartitions("objid")
                 .mapInPandas(download_partition(settings), OUTCOME_SCHEMA)
                 .write.parquet(uri(f"{work_path}/outcomes")))
            finally:
                spark.sparkContext.setJobDescription(None)
                monitor.stop()
            download_s = time.monotonic() - download_started
            outcomes = spark.read.parquet(uri(f"{work_path}/outcomes"))
            kind = F.when(F.col("status") == FAILED, F.substring_index("reason", ":", 1))
            for row in outcomes.groupBy("status", kind.alias("kind")).count().collect():
                if row["status"] == STORED:
                    stored += row["count"]
                else:
                    failed[row["kind"]] = failed.get(row["kind"], 0) + row["count"]
            if failed:
                examples = [r["reason"] for r in outcomes.where(F.col("status") == FAILED)
                            .select("reason").limit(3).collect()]
                for reason in examples:
                    log.warning("cutout failure, e.g.: %s", reason)
            _rewrite_failures(spark, failures_path, outcomes, cutouts_path)
        elif storage.table_exists(failures_path):
            # Nothing to fetch; still drop failures that a killed run stored after all.
            _rewrite_failures(spark, failures_path, None, cutouts_path)
    finally:
        # The snapshot and outcomes are only needed by this run (a killed run's are removed by the next run).
        storage.delete(work_path)

    lake_objects, lake_bytes = lake.table_size(spark, cutouts_path)
    elapsed = time.monotonic() - started
    result = CutoutsResult(
        catalog=c.catalog, path=cutouts_path, requested=requested, stored=stored, failed=failed,
        skipped_present=skipped, elapsed_s=elapsed,
        rate_per_s=(stored + sum(failed.values())) / download_s if download_s > 0 else 0.0,
        lake_objects=lake_objects, lake_bytes_per_object=lake_bytes / lake_objects if lake_objects else None,
        failures_path=failures_path, run_id=run_id, failure_examples=examples)
    log.info("%s", result)
    return result


def _rewrite_failures(spark, failures_path: str, outcomes, cutouts_path: str) -> None:
    """Replace the failures table by: this run's failures (attempts added to earlier runs'), plus earlier failures
    of objects this run did not try (outside a sample) that are still without a cutout. ``outcomes`` None: this
    run tried nothing."""
    from pyspark.sql import functions as F

    schema = lake.CUTOUT_FAILURES.spark_schema()
    if outcomes is None:
        outcomes = spark.createDataFrame([], OUTCOME_SCHEMA)
    new = (outcomes.where(F.col("status") == FAILED)
           .select("objid", "ra", "dec", "reason", "attempts", F.col("at").alias("failed_at")))
    if storage.table_exists(failures_path):
        old = spark.read.parquet(storage.spark_uri(failures_path))
        earlier_attempts = old.select("objid", F.col("attempts").alias("earlier"))
        new = (new.join(earlier_attempts, "objid", "left")
               .withColumn("attempts", F.col("attempts") + F.coalesce(F.col("earlier"), F.lit(0))).drop("earlier"))
        untried = old.join(outcomes.select("objid"), "objid", "left_anti")
        if storage.table_exists(cutouts_path):
            untried = untried.join(spark.read.parquet(storage.spark_uri(cutouts_path)).select("objid"), "objid",
                                   "left_anti")
        new = new.unionByName(untried.select(*new.columns))
    table = new.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])
    storage.replace_directory(failures_path, lambda staging: table.coalesce(1).write.parquet(staging))
