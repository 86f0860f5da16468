"""The storage layer: every function on a plain path and on a file:// URI (the same behaviour), URIs of the other
file systems, calls from inside Spark tasks, a table swap killed between its renames, and the lock."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lock_holders import holder_processes
from skyclass import storage
from skyclass.storage import Lock, LockHeldError, StorageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["plain", "file_uri"])
def root(request, tmp_path):
    """A folder for the test, as a plain path and as a file:/// URI: every test using it runs on both."""
    base = tmp_path / "store"
    return str(base) if request.param == "plain" else "file://" + str(base)


def local(path: str) -> Path:
    """The local file behind a path of either form (for checks made without the code under test)."""
    return Path(path[len("file://"):] if path.startswith("file://") else path)


# --- paths ------------------------------------------------------------------------------------------------------

def test_uris_map_onto_pyarrow_file_systems():
    from pyarrow import fs as pafs

    assert storage._parse("s3a://bucket/lake/catalog").fs_path == "bucket/lake/catalog"
    assert storage._parse("s3n://bucket/lake").scheme == storage._parse("s3://bucket/lake").scheme == "s3"
    assert storage._parse("gs://b/k/x") == storage._Location("gs", "b", "b/k/x")
    assert storage._parse("hdfs://nn:8020/data/lake") == storage._Location("hdfs", "nn:8020", "/data/lake")
    assert storage._parse("hdfs:///data/lake") == storage._Location("hdfs", "", "/data/lake")
    assert storage._parse("file:/data/x").fs_path == storage._parse("file:///data/x").fs_path == "/data/x"
    fs, path = storage.filesystem("s3a://bucket/lake/cutouts")  # building the client needs no network
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/lake/cutouts"
    fs, path = storage.filesystem("gs://bucket/lake")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/lake"
    with pytest.raises(StorageError, match="needs a bucket"):
        storage.filesystem("s3a:///lake")
    with pytest.raises(StorageError, match="not host"):
        storage.filesystem("file://otherhost/data/x")


def test_spark_uri_names_the_same_place_for_spark(tmp_path, monkeypatch):
    assert storage.spark_uri(str(tmp_path)) == f"file://{tmp_path}"
    assert storage.spark_uri(f"file:{tmp_path}") == f"file://{tmp_path}"
    assert storage.spark_uri(f"file://{tmp_path}") == f"file://{tmp_path}"
    for uri in ("hdfs:///data/lake", "s3a://bucket/lake", "gs://bucket/lake"):
        assert storage.spark_uri(uri) == uri
    monkeypatch.chdir(tmp_path)
    assert storage.spark_uri("lake") == f"file://{tmp_path}/lake"


def test_join_split_and_hidden_temp_names(root):
    assert storage.join(root, "a", "b.txt") == root + "/a/b.txt"
    assert storage.split(root + "/a/b.txt") == (root + "/a", "b.txt")
    temp = storage.hidden_temp_path(root + "/a/b.txt")
    parent, name = storage.split(temp)
    assert parent == root + "/a" and name.startswith(".tmp-") and name.endswith("-b.txt")
    assert temp != storage.hidden_temp_path(root + "/a/b.txt")


# --- every function, on both path forms -------------------------------------------------------------------------

def test_dirs_exists_list_and_delete(root):
    folder = storage.join(root, "a", "b")
    assert not storage.exists(folder) and storage.list_names(folder) == [] and not storage.delete(folder)
    storage.make_dirs(folder)
    storage.make_dirs(folder)  # twice is fine
    assert storage.exists(folder) and storage.is_dir(folder) and not storage.is_file(folder)
    assert local(folder).is_dir()
    storage.write_text(storage.join(folder, "x.txt"), "hello")
    storage.make_dirs(storage.join(folder, "sub"))
    entries = storage.list_entries(folder)
    assert [(e.name, e.is_dir, e.size) for e in entries] == [("sub", True, None), ("x.txt", False, 5)]
    assert entries[1].path == storage.join(folder, "x.txt") and entries[1].mtime_s > 0
    assert storage.is_file(entries[1].path) and storage.file_size(entries[1].path) == 5
    assert storage.list_names(folder) == ["sub", "x.txt"]
    assert storage.delete(storage.join(root, "a"))  # recursive
    assert not local(root + "/a").exists() and not storage.exists(folder)
    with pytest.raises(FileNotFoundError):
        storage.file_size(storage.join(folder, "x.txt"))


def test_read_and_write_text_and_bytes_through_a_hidden_temp_file(root):
    path = storage.join(root, "deep", "stats.json")
    storage.write_text(path, '{"a": 1}')  # parents are created
    assert storage.read_text(path) == '{"a": 1}' == local(path).read_text()
    storage.write_bytes(path, b"\x00\xff new")
    assert storage.read_bytes(path) == b"\x00\xff new"
    assert storage.list_names(storage.join(root, "deep")) == ["stats.json"]  # no temp file left
    with pytest.raises(FileNotFoundError, match="no file at"):
        storage.read_text(storage.join(root, "missing.json"))


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(root):
    path = storage.join(root, "chunk.parquet")
    storage.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_output(path) as stream:
            stream.write(b"half of the new")
            assert storage.read_bytes(path) == b"old"  # readers see the old file while the new one is written
            raise RuntimeError("task killed")
    assert storage.read_bytes(path) == b"old" and storage.list_names(root) == ["chunk.parquet"]
    with storage.atomic_output(path) as stream:
        stream.write(b"new")
    assert storage.read_bytes(path) == b"new"


def test_streams_parquet_move_sizes_and_leftovers(root):
    folder = storage.join(root, "t")
    with storage.open_output(storage.hidden_temp_path(storage.join(folder, "part-9.parquet"))) as out:
        out.write(b"a chunk a killed task never committed")
    assert not storage.table_exists(folder)  # hidden files are no table
    table = pa.table({"x": list(range(100))})
    with storage.open_output(storage.join(folder, "part-0.parquet")) as out:
        pq.write_table(table, out)
    with storage.open_input(storage.join(folder, "part-0.parquet")) as handle:
        assert pq.read_table(handle).column("x").to_pylist() == list(range(100))
    storage.move(storage.join(folder, "part-0.parquet"), storage.join(folder, "part-1.parquet"))
    storage.write_bytes(storage.join(folder, "_SUCCESS"), b"")
    with storage.open_output(storage.hidden_temp_path(storage.join(folder, "part-2.parquet"))) as out:
        out.write(b"left by a killed task")
    size = local(storage.join(folder, "part-1.parquet")).stat().st_size
    assert storage.visible_files_size(folder) == size  # neither _SUCCESS nor the hidden file counts
    assert storage.table_exists(folder)
    assert storage.remove_hidden_leftovers(folder) == 2
    assert storage.list_names(folder) == ["_SUCCESS", "part-1.parquet"]
    assert storage.visible_files_size(storage.join(root, "none")) == 0
    storage.move(folder, storage.join(root, "u"))  # folders move too
    assert storage.list_names(root) == ["u"]
    with pytest.raises(StorageError, match="different file systems"):
        storage.move(storage.join(root, "u"), "s3a://bucket/u")
    with pytest.raises(FileNotFoundError):
        storage.open_input(storage.join(root, "nothing.parquet"))


def test_plain_paths_and_file_uris_name_the_same_files(tmp_path):
    storage.write_text(str(tmp_path / "a.txt"), "written as a plain path")
    assert storage.read_text(f"file://{tmp_path}/a.txt") == "written as a plain path"
    assert storage.read_text(f"file:{tmp_path}/a.txt") == "written as a plain path"
    storage.write_text(f"file://{tmp_path}/b.txt", "written as a URI")
    assert (tmp_path / "b.txt").read_text() == "written as a URI"


# --- the same calls inside Spark tasks ------------------------------------------------------------------------------

def _in_task(spark, function, parts: int = 2) -> list:
    return spark.sparkContext.parallelize(range(parts), parts).mapPartitionsWithIndex(function).collect()


def test_executors_read_what_the_driver_wrote_and_the_driver_reads_theirs(spark, root):
    driver_file = storage.join(root, "from-driver", "stats.json")
    storage.write_text(driver_file, json.dumps({"mean": 1.5}))

    def task(index, _rows):
        from skyclass import storage as s

        seen = json.loads(s.read_text(driver_file))
        s.write_text(s.join(root, "task-notes", f"task-{index}.json"), json.dumps({"task": index, "pid": os.getpid()}))
        with s.atomic_output(s.join(root, "from-tasks", f"chunk-{index}.parquet")) as out:
            pq.write_table(pa.table({"task": [index] * 3}), out)
        yield seen["mean"], os.getpid(), s.list_names(s.join(root, "from-driver"))

    outcomes = _in_task(spark, task)
    assert [o[0] for o in outcomes] == [1.5, 1.5] and all(o[2] == ["stats.json"] for o in outcomes)
    assert all(pid != os.getpid() for _, pid, _ in outcomes)  # really in Spark's Python workers
    tasks, notes = storage.join(root, "from-tasks"), storage.join(root, "task-notes")
    assert storage.list_names(tasks) == ["chunk-0.parquet", "chunk-1.parquet"]
    assert [json.loads(storage.read_text(storage.join(notes, f"task-{k}.json")))["task"] for k in (0, 1)] == [0, 1]
    # Spark reads the executors' files through the URI storage gives it.
    rows = spark.read.parquet(storage.spark_uri(tasks)).orderBy("task").collect()
    assert [r.task for r in rows] == [0, 0, 0, 1, 1, 1]


def test_executor_side_swap_and_table_exists_agree_with_the_driver(spark, root):
    path = storage.join(root, "t")
    storage.replace_directory(path, lambda staging: spark.range(7).write.parquet(staging))

    def task(index, _rows):
        from skyclass import storage as s

        yield s.table_exists(path), s.visible_files_size(path) > 0, s.table_exists(s.join(root, "none"))

    assert _in_task(spark, task, parts=1) == [(True, True, False)]


# --- table swaps -------------------------------------------------------------------------------------------------

def _write_rows(values):
    def write(staging):
        storage.make_dirs(staging)
        with storage.open_output(storage.join(staging, "part-0.parquet")) as out:
            pq.write_table(pa.table({"v": list(values)}), out)
    return write


def _rows(path) -> list:
    return sorted(pq.read_table(str(local(path))).column("v").to_pylist())


def test_replace_directory_swaps_whole_tables_and_leaves_nothing_behind(root):
    path = storage.join(root, "t")
    steps = []
    storage.replace_directory(path, _write_rows([1, 2, 3]), on_step=steps.append)
    assert steps == ["written", "marked", "moved_aside", "moved_in"]
    storage.replace_directory(path, _write_rows([4, 5]))
    assert _rows(path) == [4, 5] and storage.table_exists(path)
    assert storage.list_names(root) == ["t"]  # no staging, previous or marker left
    assert not storage.table_exists(storage.join(root, "nothing"))


def test_a_failed_write_keeps_the_old_table(root):
    path = storage.join(root, "t")
    storage.replace_directory(path, _write_rows([1]))

    def broken(staging):
        _write_rows([9, 9])(staging)
        raise RuntimeError("executor lost")

    with pytest.raises(RuntimeError):
        storage.replace_directory(path, broken)
    assert _rows(path) == [1] and storage.list_names(root) == ["t"]
    with pytest.raises(StorageError, match="left nothing"):
        storage.replace_directory(path, lambda staging: None)
    assert _rows(path) == [1]


CRASHING_SWAP = textwrap.dedent("""
    import os, signal, sys
    import pyarrow as pa, pyarrow.parquet as pq
    from skyclass import storage

    path, crash_at = sys.argv[1], sys.argv[2]

    def write(staging):
        storage.make_dirs(staging)
        with storage.open_output(storage.join(staging, "part-0.parquet")) as out:
            pq.write_table(pa.table({"v": [10, 20, 30]}), out)

    def on_step(step):
        if step == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no finally, no clean-up

    storage.replace_directory(path, write, on_step=on_step)
""")


def _crash_swap(path: str, step: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", CRASHING_SWAP, path, step], env=env, capture_output=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


@pytest.mark.parametrize("step", ["marked", "moved_aside", "moved_in"])
def test_a_swap_killed_midway_leaves_a_whole_table_for_the_next_reader(spark, root, step):
    path = storage.join(root, "t")
    storage.replace_directory(path, _write_rows([1, 2]))
    _crash_swap(path, step)
    assert storage.exists(storage.swap_marker_path(path)), "the swap did not die midway"
    if step == "moved_aside":
        assert not local(path).exists()  # the state that used to be final: no table at the path
    # A reader that checks the table first recovers the swap and sees the new table whole, never a mix.
    assert storage.table_exists(path)
    assert sorted(r.v for r in spark.read.parquet(storage.spark_uri(path)).collect()) == [10, 20, 30]
    assert storage.list_names(root) == ["t"]


def test_a_writer_after_a_killed_swap_replaces_the_recovered_table(root):
    path = storage.join(root, "t")
    storage.replace_directory(path, _write_rows([1, 2]))
    _crash_swap(path, "moved_aside")
    storage.replace_directory(path, _write_rows([7]))
    assert _rows(path) == [7] and storage.list_names(root) == ["t"]


def test_a_killed_swap_whose_staging_is_lost_restores_the_previous_table(root):
    path = storage.join(root, "t")
    storage.replace_directory(path, _write_rows([1, 2]))
    _crash_swap(path, "moved_aside")
    intent = json.loads(storage.read_text(storage.swap_marker_path(path)))
    storage.delete(storage.join(root, intent["staging"]))
    assert storage.recover_swap(path) == "restored"
    assert _rows(path) == [1, 2] and storage.list_names(root) == ["t"]
    assert storage.recover_swap(path) is None  # nothing left to recover


def test_swaps_of_partitions_are_recovered_from_their_parent(root):
    night = storage.join(root, "run_date=2026-01-01")
    storage.replace_directory(night, _write_rows([1]))
    _crash_swap(night, "moved_aside")
    assert storage.recover_swaps_in(root) == [night]
    assert _rows(night) == [10, 20, 30]


# --- locks -------------------------------------------------------------------------------------------------------

LOCK_HOLDER = textwrap.dedent("""
    import sys
    from skyclass.storage import Lock

    with Lock(sys.argv[1], run_id="holder-run", ttl_s=3600, purpose="cutouts download"):
        print("held", flush=True)
        sys.stdin.readline()  # hold until the test says so (or is killed)
    print("released", flush=True)
""")


@pytest.fixture
def lock_holder():
    """``lock_holder(path)``: a process that takes the lock and holds it; every process started is stopped."""
    yield from holder_processes(LOCK_HOLDER)


def test_a_second_holder_is_refused_at_once_with_the_holder_named(root, lock_holder):
    path = storage.join(root, "_locks", "cutouts.lock")
    holder = lock_holder(path)
    with pytest.raises(LockHeldError) as refused:
        Lock(path, run_id="second-run", ttl_s=3600, purpose="cutouts download", ttl_setting="cutouts.lock_ttl_s"
             ).acquire()
    message = str(refused.value)
    for part in ("another cutouts download is running", "holder-run", f"pid {holder.pid}", socket.gethostname(),
                 f"delete {path}", "cutouts.lock_ttl_s"):
        assert part in message, part
    assert json.loads(storage.read_text(path))["run_id"] == "holder-run"  # the holder's lock is untouched
    holder.stdin.write("release\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released" and holder.wait(30) == 0
    assert not storage.exists(path)  # released by its holder
    with Lock(path, run_id="second-run", ttl_s=3600) as lock:
        assert lock.held and json.loads(storage.read_text(path))["run_id"] == "second-run"
    assert not storage.exists(path)


def test_the_lock_of_a_killed_run_on_this_host_is_recovered_with_a_warning(root, lock_holder, caplog):
    path = storage.join(root, "_locks", "cutouts.lock")
    holder = lock_holder(path)
    holder.kill()
    holder.wait(30)  # reaped: its pid is gone
    assert json.loads(storage.read_text(path))["pid"] == holder.pid  # the dead run's lock is still there
    with caplog.at_level(logging.WARNING, logger="skyclass.storage"):
        with Lock(path, run_id="next-night", ttl_s=3600) as lock:
            assert json.loads(storage.read_text(path))["token"] == lock.token
    assert f"process {holder.pid} on this host" in caplog.text and "holder-run" in caplog.text


def _foreign_lock(path: str, heartbeat_s: float) -> None:
    from datetime import datetime, timezone

    beat = datetime.fromtimestamp(heartbeat_s, timezone.utc).isoformat()
    storage.write_text(path, json.dumps({"host": "another-host", "pid": 4242, "run_id": "elsewhere", "token": "t",
                                         "started_at": beat, "heartbeat_at": beat}))


def test_a_lock_is_stale_only_once_its_heartbeat_is_older_than_the_ttl(root, caplog):
    path = storage.join(root, "_locks", "cutouts.lock")
    _foreign_lock(path, heartbeat_s=1_000_000.0)
    with pytest.raises(LockHeldError, match=r"run elsewhere \(host another-host, pid 4242.*599 s ago"):
        Lock(path, run_id="mine", ttl_s=600, clock=lambda: 1_000_599.0).acquire()
    with caplog.at_level(logging.WARNING, logger="skyclass.storage"):
        lock = Lock(path, run_id="mine", ttl_s=600, clock=lambda: 1_000_601.0).acquire()
    assert "last heartbeat was 601 s ago" in caplog.text
    assert json.loads(storage.read_text(path))["run_id"] == "mine"
    lock.release()
    assert not storage.exists(path)


def test_heartbeats_keep_a_long_run_alive_and_a_taken_over_lock_is_not_deleted(root):
    path = storage.join(root, "_locks", "cutouts.lock")
    now = [1_000_000.0]
    lock = Lock(path, run_id="long-run", ttl_s=600, clock=lambda: now[0]).acquire()
    now[0] += 500
    assert lock.heartbeat()
    now[0] += 500  # 1000 s after the start, 500 s after the last beat: still alive
    with pytest.raises(LockHeldError):
        Lock(path, run_id="other", ttl_s=600, clock=lambda: now[0]).acquire()
    now[0] += 200  # no beat for 700 s: another run takes it over
    other = Lock(path, run_id="other", ttl_s=600, clock=lambda: now[0]).acquire()
    assert not lock.heartbeat()
    lock.release()  # no longer ours: left in place for its new holder
    assert json.loads(storage.read_text(path))["run_id"] == "other"
    other.release()
    assert not storage.exists(path)


def test_best_effort_locks_on_file_systems_without_exclusive_create(root, monkeypatch):
    monkeypatch.setattr(storage, "is_local", lambda path: False)  # take the HDFS/object-store branch
    path = storage.join(root, "_locks", "cutouts.lock")
    first = Lock(path, run_id="first", ttl_s=600).acquire()
    with pytest.raises(LockHeldError, match="run first"):
        Lock(path, run_id="second", ttl_s=600).acquire()
    first.release()
    _foreign_lock(path, heartbeat_s=1_000_000.0)
    recovered = Lock(path, run_id="second", ttl_s=600, clock=lambda: 1_000_700.0).acquire()
    assert json.loads(storage.read_text(path))["run_id"] == "second"
    recovered.release()
    assert not storage.exists(path)


def test_an_unreadable_lock_is_held_until_it_is_old(root):
    path = storage.join(root, "_locks", "cutouts.lock")
    storage.write_text(path, "{not json")
    mtime = storage.list_entries(storage.join(root, "_locks"))[0].mtime_s
    with pytest.raises(LockHeldError, match="cannot be read"):
        Lock(path, run_id="mine", ttl_s=600, clock=lambda: mtime + 10).acquire()
    Lock(path, run_id="mine", ttl_s=600, clock=lambda: mtime + 601).acquire().release()
