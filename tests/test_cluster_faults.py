"""Faults of a cluster, on the real standalone cluster: an executor JVM killed in the middle of a cutout download
and of scoring (Spark reruns the lost tasks), and the driver killed in the middle of both (the rerun finishes).
Each time the lake ends with every object exactly once.

"In the middle" is a known point, not a guessed time: the stand-in holds cutout requests after the first 120
until the kill is done; for scoring, the kill waits until an executor's Python worker has loaded the model's
TensorFlow (its task is classifying), and the event log must then show a task lost with the executor."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest

from catalog_fixture import make_labelled, make_photometric
from cluster_fixture import standalone_cluster  # noqa: F401 - the fixture
from cluster_jobs import (ROOT, events, job_settings, kill_driver, lost_tasks, submit, submit_in_background,
                          wait_for, wait_ok)

pytestmark = pytest.mark.slow

N_LABELLED = 400
N_SCORED = 6000
NIGHT = "2026-02-01"


def _cutouts_lake(cluster, standin_factory, tmp_path: Path):
    labelled = make_labelled(N_LABELLED, seed=5)
    server = standin_factory(catalogs=[labelled, make_photometric(10, seed=6)])
    sets = job_settings(tmp_path, server.url, **{"cutouts.rows_per_file": "20", "cutouts.rows_per_row_group": "20"})
    submit(cluster, tmp_path / "events", "extract_catalog", *sets)
    return labelled, server, sets


def _assert_each_cutout_once(tmp_path: Path, labelled: pd.DataFrame) -> None:
    cutouts = pd.read_parquet(tmp_path / "lake" / "cutouts")
    assert cutouts.objid.is_unique
    assert set(cutouts.objid) == set(labelled.objid)


def test_an_executor_killed_mid_download_loses_and_duplicates_nothing(standalone_cluster, standin_factory,
                                                                      tmp_path):
    labelled, server, sets = _cutouts_lake(standalone_cluster, standin_factory, tmp_path)
    gate = server.hold("getjpeg", after=120)
    process = submit_in_background(standalone_cluster, tmp_path / "events", "download_cutouts", *sets,
                                   log_path=tmp_path / "cutouts.log")
    assert gate.reached.wait(600), (tmp_path / "cutouts.log").read_text()[-3000:]
    executors = standalone_cluster.executor_pids()
    assert len(executors) == 2
    victim_dir = Path(psutil.Process(executors[0]).cwd())
    copies, listing = list(victim_dir.glob("spark-*/skyclass-env-*.tar.gz")), sorted(victim_dir.iterdir())
    os.kill(executors[0], signal.SIGKILL)
    gate.release()
    wait_ok(standalone_cluster, process, tmp_path / "cutouts.log")
    _assert_each_cutout_once(tmp_path, labelled)
    assert lost_tasks(events(tmp_path / "events")[-1]) >= 1  # the kill really took a running task with it
    # The executor's copy of the environment archive was in its own folder, not in the machine's /tmp, where a
    # killed executor leaves it for good; it went with what the application unpacked.
    assert copies, listing
    assert not list(victim_dir.glob("spark-*"))


def test_the_driver_killed_mid_download_then_a_rerun_finishes_it(standalone_cluster, standin_factory, tmp_path):
    labelled, server, sets = _cutouts_lake(standalone_cluster, standin_factory, tmp_path)
    gate = server.hold("getjpeg", after=120)
    process = submit_in_background(standalone_cluster, tmp_path / "events", "download_cutouts", *sets,
                                   log_path=tmp_path / "cutouts.log")
    assert gate.reached.wait(600), (tmp_path / "cutouts.log").read_text()[-3000:]
    kill_driver(process)
    gate.release()
    committed = pd.read_parquet(tmp_path / "lake" / "cutouts")  # whole chunks only, never a torn file
    assert 0 < len(committed) <= 120 and committed.objid.is_unique
    # The dead run's lock is stale (its process is gone): the rerun takes it over and fetches the rest.
    submit(standalone_cluster, tmp_path / "events", "download_cutouts", *sets)
    _assert_each_cutout_once(tmp_path, labelled)
    assert not (tmp_path / "lake" / "cutout_failures").exists() or \
        len(pd.read_parquet(tmp_path / "lake" / "cutout_failures")) == 0


def _scoring_lake(spark, tmp_path: Path) -> list[str]:
    """A SIMULATED lake of N_SCORED objects with cutouts (written here by the test's local Spark: what is under
    test is scoring on the cluster) and an untrained package (scoring's speed and bookkeeping do not depend on the
    weights); returns the jobs' --set items."""
    from skyclass.config import load_config
    from skyclass.simulate import simulate_lake

    sets = job_settings(tmp_path, "http://127.0.0.1:9/unused", **{"score.batch_rows": "64"})
    conf = load_config(None, [item for item in sets if item != "--set"])
    simulate_lake(spark, conf, n_objects=N_SCORED, seed=0, rows_per_partition=1000)
    package = subprocess.run([sys.executable, str(ROOT / "bench" / "score_bench.py"), "--build-package",
                              str(tmp_path / "models")], check=True, capture_output=True, text=True,
                             cwd=ROOT).stdout.strip().splitlines()[-1]
    return [*sets, "--set", f"score.model={package}", "--set", f"score.run_date={NIGHT}"]


def _executor_running_the_model(cluster):
    """The pid of an executor JVM whose Python workers have loaded TensorFlow, or None. Scoring imports TensorFlow
    in the worker only when its task starts classifying (nothing earlier in the job does), so this is a task in
    the middle of scoring."""
    import psutil

    for pid in cluster.executor_pids():
        try:
            workers = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for worker in workers:
            try:
                if any("tensorflow" in m.path for m in worker.memory_maps()):
                    return pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return None


def _assert_each_object_scored_once(tmp_path: Path) -> None:
    night = pd.read_parquet(tmp_path / "predictions" / f"run_date={NIGHT}")
    catalog = pd.read_parquet(tmp_path / "lake" / "photometric")
    assert night.objid.is_unique
    assert set(night.objid) == set(catalog.objid) and len(night) == N_SCORED


def test_an_executor_killed_mid_score_loses_and_duplicates_nothing(standalone_cluster, spark, tmp_path):
    sets = _scoring_lake(spark, tmp_path)
    process = submit_in_background(standalone_cluster, tmp_path / "events", "score_catalog", *sets,
                                   log_path=tmp_path / "score.log")
    victim = wait_for(lambda: _executor_running_the_model(standalone_cluster) or process.poll() is not None, 600,
                      "an executor scoring")
    assert process.poll() is None, "scoring ended before the kill"
    os.kill(victim, signal.SIGKILL)
    wait_ok(standalone_cluster, process, tmp_path / "score.log")
    _assert_each_object_scored_once(tmp_path)
    assert lost_tasks(events(tmp_path / "events")[-1]) >= 1


def test_the_driver_killed_mid_score_then_a_rerun_finishes_the_night(standalone_cluster, spark, tmp_path):
    sets = _scoring_lake(spark, tmp_path)
    process = submit_in_background(standalone_cluster, tmp_path / "events", "score_catalog", *sets,
                                   log_path=tmp_path / "score.log")
    wait_for(lambda: _executor_running_the_model(standalone_cluster) or process.poll() is not None, 600,
             "an executor scoring")
    assert process.poll() is None, "scoring ended before the kill"
    kill_driver(process)
    assert not (tmp_path / "predictions" / f"run_date={NIGHT}").exists()  # nothing half-written is visible
    # The killed driver's scratch (Spark unpacked the environment archive there too) outlives it ...
    left = standalone_cluster.driver_scratch_dirs()
    assert len(left) == 1 and list(left[0].glob("spark-*/userFiles-*/environment/bin")), left
    submit(standalone_cluster, tmp_path / "events", "score_catalog", *sets)
    _assert_each_object_scored_once(tmp_path)
    assert standalone_cluster.driver_scratch_dirs() == []  # ... until the rerun, which removes it and its own
