"""The one storage layer: every file operation outside Spark's DataFrame reader and writer goes through here.

Everything is built on ``pyarrow.fs``, which exists both in the driver and in the executors' Python workers (an
executor has no py4j gateway and no JVM handle), so a call behaves the same wherever it runs. Every function takes
any of these path forms and returns paths in the form it was given:

``/abs/path`` (or a relative path: made absolute against the current directory — the config makes lake paths
absolute on the driver when it is loaded, because an executor's working directory is another one)
    the local file system (or a mount every machine sees);
``file:///abs/path`` (and Hadoop's ``file:/abs/path``)
    the same, as a URI;
``hdfs://namenode:port/path`` (``hdfs:///path``: the default name node)
    ``pyarrow.fs.HadoopFileSystem`` (needs libhdfs and the Hadoop CLASSPATH, as Spark's executors have);
``s3a://bucket/key``, ``s3n://bucket/key``, ``s3://bucket/key``
    ``pyarrow.fs.S3FileSystem`` (what Spark's Hadoop connector calls ``s3a`` is ``s3`` for pyarrow; credentials
    from the usual AWS environment, ``AWS_REGION``/``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL`` for an
    endpoint of one's own);
``gs://bucket/key``
    ``pyarrow.fs.GcsFileSystem`` (default Google credentials).

:func:`spark_uri` gives the location to hand to Spark for a path, so Spark on the driver and pyarrow in an executor
name the same place (a plain path given to Spark means ``fs.defaultFS``, which is HDFS on most clusters).

Guarantees
    :func:`write_bytes`/:func:`write_text`/:func:`atomic_output` write a hidden temp file (``.tmp-…``, a name Spark,
    pyarrow and Petastorm skip) beside the target and move it into place: atomic on local disks and HDFS (an HDFS
    overwrite deletes the old file just before the rename); on object stores a move is a copy, and a reader can
    see nothing only if the writer dies mid-way. :func:`replace_directory` swaps a whole table in with an intent
    marker, so a crash between its two renames is completed or rolled back by the next reader or writer
    (:func:`recover_swap`). :class:`Lock` is an exclusive lock file with the holder's identity and a heartbeat.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator, Optional

from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
SWAP_SUFFIX = ".swap"
SUCCESS_MARKER = "_SUCCESS"
# Schemes Spark's Hadoop connectors use for S3; pyarrow knows the bucket as s3://.
_S3_SCHEMES = ("s3", "s3a", "s3n")


class StorageError(SkyclassError):
    """A storage path cannot be used (unknown scheme, bad URI), or a table swap cannot be completed."""


class LockHeldError(StorageError):
    """Another run holds a lock; the message names the holder and how to clear the lock."""


# --- paths -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Location:
    scheme: str  # "file", "hdfs", "s3", "gs" or another pyarrow scheme
    authority: str  # name node host:port, bucket, or "" (local, default name node)
    fs_path: str  # the path as the pyarrow file system wants it


def _parse(path: str) -> _Location:
    path = os.fspath(path)
    if not path:
        raise StorageError("an empty path was given where a file or folder was expected")
    if "://" not in path:
        if path.startswith("file:"):  # Hadoop's form file:/abs/path
            return _Location("file", "", "/" + path[len("file:"):].lstrip("/"))
        return _Location("file", "", os.path.abspath(path))
    scheme, rest = path.split("://", 1)
    scheme = scheme.lower()
    authority, slash, key = rest.partition("/")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise StorageError(f"{path}: a file:// URI names a local path (file:///abs/path), not host "
                               f"{authority!r}")
        return _Location("file", "", "/" + key)
    if scheme in _S3_SCHEMES or scheme == "gs":
        if not authority:
            raise StorageError(f"{path}: an object-store URI needs a bucket ({scheme}://bucket/key)")
        return _Location("s3" if scheme in _S3_SCHEMES else "gs", authority, f"{authority}/{key}".rstrip("/"))
    if scheme == "hdfs":
        return _Location(scheme, authority, "/" + key)
    return _Location(scheme, authority, path)


_FILESYSTEMS: dict = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _new_filesystem(location: _Location):
    from pyarrow import fs as pafs

    if location.scheme == "file":
        return pafs.LocalFileSystem()
    if location.scheme == "hdfs":
        host, _, port = location.authority.partition(":")
        return pafs.HadoopFileSystem(host or "default", int(port) if port else 0)
    if location.scheme == "s3":
        options = {}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        if os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint_override"] = os.environ["AWS_ENDPOINT_URL"]
        return pafs.S3FileSystem(**options)
    if location.scheme == "gs":
        return pafs.GcsFileSystem()
    return pafs.FileSystem.from_uri(location.fs_path)[0]


def filesystem(path: str):
    """The pyarrow file system of ``path`` and the path as that file system wants it.

    File systems are created once per process and per scheme and authority (connecting to HDFS is slow), and are
    safe to use from several threads.

    Parameters
    ----------
    path : str
        Any form listed in the module docstring.

    Returns
    -------
    (pyarrow.fs.FileSystem, str)

    Raises
    ------
    StorageError
        A URI pyarrow cannot open (unknown scheme, no bucket, a file:// URI naming a host).
    """
    location = _parse(path)
    key = (location.scheme, location.authority)
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            try:
                fs = _new_filesystem(location)
            except (OSError, ValueError, ImportError) as err:
                raise StorageError(f"cannot open the file system of {path} ({err}); supported are local paths, "
                                   "file://, hdfs://, s3a:// (s3://, s3n://) and gs:// URIs") from None
            if location.scheme not in ("file", "hdfs", "s3", "gs"):
                return fs, location.fs_path  # from_uri file systems may be bound to the URI: not cached
            _FILESYSTEMS[key] = fs
    return fs, location.fs_path


def is_local(path: str) -> bool:
    """True when ``path`` is on the local file system (a plain path or ``file:`` URI)."""
    return _parse(path).scheme == "file"


def spark_uri(path: str) -> str:
    """The location to give Spark for ``path``, naming the same place as this module's functions do.

    A plain path becomes ``file:///abs/path`` (Spark would otherwise read it on ``fs.defaultFS``, i.e. HDFS on
    most clusters, while pyarrow reads the local disk); Hadoop's ``file:/abs`` becomes ``file:///abs``; other URIs
    (``hdfs://``, ``s3a://``, ``gs://``) are Spark's own and pass unchanged.
    """
    location = _parse(path)
    if location.scheme == "file":
        return "file://" + location.fs_path
    return os.fspath(path)


def join(path: str, *names: str) -> str:
    """``path/name/...`` in the form ``path`` was given (works for URIs, unlike ``os.path.join`` on Windows)."""
    out = os.fspath(path).rstrip("/") or "/"
    for name in names:
        out = f"{out.rstrip('/')}/{name.strip('/')}"
    return out


def split(path: str) -> tuple[str, str]:
    """(parent, base name) of ``path``, the parent in the form ``path`` was given."""
    parent, _, name = os.fspath(path).rstrip("/").rpartition("/")
    if not name:
        raise StorageError(f"{path} has no parent folder")
    return parent or "/", name


def hidden_temp_path(path: str) -> str:
    """A unique hidden sibling of ``path`` (``.tmp-<hex>-<name>``): Spark, pyarrow and Petastorm skip names that
    start with ``.`` or ``_``, so a temp file left by a crash is never read as data."""
    parent, name = split(path)
    return join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")


# --- queries -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One entry of a folder listing."""

    name: str
    path: str  # in the form the listed folder was given
    is_dir: bool
    size: Optional[int]  # bytes of a file; None for a folder
    mtime_s: Optional[float]  # modification time (seconds since the epoch) when the file system knows it


def _info(path: str):
    fs, p = filesystem(path)
    return fs.get_file_info(p)


def exists(path: str) -> bool:
    """True when a file or folder is at ``path``."""
    from pyarrow import fs as pafs

    return _info(path).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    """True when ``path`` is a folder (on an object store: a prefix with objects below it)."""
    from pyarrow import fs as pafs

    return _info(path).type == pafs.FileType.Directory


def is_file(path: str) -> bool:
    """True when ``path`` is a file."""
    from pyarrow import fs as pafs

    return _info(path).type == pafs.FileType.File


def list_entries(path: str) -> list[Entry]:
    """The entries directly in folder ``path``, sorted by name; empty when there is no such folder."""
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    entries = []
    for info in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)):
        directory = info.type == pafs.FileType.Directory
        mtime = info.mtime.timestamp() if info.mtime is not None else None
        entries.append(Entry(info.base_name, join(path, info.base_name), directory,
                             None if directory else info.size, mtime))
    return sorted(entries, key=lambda e: e.name)


def list_names(path: str) -> list[str]:
    """Names of the entries directly in folder ``path``, sorted; empty when there is no such folder."""
    return [e.name for e in list_entries(path)]


def file_size(path: str) -> int:
    """Bytes of file ``path``.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    """
    from pyarrow import fs as pafs

    info = _info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {path}")
    return int(info.size)


def visible_files_size(path: str, suffix: str = ".parquet") -> int:
    """Bytes of the visible files (name not starting with ``.`` or ``_``) ending with ``suffix`` directly in
    folder ``path``: the data files of a table; 0 when there is no such folder."""
    return sum(e.size or 0 for e in list_entries(path)
               if not e.is_dir and e.name.endswith(suffix) and not e.name.startswith((".", "_")))


# --- reading and writing -------------------------------------------------------------------------------------------

def make_dirs(path: str) -> None:
    """Create folder ``path`` and its parents (nothing happens when it exists)."""
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)


def delete(path: str) -> bool:
    """Delete the file or folder (recursively) at ``path``; a missing path is fine.

    Returns
    -------
    bool
        Whether anything was deleted.
    """
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    kind = fs.get_file_info(p).type
    try:
        if kind == pafs.FileType.Directory:
            fs.delete_dir(p)
        elif kind == pafs.FileType.File:
            fs.delete_file(p)
        else:
            return False
    except FileNotFoundError:  # deleted meanwhile by someone else: the outcome wanted
        return False
    return True


def move(source: str, target: str) -> None:
    """Move (rename) a file or folder; both paths must be on the same file system.

    A file replaces an existing file at ``target``; a folder needs ``target`` to be absent (or an empty folder).

    Raises
    ------
    StorageError
        The paths are on different file systems.
    OSError
        The move failed (e.g. ``source`` is missing).
    """
    a, b = _parse(source), _parse(target)
    if (a.scheme, a.authority) != (b.scheme, b.authority):
        raise StorageError(f"cannot move {source} to {target}: they are on different file systems")
    fs, p = filesystem(source)
    fs.move(p, b.fs_path)


def open_input(path: str):
    """A readable, seekable binary file (``pyarrow.NativeFile``; also what ``pyarrow.parquet`` reads).

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    """
    fs, p = filesystem(path)
    try:
        return fs.open_input_file(p)
    except OSError:
        if not is_file(path):
            raise FileNotFoundError(f"no file at {path}") from None
        raise


def open_output(path: str):
    """A writable binary stream to ``path`` (created or truncated; parents created). Not atomic: readers can see
    a partial file; use :func:`atomic_output` for files readers may open meanwhile."""
    fs, p = filesystem(path)
    parent, _ = split(p)
    fs.create_dir(parent, recursive=True)
    return fs.open_output_stream(p)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator:
    """Context manager: a binary stream to a hidden temp file that is moved to ``path`` when the block ends.

    Readers see the old file (or none) until the block completes, then the whole new one; if the block raises, the
    temp file is deleted and ``path`` is untouched.
    """
    fs, p = filesystem(path)
    parent, _ = split(p)
    temp = hidden_temp_path(p)
    fs.create_dir(parent, recursive=True)
    stream = fs.open_output_stream(temp)
    try:
        yield stream
        stream.close()
        fs.move(temp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            stream.close()
        with contextlib.suppress(Exception):
            fs.delete_file(temp)
        raise


def read_bytes(path: str) -> bytes:
    """The whole content of file ``path``.

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    """
    with open_input(path) as stream:
        return stream.read()


def read_text(path: str, encoding: str = "utf-8") -> str:
    """The whole content of text file ``path``.

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    """
    return read_bytes(path).decode(encoding)


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temp file and a move (see :func:`atomic_output`)."""
    with atomic_output(path) as stream:
        stream.write(data)


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a hidden temp file and a move (see :func:`atomic_output`)."""
    write_bytes(path, text.encode(encoding))


def remove_hidden_leftovers(path: str, prefix: str = TEMP_PREFIX) -> int:
    """Delete the entries of folder ``path`` whose names start with ``prefix`` (temp files of killed writers;
    readers skip them, they only take space).

    Returns
    -------
    int
        How many were deleted.
    """
    removed = 0
    for entry in list_entries(path):
        if entry.name.startswith(prefix):
            removed += delete(entry.path)
    if removed:
        log.info("removed %d hidden leftovers of killed writers in %s", removed, path)
    return removed


# --- tables --------------------------------------------------------------------------------------------------------

def swap_marker_path(path: str) -> str:
    """The intent marker of a swap of ``path`` (``<parent>/_<name>.swap``), present only while a swap runs or
    after one was interrupted."""
    parent, name = split(path)
    return join(parent, f"_{name}{SWAP_SUFFIX}")


def replace_directory(path: str, write: Callable[[str], None], *,
                      on_step: Optional[Callable[[str], None]] = None) -> None:
    """Write a table to a staging folder, then swap it in for ``path``, so readers never see half a table.

    The staging and previous folders are siblings of ``path`` named ``_<name>.staging-<token>`` and
    ``_<name>.previous-<token>``: Spark's partition discovery and Parquet readers ignore ``_`` names even if a
    crash leaves one behind (which matters when ``path`` is one partition, e.g. a night of predictions). Before the
    two renames (path → previous, staging → path) an intent marker ``_<name>.swap`` naming both is written, so a
    crash between them is completed by the next reader or writer (:func:`recover_swap`): ``path`` never stays
    without a whole table. One writer per path at a time (the stages that write a table never run twice at once).

    Parameters
    ----------
    path : str
        Final location (any form of this module).
    write : callable
        ``write(staging_uri)`` writes the complete new table there; it is given :func:`spark_uri` of the staging
        folder, so Spark and pyarrow writers alike can use it.
    on_step : callable, optional
        ``on_step(step)`` after each step (``"written"``, ``"marked"``, ``"moved_aside"``, ``"moved_in"``): tests
        use it to crash a swap at a given point.

    Raises
    ------
    OSError
        A rename failed; the previous table is put back where possible.
    """
    step = on_step or (lambda _: None)
    recover_swap(path)
    parent, name = split(path)
    token = uuid.uuid4().hex[:8]
    staging_name, previous_name = f"_{name}.staging-{token}", f"_{name}.previous-{token}"
    staging, previous = join(parent, staging_name), join(parent, previous_name)
    try:
        write(spark_uri(staging))
    except BaseException:
        with contextlib.suppress(Exception):
            delete(staging)
        raise
    step("written")
    if not exists(staging):
        raise StorageError(f"writing the new table for {path} left nothing at {staging}; the table at {path} is "
                           "unchanged")
    had_old = exists(path)
    marker = swap_marker_path(path)
    write_text(marker, json.dumps({"path": name, "staging": staging_name, "previous": previous_name,
                                   "had_previous": had_old, "started_at": _utc_now_iso()}))
    step("marked")
    # Keep the old table until the new one is in place: a crash between the renames leaves both, and the marker.
    if had_old:
        move(path, previous)
    step("moved_aside")
    try:
        move(staging, path)
    except OSError:
        if had_old:
            move(previous, path)
        delete(marker)
        raise
    step("moved_in")
    delete(marker)
    if had_old:
        delete(previous)


def recover_swap(path: str) -> Optional[str]:
    """Finish an interrupted :func:`replace_directory` of ``path``, if its intent marker says there was one.

    The staging folder is complete whenever the marker exists (the marker is written after the table), so:
    staging still there → the swap is completed (old table moved aside if still in place, staging moved in);
    staging gone and ``path`` there → only the clean-up was missing; staging and ``path`` both gone → the previous
    table is put back. Then the previous folder and the marker are deleted.

    Parameters
    ----------
    path : str
        The table's location.

    Returns
    -------
    str or None
        ``"completed"``, ``"cleaned"`` or ``"restored"``; None when no swap was interrupted.

    Raises
    ------
    StorageError
        The marker cannot be read, or neither the staging nor the previous table exists although ``path`` is
        missing (something deleted them).
    """
    marker = swap_marker_path(path)
    try:
        raw = read_bytes(marker)
    except FileNotFoundError:
        return None
    try:
        intent = json.loads(raw)
        parent, _ = split(path)
        staging, previous = join(parent, intent["staging"]), join(parent, intent["previous"])
    except (ValueError, KeyError, TypeError) as err:
        raise StorageError(f"the swap marker {marker} cannot be read ({err}); look at {path} and its `_` siblings, "
                           "keep the whole table and delete the marker") from None
    if exists(staging):
        if exists(path):
            if exists(previous):
                # Cannot come from replace_directory; keep the table in place, it is whole.
                delete(staging)
                outcome = "cleaned"
            else:
                move(path, previous)
                move(staging, path)
                outcome = "completed"
        else:
            move(staging, path)
            outcome = "completed"
    elif exists(path):
        outcome = "cleaned"
    elif exists(previous):
        move(previous, path)
        outcome = "restored"
    elif not intent.get("had_previous", True):
        outcome = "cleaned"  # there was no table before and the new one is gone: nothing to restore
    else:
        raise StorageError(f"an interrupted swap of {path} left neither the new table ({staging}) nor the previous "
                           f"one ({previous}); rebuild the table, then delete {marker}")
    delete(previous)
    delete(marker)
    log.warning("recovered an interrupted table swap of %s: %s (%s)", path, outcome,
                {"completed": "the new table is in place", "cleaned": "the table was in place; leftovers removed",
                 "restored": "the previous table is back"}[outcome])
    return outcome


def recover_swaps_in(folder: str) -> list[str]:
    """Recover every interrupted swap of an entry of ``folder`` (e.g. the nights of a partitioned table).

    Returns
    -------
    list of str
        The paths whose swaps were recovered.
    """
    recovered = []
    for entry in list_entries(folder):
        if entry.name.startswith("_") and entry.name.endswith(SWAP_SUFFIX) and not entry.is_dir:
            target = join(folder, entry.name[1:-len(SWAP_SUFFIX)])
            if recover_swap(target):
                recovered.append(target)
    return recovered


def table_exists(path: str) -> bool:
    """True when ``path`` holds a Parquet table (a ``_SUCCESS`` marker or a visible Parquet file); an interrupted
    swap of ``path`` is recovered first."""
    recover_swap(path)
    return any(e.name == SUCCESS_MARKER or (not e.is_dir and e.name.endswith(".parquet")
                                            and not e.name.startswith((".", "_")))
               for e in list_entries(path))


# --- locks ---------------------------------------------------------------------------------------------------------

def _utc_now_iso(clock: Callable[[], float] = time.time) -> str:
    return datetime.fromtimestamp(clock(), timezone.utc).isoformat(timespec="seconds")


def _epoch_s(text) -> Optional[float]:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    except OSError:
        return True
    return True


def stale_reason(holder: Optional[dict], now_s: float, ttl_s: float, *, host: Optional[str] = None,
                 mtime_s: Optional[float] = None) -> Optional[str]:
    """Why a lock's holder is gone, or None while it may still be running.

    Parameters
    ----------
    holder : dict or None
        The lock file's JSON (None when unreadable).
    now_s : float
        The current time (seconds since the epoch; injected by tests).
    ttl_s : float
        A heartbeat older than this means the holder is dead.
    host : str, optional
        This machine's name (default ``socket.gethostname()``): a holder on this host whose process is gone is
        dead at once.
    mtime_s : float, optional
        The lock file's modification time, judged instead when its content cannot be read.

    Returns
    -------
    str or None
    """
    host = host or socket.gethostname()
    if holder is None:
        if mtime_s is not None and now_s - mtime_s > ttl_s:
            return f"its content cannot be read and it was last written {now_s - mtime_s:.0f} s ago"
        return None
    pid = holder.get("pid")
    if holder.get("host") == host and isinstance(pid, int) and not _pid_alive(pid):
        return f"process {pid} on this host ({host}) is no longer running"
    beat = _epoch_s(holder.get("heartbeat_at"))
    if beat is not None and now_s - beat > ttl_s:
        return f"its last heartbeat was {now_s - beat:.0f} s ago (more than {ttl_s:g} s)"
    return None


class Lock:
    """An exclusive lock file holding JSON of its holder: host, pid, run id, start time and heartbeat.

    On local file systems the file is created exclusively (``O_CREAT | O_EXCL``), so of two runs exactly one gets
    it. Elsewhere (HDFS, object stores) the file is written then read back, and the run whose identity is read
    holds it: best effort, two runs starting within the same instant could both believe they hold it. A lock whose
    holder is dead (:func:`stale_reason`) is taken over with a warning.

    Parameters
    ----------
    path : str
        The lock file, e.g. ``<lake>/_locks/cutouts.lock``.
    run_id : str
        Identifies the holder's run in messages.
    ttl_s : float
        A holder whose heartbeat is older than this is dead.
    purpose : str
        What the lock guards, for messages (``"cutouts download"``).
    ttl_setting : str
        The config key of ``ttl_s``, for messages.
    heartbeat_s : float, optional
        Refresh the heartbeat every so many seconds in a background thread while held (None: only by calls of
        :meth:`heartbeat`).
    clock : callable
        Seconds since the epoch (``time.time``; tests inject their own).
    """

    def __init__(self, path: str, *, run_id: str, ttl_s: float, purpose: str = "run", ttl_setting: str = "",
                 heartbeat_s: Optional[float] = None, clock: Callable[[], float] = time.time):
        self.path, self.run_id, self.ttl_s, self.purpose = path, run_id, float(ttl_s), purpose
        self.ttl_setting, self.heartbeat_s, self.clock = ttl_setting, heartbeat_s, clock
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started_at = ""

    # -- identity

    def _identity(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id, "purpose": self.purpose,
                "token": self.token, "started_at": self._started_at, "heartbeat_at": _utc_now_iso(self.clock)}

    def _read(self) -> tuple[Optional[bytes], Optional[dict], Optional[float]]:
        """(raw content, parsed holder or None, mtime) of the lock file; raw None when there is none."""
        try:
            raw = read_bytes(self.path)
        except FileNotFoundError:
            return None, None, None
        try:
            holder = json.loads(raw)
            holder = holder if isinstance(holder, dict) else None
        except ValueError:
            holder = None
        try:
            info = _info(self.path)
            mtime = info.mtime.timestamp() if info.mtime is not None else None
        except OSError:
            mtime = None
        return raw, holder, mtime

    # -- acquiring

    def _create(self, data: bytes) -> bool:
        fs, p = filesystem(self.path)
        parent, _ = split(p)
        fs.create_dir(parent, recursive=True)
        if is_local(self.path):
            try:
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        return self._create_best_effort(data)

    def _create_best_effort(self, data: bytes) -> bool:
        # No exclusive create through pyarrow on HDFS or object stores: write, then see whose identity stuck.
        if exists(self.path):
            return False
        write_bytes(self.path, data)
        _, holder, _ = self._read()
        return bool(holder) and holder.get("token") == self.token

    def _remove_stale(self, judged: bytes) -> None:
        """Delete the lock file judged stale, unless it changed meanwhile (then a live run holds it)."""
        if is_local(self.path):
            # Move it aside first: of two runs recovering at once only one moves the stale file, and a fresh lock
            # created meanwhile by a third run is put back instead of deleted.
            fs, p = filesystem(self.path)
            aside = hidden_temp_path(p)
            try:
                os.rename(p, aside)
            except FileNotFoundError:
                return
            try:
                with open(aside, "rb") as fh:
                    if fh.read() != judged:
                        with contextlib.suppress(FileExistsError):
                            os.link(aside, p)
            finally:
                os.unlink(aside)
            return
        raw, _, _ = self._read()
        if raw == judged:
            delete(self.path)

    def acquire(self) -> "Lock":
        """Take the lock, taking over a stale one with a warning.

        Returns
        -------
        Lock
            self, held.

        Raises
        ------
        LockHeldError
            A live run holds the lock; the message names it and says how to clear the lock.
        """
        self._started_at = _utc_now_iso(self.clock)
        for _ in range(3):
            if self._create(json.dumps(self._identity(), indent=1).encode("utf-8")):
                self.held = True
                self._start_heartbeat()
                log.info("%s lock %s taken by run %s (pid %d)", self.purpose, self.path, self.run_id, os.getpid())
                return self
            raw, holder, mtime = self._read()
            if raw is None:
                continue  # released meanwhile: try again
            reason = stale_reason(holder, self.clock(), self.ttl_s, mtime_s=mtime)
            if reason is None:
                raise LockHeldError(self._held_message(holder))
            log.warning("taking over the stale %s lock %s of %s: %s", self.purpose, self.path,
                        _describe(holder), reason)
            self._remove_stale(raw)
        raise LockHeldError(self._held_message(self._read()[1]))

    def _held_message(self, holder: Optional[dict]) -> str:
        age = ""
        beat = _epoch_s((holder or {}).get("heartbeat_at"))
        if beat is not None:
            age = f", {self.clock() - beat:.0f} s ago"
        ttl = f" ({self.ttl_setting})" if self.ttl_setting else ""
        return (f"another {self.purpose} is running: the lock {self.path} is held by {_describe(holder)}"
                f"{age}. Only one {self.purpose} may run at a time; wait for it to finish. If that run is dead, "
                f"delete {self.path} — a lock whose process is gone from this host, or whose heartbeat is older "
                f"than {self.ttl_s:g} s{ttl}, is recovered automatically.")

    # -- holding

    def heartbeat(self) -> bool:
        """Refresh the heartbeat in the lock file.

        Returns
        -------
        bool
            False (with an error logged) when the lock is no longer ours: another run took it over as stale.
        """
        if not self.held:
            return False
        _, holder, _ = self._read()
        if not holder or holder.get("token") != self.token:
            log.error("the %s lock %s was taken over by %s while run %s held it (its heartbeat was too old)",
                      self.purpose, self.path, _describe(holder), self.run_id)
            return False
        write_bytes(self.path, json.dumps(self._identity(), indent=1).encode("utf-8"))
        return True

    def _start_heartbeat(self) -> None:
        if not self.heartbeat_s:
            return
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if not self.heartbeat():
                        return
                except OSError as err:  # a hiccup of the file system: the next beat tries again
                    log.warning("could not refresh the heartbeat of %s: %s", self.path, err)

        self._thread = threading.Thread(target=beat, name="lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Give the lock up (delete the file if it is still ours); safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if not self.held:
            return
        self.held = False
        _, holder, _ = self._read()
        if holder and holder.get("token") == self.token:
            delete(self.path)
            log.info("%s lock %s released by run %s", self.purpose, self.path, self.run_id)
        else:
            log.warning("the %s lock %s is no longer ours (now %s); left in place", self.purpose, self.path,
                        _describe(holder))

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "an unknown holder (the lock file cannot be read)"
    return (f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, started "
            f"{holder.get('started_at')}, last heartbeat {holder.get('heartbeat_at')})")
