"""What the tests that run skyclass on the standalone cluster share: the job settings for a small lake under a
``file://`` root, submitting through deploy/submit-standalone.sh (blocking or in the background), and reading
Spark's event logs to see where tasks ran and which were lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster_fixture import script_env

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "deploy" / "submit-standalone.sh"
CONF = ROOT / "conf" / "standalone.yaml"


def job_settings(tmp_path: Path, standin_url: str, **extra: str) -> list[str]:
    """``--set`` items: the lake under a file:// URI root, models and reports in local folders (every executor
    of this machine sees them, as it would a shared mount), small jobs for 2 one-core workers."""
    items = {
        "skyserver.url": standin_url, "skyserver.backoff_s": "0.05",
        "lake.root": (tmp_path / "lake").as_uri(), "lake.predictions": (tmp_path / "predictions").as_uri(),
        "lake.models": str(tmp_path / "models"), "lake.reports": str(tmp_path / "reports"),
        "extract.tasks": "2", "extract.page_rows": "250", "extract.box_ra_deg": "[230.0, 231.5]",
        "extract.box_dec_deg": "[27.0, 28.5]",
        "cutouts.max_objects": "null", "cutouts.tasks": "2", "cutouts.concurrency_per_task": "4",
        "train.epochs": "2", "train.batch_size": "32", "train.num_proc": "2",
        "evaluate.baselines": "[logistic_regression]", "evaluate.feature_sets": "[photometric]",
        **extra,
    }
    return [arg for key, value in items.items() for arg in ("--set", f"{key}={value}")]


def _job_env(events_dir: Path) -> dict:
    """What every submit of these tests adds to the fixture's environment: event logs to ``events_dir`` (where
    tasks ran, which were lost) and quiet logs."""
    events_dir.mkdir(parents=True, exist_ok=True)
    return {"SKYCLASS_LOG_LEVEL": "WARNING",
            "SPARK_SUBMIT_ARGS": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events_dir.as_uri()}"}


def submit(cluster, events_dir: Path, job: str, *args: str, timeout_s: float = 1200) -> str:
    """Run one job through deploy/submit-standalone.sh (the fixture's submit); its stdout, or AssertionError with
    both streams."""
    done = cluster.submit(job, *args, env=_job_env(events_dir), conf=CONF, timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(f"{job} {' '.join(args)} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                             f"\n--- stderr\n{done.stderr[-8000:]}")
    return done.stdout


def submit_in_background(cluster, events_dir: Path, job: str, *args: str, log_path: Path) -> subprocess.Popen:
    """Start a submit in its own process group (so the whole driver -- spark-submit's JVM and the Python driver
    -- can be killed at once, as a crashed gateway host would lose it)."""
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process by kill_driver / wait_ok
    env = script_env(cluster.state_dir, SPARK_MASTER_URL=cluster.master_url, DRIVER_PYTHON=sys.executable,
                     SKYCLASS_CONF=str(CONF), **_job_env(events_dir))
    return subprocess.Popen([str(SUBMIT), job, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            start_new_session=True)


def wait_ok(cluster, process: subprocess.Popen, log_path: Path, timeout_s: float = 900) -> None:
    code = process.wait(timeout=timeout_s)
    cluster.prune_finished_applications()
    if code != 0:
        raise AssertionError(f"the background submit exited {code}\n{log_path.read_text()[-8000:]}")


def kill_driver(process: subprocess.Popen) -> None:
    """SIGKILL the submit's whole process group and wait for it."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``condition()`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def events(events_dir: Path) -> list[list[dict]]:
    """The events of every application logged in ``events_dir`` (one list per application)."""
    apps = []
    for path in sorted(events_dir.iterdir()):
        if path.name.startswith(".") or path.suffix == ".inprogress" and not path.stat().st_size:
            continue
        with open(path, encoding="utf-8") as fh:
            apps.append([json.loads(line) for line in fh if line.strip()])
    return apps


def app_name(app_events: list[dict]) -> str:
    return next((e.get("App Name", "") for e in app_events if e["Event"] == "SparkListenerApplicationStart"), "")


def task_workers(app_events: list[dict]) -> dict[str, int]:
    """Tasks that ended successfully per worker, a worker named by the web-UI port in its executors' log URLs
    (all workers share the host 127.0.0.1 here)."""
    worker_of = {}
    for e in app_events:
        if e["Event"] == "SparkListenerExecutorAdded":
            url = e["Executor Info"].get("Log Urls", {}).get("stderr", "")
            worker_of[e["Executor ID"]] = url.split("//", 1)[-1].split("/", 1)[0]
    counts: dict[str, int] = {}
    for e in app_events:
        if e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "Success":
            worker = worker_of.get(e["Task Info"]["Executor ID"], "driver")
            counts[worker] = counts.get(worker, 0) + 1
    return counts


def lost_tasks(app_events: list[dict]) -> int:
    """Tasks that failed because their executor was lost (what killing an executor JVM causes)."""
    return sum(1 for e in app_events if e["Event"] == "SparkListenerTaskEnd"
               and e["Task End Reason"]["Reason"] == "ExecutorLostFailure")
