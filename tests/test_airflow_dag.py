"""deploy/airflow_dag.py's dependency graph: the SkyServer-bound stages never run at once.

Airflow is not installed here (a later issue installs it in its own environment and parses the DAG for real). The
DAG file is executed against a small test double of ``airflow.DAG`` and ``BashOperator`` (tests/airflow_double,
on sys.path only inside these tests) that records tasks and ``>>`` edges. This checks the graph the file builds,
not that Airflow accepts the file.
"""
from __future__ import annotations

import itertools
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "deploy" / "airflow_dag.py"
DOUBLE = Path(__file__).resolve().parent / "airflow_double"
# The jobs that talk to SkyServer (jobs/*.py): found in each task's command, not by task name, so a new task that
# runs one of them is checked too.
SKYSERVER_JOBS = ("extract_catalog", "download_cutouts")


@pytest.fixture
def dag(monkeypatch):
    for name in [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]:
        monkeypatch.delitem(sys.modules, name)  # a real Airflow, should one be importable, is not what runs here
    monkeypatch.syspath_prepend(str(DOUBLE))
    try:
        namespace = runpy.run_path(str(DAG_FILE))
    finally:
        for name in [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]:
            del sys.modules[name]
    return namespace["dag"]


def _job(task) -> str:
    words = task.bash_command.split()
    wrapper = next(k for k, w in enumerate(words) if w.startswith("deploy/submit-"))
    return " ".join(words[wrapper + 1:])


def _reaches(edges, start: str, goal: str) -> bool:
    downstream: dict[str, set] = {}
    for a, b in edges:
        downstream.setdefault(a, set()).add(b)
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(downstream.get(node, ()))
    return False


def test_the_double_records_every_kind_of_edge_the_dag_file_may_use(monkeypatch):
    monkeypatch.syspath_prepend(str(DOUBLE))
    try:
        from airflow import DAG
        from airflow.operators.bash import BashOperator

        with DAG("t") as graph:
            a, b, c, d = (BashOperator(task_id=n, bash_command="true") for n in "abcd")
            a >> [b, c]
            [b, c] >> d
            d << a
    finally:
        for name in [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]:
            del sys.modules[name]
    assert graph.edges == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d")}


def test_skyserver_bound_stages_never_run_at_once(dag):
    bound = sorted(t for t, task in dag.tasks.items() if _job(task).split()[0] in SKYSERVER_JOBS)
    assert bound == ["cutouts", "cutouts_photometric", "extract", "extract_photometric"]
    for a, b in itertools.combinations(bound, 2):
        assert _reaches(dag.edges, a, b) or _reaches(dag.edges, b, a), \
            f"{a} and {b} both call SkyServer and nothing orders them: they can run at once"
    assert dag.max_active_runs == 1  # nor two nights at once


def test_every_stage_runs_after_what_it_reads(dag):
    by_job = {_job(task): t for t, task in dag.tasks.items()}
    labelled_cutouts = by_job["download_cutouts --catalog catalog"]
    photometric_cutouts = by_job["download_cutouts --catalog photometric"]
    assert _reaches(dag.edges, by_job["extract_catalog"], labelled_cutouts)
    assert _reaches(dag.edges, by_job["extract_catalog --photometric"], photometric_cutouts)
    assert _reaches(dag.edges, labelled_cutouts, "training_table")
    assert _reaches(dag.edges, "training_table", "train_if_needed")
    for upstream in ("train_if_needed", photometric_cutouts):
        assert _reaches(dag.edges, upstream, "score")
    assert _reaches(dag.edges, "score", "evaluate")
    assert not any(_reaches(dag.edges, b, a) for a, b in dag.edges)  # no cycle
    assert {t for edge in dag.edges for t in edge} == set(dag.tasks)  # no task left outside the chain
