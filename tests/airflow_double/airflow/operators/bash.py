"""Test double of ``airflow.operators.bash.BashOperator``: see the package docstring."""
from __future__ import annotations

from airflow import DAG


class BashOperator:
    def __init__(self, task_id: str, bash_command: str, **kwargs):
        if not DAG._current:
            raise RuntimeError(f"task {task_id!r} created outside a `with DAG(...)` block")
        self.task_id = task_id
        self.bash_command = bash_command
        self.kwargs = kwargs
        self.dag = DAG._current[-1]
        self.dag.add(self)

    def _link(self, downstream):
        for task in downstream if isinstance(downstream, (list, tuple)) else [downstream]:
            self.dag.edges.add((self.task_id, task.task_id))
        return downstream

    def __rshift__(self, other):  # self >> other (a task or a list of tasks)
        return self._link(other)

    def __rrshift__(self, other):  # [a, b] >> self
        for task in other:
            task._link(self)
        return self

    def __lshift__(self, other):  # self << other
        for task in other if isinstance(other, (list, tuple)) else [other]:
            task._link(self)
        return other

    def __rlshift__(self, other):  # [a, b] << self
        return self._link(other)
