"""What the tests that run the schedules (tests/test_airflow_run.py, tests/test_crontab.py) share: the config file
their jobs read, the jobs' JSON summary lines in a log, and pruning the cluster's finished applications meanwhile."""
from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import yaml

from cluster_jobs import CONF, job_settings

# How a summary line starts (skyclass.stage_summary); in a log it follows the logger's prefix.
START = '{"skyclass_summary"'


def write_conf(path: Path, tmp_path: Path, standin_url: str, **extra: str) -> Path:
    """conf/standalone.yaml with the small-lake settings of the cluster tests (cluster_jobs.job_settings), one
    epoch, and ``extra`` (``{"section.key": "value"}``): scheduled jobs get their config from SKYCLASS_CONF only."""
    conf = yaml.safe_load(CONF.read_text())
    sets = job_settings(tmp_path, standin_url, **{"train.epochs": "1", "train.early_stopping_patience": "1",
                                                  "train.reduce_lr_patience": "null", **extra})
    for item in sets[1::2]:
        key, _, value = item.partition("=")
        section, name = key.split(".")
        conf.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(conf))
    return path


def summaries(text: str) -> list[dict]:
    """The JSON summary lines (skyclass.stage_summary) in a log, in order."""
    return [json.loads(line[line.index(START):]) for line in text.splitlines() if START in line]


@contextmanager
def pruning(cluster, every_s: float = 10.0):
    """Prune finished applications' unpacked environments (about 1.5 GB per executor) every ``every_s`` while a
    schedule submits one job after another: the fixture's own submit prunes after each job, a scheduler does not.
    (deploy/local-cluster.sh prune spares running executors' folders.)"""
    stop = threading.Event()

    def loop():
        while not stop.wait(every_s):
            cluster.prune_finished_applications()

    thread = threading.Thread(target=loop, name="prune", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        cluster.prune_finished_applications()
