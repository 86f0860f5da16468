"""A test double of the two Airflow names deploy/airflow_dag.py uses (``DAG``, ``BashOperator``), put on sys.path
only by tests/test_airflow_dag.py. It records tasks, their arguments and the ``>>`` edges so a test can check the
dependency graph. It is not Airflow: it validates nothing that Airflow would (arguments, templates, schedule).
"""
from __future__ import annotations


class DAG:
    """Records the tasks created inside ``with DAG(...)`` and the edges between them."""

    _current: list["DAG"] = []

    def __init__(self, dag_id: str, **kwargs):
        self.dag_id = dag_id
        self.kwargs = kwargs
        self.tasks: dict[str, object] = {}
        self.edges: set[tuple[str, str]] = set()

    def __getattr__(self, name):
        try:
            return self.__dict__["kwargs"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __enter__(self) -> "DAG":
        DAG._current.append(self)
        return self

    def __exit__(self, *exc) -> None:
        DAG._current.pop()

    def add(self, task) -> None:
        if task.task_id in self.tasks:
            raise ValueError(f"duplicate task_id {task.task_id!r}")  # as Airflow refuses it
        self.tasks[task.task_id] = task
