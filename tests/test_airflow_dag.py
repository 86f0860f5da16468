"""deploy/airflow_dag.py as Apache Airflow parses it (the DagBag of a DAGs folder holding a copy of the file, read in
Airflow's own environment, deploy/airflow-env.sh): no import errors, the task graph, retries and max_active_runs.
Running it is tests/test_airflow_run.py.

Slow only because the first run installs Airflow (about a minute, then cached in .venv-airflow); parsing takes
seconds.
"""
from __future__ import annotations

import itertools
import shutil

import pytest

from airflow_env import DAG_ID, AirflowHome, ensure_airflow

pytestmark = pytest.mark.slow

# The jobs that talk to SkyServer (jobs/*.py): found in each task's command, not by task name, so a new task that
# runs one of them is checked too.
SKYSERVER_JOBS = ("extract_catalog", "download_cutouts")


@pytest.fixture(scope="module")
def airflow():
    return ensure_airflow()


@pytest.fixture
def home(airflow, tmp_path):
    return AirflowHome(tmp_path / "airflow", airflow)


@pytest.fixture
def dag(home):
    bag = home.dagbag()
    assert bag["import_errors"] == {}
    return bag["dags"][DAG_ID]


def _job(task) -> str:
    words = task["bash_command"].split()
    wrapper = next(k for k, w in enumerate(words) if w.startswith("deploy/submit-"))
    return " ".join(words[wrapper + 1:])


def _reaches(tasks, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(tasks[node]["downstream"])
    return False


def test_airflow_lists_no_import_errors_and_would_list_a_broken_file(home):
    done = home.run("dags", "list-import-errors", "--output", "json")
    assert done.stdout.strip().splitlines()[-1] in ("[]", "No data found"), done.stdout
    # The same command on a folder with a DAG file that does not import: the check can fail.
    shutil.copy(home.dags / "airflow_dag.py", home.dags / "broken_dag.py")
    with open(home.dags / "broken_dag.py", "a") as fh:
        fh.write("\nextract >> no_such_task\n")
    broken = home.run("dags", "list-import-errors", "--output", "json", check=False)
    assert "broken_dag.py" in broken.stdout and "no_such_task" in broken.stdout, broken.stdout


def test_parsed_dag_has_the_tasks_dependencies_and_retries(dag):
    tasks = dag["tasks"]
    assert set(tasks) == {"extract", "extract_photometric", "cutouts", "cutouts_photometric", "training_table",
                          "train_if_needed", "score", "evaluate"}
    assert all(t["operator"] == "BashOperator" for t in tasks.values())
    upstream = {name: t["upstream"] for name, t in tasks.items()}
    assert upstream == {
        "extract": [], "extract_photometric": ["extract"], "cutouts": ["extract_photometric"],
        "cutouts_photometric": ["cutouts"], "training_table": ["cutouts"], "train_if_needed": ["training_table"],
        "score": ["cutouts_photometric", "train_if_needed"], "evaluate": ["score"]}
    retries = {name: (t["retries"], t["retry_delay_s"]) for name, t in tasks.items()}
    for name in ("extract", "extract_photometric", "cutouts", "cutouts_photometric"):
        assert retries[name] == (3, 1200.0), name  # SkyServer outages: retried on their own, 20 minutes apart
    assert retries["train_if_needed"][0] == 0  # a failed multi-hour training is for a human to look at
    for name in ("training_table", "score", "evaluate"):
        assert retries[name] == (1, 600.0), name
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["schedule"] == "30 2 * * *" and dag["params"] == {"retrain": False}


def test_skyserver_retries_follow_the_workers_environment(home):
    dag = home.dagbag(home.env(SKYCLASS_SKYSERVER_RETRIES="0"))["dags"][DAG_ID]
    assert {t["retries"] for name, t in dag["tasks"].items() if _job(t).split()[0] in SKYSERVER_JOBS} == {0}


def test_skyserver_bound_stages_never_run_at_once(dag):
    tasks = dag["tasks"]
    bound = sorted(t for t, task in tasks.items() if _job(task).split()[0] in SKYSERVER_JOBS)
    assert bound == ["cutouts", "cutouts_photometric", "extract", "extract_photometric"]
    for a, b in itertools.combinations(bound, 2):
        assert _reaches(tasks, a, b) or _reaches(tasks, b, a), \
            f"{a} and {b} both call SkyServer and nothing orders them: they can run at once"
    assert dag["max_active_runs"] == 1  # nor two nights at once


def test_every_stage_runs_after_what_it_reads(dag):
    tasks = dag["tasks"]
    by_job = {_job(task): t for t, task in tasks.items()}
    labelled_cutouts = by_job["download_cutouts --catalog catalog"]
    photometric_cutouts = by_job["download_cutouts --catalog photometric"]
    assert _reaches(tasks, by_job["extract_catalog"], labelled_cutouts)
    assert _reaches(tasks, by_job["extract_catalog --photometric"], photometric_cutouts)
    assert _reaches(tasks, labelled_cutouts, "training_table")
    assert _reaches(tasks, "training_table", "train_if_needed")
    for upstream in ("train_if_needed", photometric_cutouts):
        assert _reaches(tasks, upstream, "score")
    assert _reaches(tasks, "score", "evaluate")
    assert dag["topological"][0] == "extract" and dag["topological"][-1] == "evaluate"
