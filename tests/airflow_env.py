"""Apache Airflow for the tests, in its own environment (deploy/airflow-env.sh: .venv-airflow and a migrated SQLite
metadata DB in .airflow-home/, built once and reused), never imported into the test process: every Airflow call is
a subprocess of .venv-airflow, as an operator would run it.

``AirflowHome(tmp_path)`` is a throw-away AIRFLOW_HOME for one test: a copy of the migrated DB, a DAGs folder
holding a copy of deploy/airflow_dag.py (what a deployment does), task logs below it.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "deploy" / "airflow_dag.py"
TEMPLATE_HOME = ROOT / ".airflow-home"
DAG_ID = "skyclass_nightly"

# Printed by python of .venv-airflow: the DagBag's view of the DAG folder, as JSON.
_DAGBAG_DUMP = r'''
import json, sys
from airflow.models import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for task in dag.tasks:
        tasks[task.task_id] = {
            "operator": type(task).__name__, "upstream": sorted(task.upstream_task_ids),
            "downstream": sorted(task.downstream_task_ids), "retries": task.retries,
            "retry_delay_s": task.retry_delay.total_seconds(), "bash_command": getattr(task, "bash_command", None),
            "rendered": {ds: task.render_template(task.bash_command, {"ds": ds, "params": dict(dag.params) | p})
                         for ds, p in (("2026-03-04", {}), ("2026-03-05", {"retrain": True}))}}
    out["dags"][dag_id] = {"max_active_runs": dag.max_active_runs, "schedule": str(dag.schedule_interval),
                           "catchup": dag.catchup, "params": dict(dag.params), "tasks": tasks,
                           "topological": [t.task_id for t in dag.topological_sort()]}
print(json.dumps(out))
'''


def ensure_airflow(timeout_s: float = 1800) -> Path:
    """Build (or reuse) Airflow's environment; returns the ``airflow`` executable."""
    done = subprocess.run(["bash", str(ROOT / "deploy" / "airflow-env.sh"), "path"], capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"deploy/airflow-env.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


class AirflowHome:
    """A throw-away AIRFLOW_HOME under ``folder`` with its own copy of the migrated metadata DB."""

    def __init__(self, folder: Path, airflow: Path):
        self.folder = Path(folder)
        self.airflow = Path(airflow)
        self.python = self.airflow.parent / "python"
        self.dags = self.folder / "dags"
        self.logs = self.folder / "logs"
        self.db = self.folder / "airflow.db"
        self.dags.mkdir(parents=True)
        shutil.copy(DAG_FILE, self.dags / DAG_FILE.name)
        shutil.copy(TEMPLATE_HOME / "airflow.db", self.db)

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``base`` (default: this process's environment) plus Airflow's settings for this home and ``extra``."""
        env = dict(os.environ if base is None else base)
        env.update({
            "AIRFLOW_HOME": str(self.folder), "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            # The DAG's jobs print to the task log; Airflow's own INFO lines would drown them.
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        })
        env.update(extra)
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 1800,
            check: bool = True) -> subprocess.CompletedProcess:
        """``airflow ARGS...`` in this home."""
        done = subprocess.run([str(self.airflow), *args], capture_output=True, text=True,
                              env=env if env is not None else self.env(), timeout=timeout_s, cwd=self.folder)
        if check and done.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args)} exited {done.returncode}\n--- stdout\n"
                                 f"{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}")
        return done

    def dagbag(self, env: dict[str, str] | None = None) -> dict:
        """The parsed DagBag of the DAGs folder (import errors, and per DAG its tasks, edges and retries)."""
        done = subprocess.run([str(self.python), "-c", _DAGBAG_DUMP, str(self.dags)], capture_output=True, text=True,
                              env=env if env is not None else self.env(), timeout=300, check=False)
        if done.returncode != 0:
            raise AssertionError(f"parsing the DagBag failed:\n{done.stderr[-6000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def task_instances(self, logical_date: str) -> dict[str, dict]:
        """Task instances of the DAG run of ``logical_date`` (YYYY-MM-DD) from the metadata DB: state, start, end,
        try_number."""
        with sqlite3.connect(self.db) as db:
            rows = db.execute(
                "SELECT ti.task_id, ti.state, ti.start_date, ti.end_date, ti.try_number FROM task_instance ti "
                "JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
                "WHERE ti.dag_id = ? AND substr(dr.execution_date, 1, 10) = ?", (DAG_ID, logical_date)).fetchall()
        return {task: {"state": state, "start": start, "end": end, "try_number": tries}
                for task, state, start, end, tries in rows}

    def run_id(self, logical_date: str) -> str:
        with sqlite3.connect(self.db) as db:
            (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? AND substr(execution_date, 1, 10) = ?",
                                   (DAG_ID, logical_date)).fetchone()
        return run_id
