"""What the executors of a running application really run: which JVM, which Python, which skyclass and stack.

On a cluster the driver and the executors do not share a Python, a working directory or a file system. This module
runs a few small tasks and reports, per task, the executor that ran it and what its Python imported, so a
deployment can be checked (``skyclass check-cluster``): e.g. that the executors' ``skyclass`` comes from the code
shipped with the application (``--py-files``), not from a checkout that happens to sit on the same machine.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from skyclass.errors import SkyclassError

log = logging.getLogger("skyclass.cluster_check")

# Distributions whose versions matter for the pinned stack; the first installed name of each entry is reported.
STACK_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "horovod": ("horovod",),
    "petastorm": ("petastorm",),
    "pyarrow": ("pyarrow",),
    "numpy": ("numpy",),
}
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


class ClusterCheckError(SkyclassError):
    """A bad number of tasks, or the application did not get the executors it asked for in time."""


@dataclass(frozen=True)
class TaskReport:
    """Where one task ran and what its Python saw."""

    task: int
    executor_id: str  # "driver" when the task ran inside the driver (local mode)
    host: str
    executor_pid: int | None  # the executor JVM; None in local mode
    python_pid: int
    worker_url: str | None  # the standalone worker that launched the executor
    python: str  # sys.executable of the Python worker
    skyclass_file: str
    cwd: str
    versions: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterDescription:
    """Per-task reports of one check; ``str()`` is the table the CLI prints."""

    master: str
    tasks: list[TaskReport]

    @property
    def executor_ids(self) -> list[str]:
        return sorted({t.executor_id for t in self.tasks})

    def to_json(self) -> str:
        return json.dumps({"master": self.master, "tasks": [asdict(t) for t in self.tasks]}, indent=2)

    def __str__(self) -> str:
        columns = ["task", "executor", "host", "jvm pid", "py pid", "python", "skyclass", "cwd"]
        rows = [[str(t.task), t.executor_id, t.host, str(t.executor_pid or "-"), str(t.python_pid), t.python,
                 t.skyclass_file, t.cwd] for t in self.tasks]
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
        lines = [f"master {self.master}: {len(self.tasks)} tasks on {len(self.executor_ids)} executor(s) "
                 f"({', '.join(self.executor_ids)})",
                 "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        versions = sorted({json.dumps(t.versions, sort_keys=True) for t in self.tasks})
        for v in versions:
            lines.append("stack on executors: " + ", ".join(f"{k} {val or 'MISSING'}"
                                                            for k, val in json.loads(v).items()))
        return "\n".join(lines)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # The command name (field 2) may hold spaces and parentheses: the parent pid follows its last ')'.
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _executor_jvm() -> tuple[int | None, list[str]]:
    """The executor JVM that (indirectly, through pyspark's daemon) started this Python worker."""
    pid = os.getppid()
    for _ in range(8):  # worker -> daemon -> JVM; a few more levels in case of wrappers
        if pid is None or pid <= 1:
            break
        argv = _cmdline(pid)
        if EXECUTOR_CLASS in argv:
            return pid, argv
        pid = _parent(pid)
    return None, []


def _distribution_version(names: tuple[str, ...]) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def describe_task(task: int) -> TaskReport:
    """Report of the Python worker this runs in (called inside a task; public so it pickles by reference).

    Parameters
    ----------
    task : int
        Partition number of the task.

    Returns
    -------
    TaskReport
    """
    import skyclass

    jvm_pid, argv = _executor_jvm()
    return TaskReport(
        task=task,
        executor_id=_option(argv, "--executor-id") or "driver",
        host=_option(argv, "--hostname") or socket.gethostname(),
        executor_pid=jvm_pid,
        python_pid=os.getpid(),
        worker_url=_option(argv, "--worker-url"),
        python=sys.executable,
        skyclass_file=os.path.abspath(skyclass.__file__),
        cwd=os.getcwd(),
        versions={name: _distribution_version(dists) for name, dists in STACK_DISTRIBUTIONS.items()},
    )


def _ready(rows):
    return [os.getpid()]


def _registered_executors(spark) -> int:
    # The status tracker lists the driver too.
    infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    return max(0, len(infos) - 1)


def wait_for_executors(spark, count: int, timeout_s: float = 120.0, *,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> int:
    """Wait until at least ``count`` executors have registered with the driver.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    count : int
        Executors to wait for; 0 returns at once.
    timeout_s : float
        How long to wait.
    clock, sleep : callable
        Injected for tests.

    Returns
    -------
    int
        Executors registered.

    Raises
    ------
    ClusterCheckError
        Fewer than ``count`` executors after ``timeout_s``: the cluster lacks free cores or memory for them.
    """
    deadline = clock() + timeout_s
    while True:
        have = _registered_executors(spark)
        if have >= count:
            return have
        if clock() >= deadline:
            raise ClusterCheckError(
                f"only {have} of {count} executors registered within {timeout_s:g} s at "
                f"{spark.sparkContext.master}; check that the workers are ALIVE and have free cores and memory "
                f"for spark.executor.memory={spark.conf.get('spark.executor.memory', '1g')} "
                f"(deploy/local-cluster.sh status)")
        sleep(0.5)


def describe_executors(spark, tasks: int = 4, min_executors: int = 0, timeout_s: float = 120.0,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> ClusterDescription:
    """Run ``tasks`` small tasks and report where each ran and what its Python imported.

    With ``min_executors``, the tasks run only once that many executor slots are ready; the scheduler's first
    wave then gives each ready executor a task, so with ``tasks`` >= executors every executor reports.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    tasks : int
        Number of tasks (partitions).
    min_executors : int
        Wait for this many executors to register and take tasks first (0: do not wait).
    timeout_s : float
        How long to wait for them.
    clock, sleep : callable
        Injected for tests.

    Returns
    -------
    ClusterDescription
        One TaskReport per task, in task order.

    Raises
    ------
    ClusterCheckError
        ``tasks`` < 1, or fewer than ``min_executors`` executors registered in time.

    Examples
    --------
    >>> description = describe_executors(spark, tasks=2)
    >>> [t.task for t in description.tasks]
    [0, 1]
    """
    if tasks < 1:
        raise ClusterCheckError(f"the number of tasks must be at least 1 (--tasks), got {tasks}")
    sc = spark.sparkContext
    if min_executors:
        have = wait_for_executors(spark, min_executors, timeout_s, clock=clock, sleep=sleep)
        log.info("%d executors registered; waiting until they take tasks", have)
        # Registered is not ready: an executor is offered tasks only once it has fetched and unpacked what the
        # application ships (a ~400 MB environment), and the first ready one would otherwise run every task. A
        # barrier stage is launched only when each of its tasks has a free slot at once, so once it has run,
        # that many slots are ready, and the next stage's first wave gives every ready executor a task.
        sc.parallelize(range(min_executors), min_executors).barrier().mapPartitions(_ready).collect()
    reports = (sc.parallelize(range(tasks), tasks)
               .mapPartitionsWithIndex(lambda index, _: [describe_task(index)])
               .collect())
    description = ClusterDescription(master=sc.master, tasks=sorted(reports, key=lambda t: t.task))
    log.info("%d tasks ran on executors %s", tasks, ", ".join(description.executor_ids))
    return description
