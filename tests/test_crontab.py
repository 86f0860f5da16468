"""deploy/crontab's nightly line run exactly as cron runs it (tests/cron.py: ``/bin/sh -c`` in cron's minimal
environment, ``%`` unescaped), against the standalone cluster and the SkyServer stand-in: it produces a night, and a
second start while the first holds the flock exits at once without touching the lake.

An operator adjusts the crontab's variables; so does this test: the checkout, the wrapper (submit-standalone.sh),
the cluster's master URL, a temporary log folder and lock, the config (small lake, one epoch), and a PATH and
DRIVER_PYTHON that find this machine's python3.11 and the test's venv (a gateway has its checkout's .venv).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from catalog_fixture import make_labelled, make_photometric
from cluster_fixture import standalone_cluster  # noqa: F401 - the fixture
from cron import CRONTAB, read_crontab, run_entry
from schedule_run import pruning, summaries, write_conf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _variables(cluster, tmp_path: Path, conf: Path) -> dict[str, str]:
    variables, _ = read_crontab(CRONTAB.read_text())
    python_dir = os.path.dirname(shutil.which("python3.11") or sys.executable)
    variables.update(SKYCLASS_HOME=str(ROOT), SKYCLASS_SUBMIT="submit-standalone.sh",
                     SPARK_MASTER_URL=cluster.master_url, SKYCLASS_LOGS=str(tmp_path / "logs"),
                     SKYCLASS_LOCK=str(tmp_path / "nightly.lock"), SKYCLASS_CONF=str(conf),
                     PATH=f"{python_dir}:{variables['PATH']}", DRIVER_PYTHON=sys.executable,
                     SKYCLASS_LOG_LEVEL="WARNING")
    return variables


def test_the_nightly_line_produces_a_night_and_a_second_start_waits_for_nothing(standalone_cluster,
                                                                                 standin_factory, tmp_path):
    labelled, photometric = make_labelled(300, seed=41), make_photometric(80, seed=42)
    server = standin_factory(catalogs=[labelled, photometric])
    night = "2026-04-01"
    # The night's date comes from the config here (cron's run uses today's).
    conf = write_conf(tmp_path / "nightly.yaml", tmp_path, server.url, **{"score.run_date": night})
    variables = _variables(standalone_cluster, tmp_path, conf)
    (tmp_path / "logs").mkdir()
    _, entries = read_crontab(CRONTAB.read_text())
    nightly = next(e for e in entries if "--retrain" not in e.command)
    lake = tmp_path / "lake"

    # A second start while another run holds the lock: flock -n gives up at once; nothing is submitted.
    with open(tmp_path / "nightly.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        blocked = run_entry(nightly, variables, tmp_path, timeout_s=60)
    assert blocked.returncode == 1, blocked
    assert not lake.exists() and server.stats() == {}
    [log] = list((tmp_path / "logs").iterdir())
    assert log.read_text() == ""  # flock ran nothing: the wrapper never started
    log.unlink()

    with pruning(standalone_cluster):
        done = run_entry(nightly, variables, tmp_path)
    [log] = list((tmp_path / "logs").iterdir())
    output = log.read_text()
    assert done.returncode == 0, output[-8000:]
    predictions = pd.read_parquet(tmp_path / "predictions" / f"run_date={night}")
    assert sorted(predictions.objid) == sorted(photometric.objid)  # every field object, once
    assert len([p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]) == 1
    # The operators' view: the job's one summary line, greppable in the cron log.
    [line] = summaries(output)
    assert line["stage"] == "run" and line["status"] == "ok" and line["trained"] is True
    assert line["rows_out"] == 80 and line["model_fingerprint"].startswith("sha256:")
    assert [s["stage"] for s in line["stages"]][0] == "extract"
