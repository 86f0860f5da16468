"""deploy/airflow_dag.py run by Apache Airflow (its own environment, deploy/airflow-env.sh) against the standalone
cluster of deploy/local-cluster.sh and the SkyServer stand-in: ``airflow dags test skyclass_nightly <date>`` with a
SkyServer outage that fails a task, which is then cleared and run again as Airflow's executor runs a task
(``airflow tasks run --local``); the next night's train_if_needed then trains nothing.

Kept small for CI's budget (300 labelled objects, 100 photometric ones, one epoch): what is checked is the
scheduling, not the model.
"""
from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from airflow_env import DAG_ID, AirflowHome, ensure_airflow
from schedule_run import pruning, summaries, write_conf
from catalog_fixture import make_labelled, make_photometric
from cluster_fixture import script_env, standalone_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NIGHT_1, NIGHT_2 = "2026-03-01", "2026-03-02"
SKYSERVER_TASKS = ("extract", "extract_photometric", "cutouts", "cutouts_photometric")
ALL_TASKS = {"extract", "extract_photometric", "cutouts", "cutouts_photometric", "training_table",
             "train_if_needed", "score", "evaluate"}


# `airflow dags test` prints each line of a task's log twice: through the handler it adds to the task's logger
# ("[2026-03-01 02:30:00,123]") and through Airflow's console handler ("[2026-03-01T02:30:00.123+0000]"). A
# section keeps the first kind only, so a line the job printed once is there once.
_TASK_HANDLER_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] ")


def task_sections(output: str) -> dict[str, str]:
    """``airflow dags test`` output cut per task (between its "[DAG TEST] starting task_id=..." and
    "[DAG TEST] end task task_id=..." lines)."""
    sections: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        start = re.search(r"\[DAG TEST\] starting task_id=(\w+)", line)
        if start:
            current = start.group(1)
            sections.setdefault(current, "")
        elif re.search(r"\[DAG TEST\] end task task_id=", line):
            current = None
        elif current and _TASK_HANDLER_LINE.match(line):
            sections[current] += line + "\n"
    return sections


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def assert_no_overlap(instances: dict[str, dict], tasks=SKYSERVER_TASKS) -> None:
    spans = sorted((_time(instances[t]["start"]), _time(instances[t]["end"]), t) for t in tasks)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert end <= start, f"{a} (ended {end}) and {b} (started {start}) talked to SkyServer at the same time"


def test_two_nights_with_a_failed_task_cleared_and_rerun(standalone_cluster, standin_factory, tmp_path):
    from skyclass.standin.server import Faults

    cluster = standalone_cluster
    labelled, photometric = make_labelled(300, seed=31), make_photometric(100, seed=32)
    server = standin_factory(catalogs=[labelled, photometric])
    conf = write_conf(tmp_path / "nightly.yaml", tmp_path, server.url)
    home = AirflowHome(tmp_path / "airflow", ensure_airflow())
    env = home.env(script_env(cluster.state_dir), SPARK_MASTER_URL=cluster.master_url,
                   DRIVER_PYTHON=sys.executable, SKYCLASS_HOME=str(ROOT), SKYCLASS_SUBMIT="submit-standalone.sh",
                   SKYCLASS_CONF=str(conf), SKYCLASS_MODELS=str(tmp_path / "models"), SKYCLASS_TRAIN_GPU="0",
                   SKYCLASS_SKYSERVER_RETRIES="0", SKYCLASS_LOG_LEVEL="WARNING", TZ="UTC",
                   # No scheduler runs here: the task runner must not mark downstream tasks "scheduled" for one
                   # (a task in that state is not run by `airflow tasks run`).
                   AIRFLOW__SCHEDULER__SCHEDULE_AFTER_TASK_EXECUTION="False")

    # Night 1, SkyServer down: the first task fails (no Airflow retry: SKYCLASS_SKYSERVER_RETRIES=0) and nothing
    # after it runs.
    server.faults = Faults(error_rate=1.0)
    with pruning(cluster):
        failed = home.run("dags", "test", DAG_ID, NIGHT_1, env=env, check=False)
    (tmp_path / "night1-failed.stdout").write_text(failed.stdout)
    (tmp_path / "night1-failed.stderr").write_text(failed.stderr)
    output = failed.stdout
    states = {t: i["state"] for t, i in home.task_instances(NIGHT_1).items()}
    assert states["extract"] == "failed", output[-5000:]
    assert {states[t] for t in ALL_TASKS - {"extract"}} == {"upstream_failed"}, states
    extract_log = task_sections(output)["extract"]
    # The job's own error, as skyclass printed it, is in the task's log, and its summary line says failed.
    assert "skyclass extract:" in extract_log and "SkyServer" in extract_log, extract_log[-5000:]
    [line] = summaries(extract_log)
    assert line["stage"] == "extract" and line["status"] == "failed" and "SkyServer" in line["error"]
    assert not (tmp_path / "lake" / "catalog").exists()
    assert server.stats()["sqlsearch"]["requests"] > 0

    # SkyServer is back: clear the failed task and everything after it, then run the cleared tasks in the
    # DAG's order as the executor would (`airflow tasks run --local`, which checks each task's upstream states).
    server.faults = Faults()
    home.run("tasks", "clear", DAG_ID, "--task-regex", "^extract$", "--downstream", "--start-date", NIGHT_1,
             "--end-date", NIGHT_1, "--yes", env=env)
    assert {i["state"] for i in home.task_instances(NIGHT_1).values()} == {None}
    run_id = home.run_id(NIGHT_1)
    order = home.dagbag(env)["dags"][DAG_ID]["topological"]
    with pruning(cluster):
        for task in order:
            home.run("tasks", "run", DAG_ID, task, run_id, "--local", env=env)
            # `tasks run` exits 0 also when it declines to run a task (its dependencies unmet): check it ran.
            assert home.task_instances(NIGHT_1)[task]["state"] == "success", task
    night1 = home.task_instances(NIGHT_1)
    assert {t: i["state"] for t, i in night1.items()} == {t: "success" for t in ALL_TASKS}
    assert_no_overlap(night1)
    # The rerun's task logs (files, as the executor writes them): one summary line each; training ran.
    logs = {task: "".join(p.read_text() for p in sorted(home.logs.rglob("*.log"))
                          if f"task_id={task}" in p.parts and f"run_id={run_id}" in p.parts) for task in ALL_TASKS}
    for task in ALL_TASKS - {"train_if_needed"}:
        assert len(summaries(logs[task])) == 1 and summaries(logs[task])[0]["status"] == "ok", (task, logs[task])
    [trained] = summaries(logs["train_if_needed"])
    assert trained["stage"] == "train" and trained["model_fingerprint"].startswith("sha256:")
    packages = [p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]
    assert len(packages) == 1
    lake = tmp_path / "lake"
    catalog = pd.read_parquet(lake / "catalog")
    assert len(catalog) == 300 and catalog.objid.is_unique  # the failed attempt left nothing behind
    night = pd.read_parquet(tmp_path / "predictions" / f"run_date={NIGHT_1}")
    assert sorted(night.objid) == sorted(photometric.objid)  # every object of the field, each once
    assert pd.read_parquet(lake / "cutouts").objid.is_unique

    # Night 2: a package exists and retrain is false, so the night's train_if_needed task (run by Airflow's
    # `tasks test`, which runs one task as `dags test` does) trains nothing. That the rest of a second night fetches
    # and labels only the new objects is test_cluster_chain's (the same jobs, on the same cluster): a whole second
    # `dags test` here cost CI eleven minutes for what that test already shows.
    second = home.run("tasks", "test", DAG_ID, "train_if_needed", NIGHT_2, env=env)
    # The command's own output line (Airflow also logs the command, whose text holds the same words).
    assert re.search(r"INFO - model package exists and retrain is false: not training$", second.stdout, re.M), \
        second.stdout[-5000:]
    assert summaries(second.stdout) == []  # no train job ran: it would have printed its summary line
    assert len([p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]) == 1
