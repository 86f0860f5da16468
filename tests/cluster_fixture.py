"""A real Spark standalone cluster on loopback for tests: ``standalone_cluster`` (session scope).

Import it where it is needed (conftest.py stays as it is)::

    from cluster_fixture import standalone_cluster  # noqa: F401

    def test_x(standalone_cluster):
        done = standalone_cluster.submit("check_cluster", "--wait-executors", "2", "--json")

The cluster is started with ``deploy/local-cluster.sh start`` in a temporary state dir and stopped with
``deploy/local-cluster.sh stop`` at the end of the session, which ends exactly the JVMs that start started (their
pid files). Jobs go through ``deploy/submit-standalone.sh``, as a user would submit them, with this test run's
Python as the driver and the environment archive of ``deploy/package-venv.sh`` (built once per requirements hash,
before the cluster starts) for the executors.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Variables of the test process that must not leak into the daemons or the submit: the Python of the executors
# comes from what the application ships, and the master from SPARK_MASTER_URL set here.
_SCRUBBED = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "SPARK_HOME",
             "SPARK_MASTER_URL", "SPARK_CONF_DIR", "SPARK_SUBMIT", "SPARK_SUBMIT_ARGS", "SKYCLASS_CONF",
             "SKYCLASS_VENV_ARCHIVE", "EXECUTOR_CORES", "EXECUTOR_MEMORY", "TOTAL_CORES", "GPU", "DRY_RUN")
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def script_env(state_dir: Path | str | None = None, **extra: str) -> dict[str, str]:
    """The environment for deploy/ scripts: this process's, minus Spark/Python settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["SKYCLASS_VENV"] = sys.prefix  # the venv running the tests: its pyspark runs the daemons
    if state_dir is not None:
        env["SKYCLASS_CLUSTER_DIR"] = str(state_dir)
        # The drivers' scratch folders (deploy/submit-standalone.sh) stay inside the cluster's state dir.
        env["SKYCLASS_DRIVER_TMPDIR"] = str(Path(state_dir) / "driver-tmp")
    env.update(extra)
    return env


def run_cluster_script(action: str, state_dir: Path | str, env: dict[str, str] | None = None,
                       timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``deploy/local-cluster.sh ACTION`` for the cluster in ``state_dir``."""
    return subprocess.run(["bash", str(DEPLOY / "local-cluster.sh"), action], capture_output=True, text=True,
                          env=env if env is not None else script_env(state_dir), timeout=timeout)


def ensure_env_archive(timeout: float = 3600) -> str:
    """Build (or reuse) the executors' environment archive; returns its path."""
    done = subprocess.run(["bash", str(DEPLOY / "package-venv.sh"), "env"], capture_output=True, text=True,
                          env=script_env(), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"deploy/package-venv.sh env failed:\n{done.stdout}\n{done.stderr}")
    path = subprocess.run(["bash", str(DEPLOY / "package-venv.sh"), "env-path"], capture_output=True, text=True,
                          env=script_env(), timeout=60, check=True).stdout.strip()
    return path


class StandaloneCluster:
    """A cluster started by deploy/local-cluster.sh in ``state_dir``.

    Attributes
    ----------
    master_url : str
        ``spark://127.0.0.1:PORT``.
    state_dir : Path
        Pid files, logs, work dirs and ``master-url``.
    master_pid : int
    worker_pids : list of int
        The two worker JVMs, in worker order.
    worker_work_dirs : list of Path
        Each worker's ``--work-dir``: executors run (and unpack what an application ships) below it.
    start_output : str
        What ``start`` printed.
    """

    def __init__(self, state_dir: Path | str):
        self.state_dir = Path(state_dir).resolve()
        self.master_url = ""
        self.master_pid = 0
        self.worker_pids: list[int] = []
        self.worker_work_dirs: list[Path] = []
        self.start_output = ""
        self.start_seconds = 0.0

    @classmethod
    def start(cls, state_dir: Path | str, timeout: float = 300) -> "StandaloneCluster":
        """Start a cluster in ``state_dir`` and wait until both workers are ALIVE.

        Raises
        ------
        RuntimeError
            ``start`` failed; the message holds what it printed (it names the log to read).
        """
        cluster = cls(state_dir)
        t0 = time.monotonic()
        done = run_cluster_script("start", cluster.state_dir, timeout=timeout)
        cluster.start_seconds = time.monotonic() - t0
        cluster.start_output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"deploy/local-cluster.sh start failed ({done.returncode}):\n{cluster.start_output}")
        cluster._read_state()
        return cluster

    def _read_state(self) -> None:
        self.master_url = (self.state_dir / "master-url").read_text().strip()
        self.master_pid = int((self.state_dir / "master.pid").read_text())
        workers = sorted(self.state_dir.glob("worker-*.pid"), key=lambda p: int(p.stem.split("-")[1]))
        self.worker_pids = [int(p.read_text()) for p in workers]
        self.worker_work_dirs = [self.state_dir / p.stem / "work" for p in workers]

    def status(self) -> subprocess.CompletedProcess:
        """``deploy/local-cluster.sh status`` of this cluster."""
        return run_cluster_script("status", self.state_dir)

    def stop(self) -> subprocess.CompletedProcess:
        """Stop this cluster's JVMs (and wait for the executors their workers ran to go too)."""
        import psutil

        executors = []
        for pid in self.executor_pids():
            try:
                executors.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        daemons = []
        for pid in [self.master_pid, *self.worker_pids]:
            try:
                proc = psutil.Process(pid)
                if str(self.state_dir) in " ".join(proc.cmdline()):
                    daemons.append(proc)
            except psutil.Error:
                pass
        done = run_cluster_script("stop", self.state_dir)
        # Whatever the script left running (a broken stop, when a test checks that it fails) is ended here, so a
        # test run never leaves a JVM behind. A worker kills its executors when it stops. psutil.Process
        # remembers each start time, so a pid reused meanwhile is never touched.
        _, alive = psutil.wait_procs(daemons + executors, timeout=20)
        for proc in alive:
            proc.kill()
        return done

    def prune_finished_applications(self) -> None:
        """Delete what finished applications unpacked into the worker dirs (an environment is ~1.5 GB per executor);
        their stdout/stderr logs stay (``deploy/local-cluster.sh prune``)."""
        run_cluster_script("prune", self.state_dir)

    def driver_scratch_dirs(self) -> list[Path]:
        """The scratch folders of this cluster's drivers that exist now (deploy/submit-standalone.sh removes each
        when its submit ends, and those of killed drivers at the next submit)."""
        return sorted((self.state_dir / "driver-tmp").glob("skyclass-driver-*"))

    def executor_pids(self) -> list[int]:
        """Pids of the executor JVMs (CoarseGrainedExecutorBackend) that our workers launched, running now."""
        import psutil

        pids = []
        for worker in self.worker_pids:
            try:
                children = psutil.Process(worker).children()
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    if EXECUTOR_CLASS in child.cmdline():
                        pids.append(child.pid)
                except psutil.NoSuchProcess:
                    continue
        return sorted(pids)

    def submit(self, job: str, *args: str, env: dict[str, str] | None = None, conf: str | os.PathLike | None = None,
               timeout: float = 1800) -> subprocess.CompletedProcess:
        """Submit ``jobs/<job>.py`` with deploy/submit-standalone.sh and wait for it.

        Parameters
        ----------
        job : str
            A file of jobs/ without .py, e.g. ``"check_cluster"``.
        *args : str
            The job's own options.
        env : dict, optional
            Extra environment for the wrapper (e.g. ``{"TOTAL_CORES": "1"}``).
        conf : path-like, optional
            The skyclass config file (``SKYCLASS_CONF``; default conf/cluster.yaml, whose master is left to
            spark-submit).
        timeout : float
            Seconds before the submit is killed.

        Returns
        -------
        subprocess.CompletedProcess
            With ``stdout`` (what the job printed) and ``stderr`` (Spark's and the job's log) captured as text.
        """
        extra = {"SPARK_MASTER_URL": self.master_url, "DRIVER_PYTHON": sys.executable}
        if conf is not None:
            extra["SKYCLASS_CONF"] = str(conf)
        extra.update(env or {})
        try:
            return subprocess.run(["bash", str(DEPLOY / "submit-standalone.sh"), job, *args], capture_output=True,
                                  text=True, env=script_env(self.state_dir, **extra), timeout=timeout, cwd=ROOT)
        finally:
            self.prune_finished_applications()


@pytest.fixture(scope="session")
def standalone_cluster():
    """A standalone master and two 1-core workers on 127.0.0.1, for the whole test session; stopped at its end."""
    ensure_env_archive()
    # Not under pytest's basetemp: pytest deletes old basetemps, including those of other runs on the machine,
    # and a running cluster's pid files must not vanish.
    state_dir = Path(tempfile.mkdtemp(prefix="skyclass-cluster-"))
    cluster = StandaloneCluster.start(state_dir)
    try:
        yield cluster
    finally:
        cluster.stop()
        cluster.prune_finished_applications()
        shutil.rmtree(state_dir / "driver-tmp", ignore_errors=True)
        print(f"\nstandalone cluster stopped; its logs are in {state_dir}")
