"""Airflow DAG for the skyclass nightly chain: one task per stage, each a spark-submit through deploy/submit-*.sh.

Stages as separate tasks (rather than one ``run_nightly`` job) so Airflow retries the flaky network stages
(extraction and cutout downloads from SkyServer) on their own and shows where a night failed. Every stage is
idempotent, so a retry or a cleared task simply runs it again. The train task trains only when ``retrain`` is set
(e.g. a weekly run, or triggered by hand with ``{"retrain": true}``) or when no model package exists yet; scoring
writes the partition of the DAG run's logical date.

Copy this file into the Airflow DAGs folder of a host that can spark-submit and has the checkout at
``SKYCLASS_HOME`` (default /opt/skyclass). The test suite parses it with Apache Airflow (deploy/airflow-env.sh builds
Airflow's own environment; tests/test_airflow_dag.py reads the parsed DagBag) and runs it with
``airflow dags test`` against a standalone cluster and the SkyServer stand-in (tests/test_airflow_run.py).

Environment of the Airflow worker: SKYCLASS_HOME, SKYCLASS_SUBMIT (the wrapper), SKYCLASS_CONF, SKYCLASS_MODELS,
SPARK_MASTER_URL (standalone), SKYCLASS_TRAIN_GPU (the wrapper's GPU= for training: ``train``, or ``0`` on a
cluster without GPUs) and SKYCLASS_SKYSERVER_RETRIES (Airflow retries of the SkyServer-bound tasks, default 3).
Each job ends its output with one JSON summary line (skyclass.stage_summary), so a task's log can be grepped.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

SKYCLASS_HOME = os.environ.get("SKYCLASS_HOME", "/opt/skyclass")
# submit-yarn.sh, submit-k8s.sh, or submit-standalone.sh (with SPARK_MASTER_URL in the worker's environment).
WRAPPER = os.environ.get("SKYCLASS_SUBMIT", "submit-yarn.sh")
CONF = os.environ.get("SKYCLASS_CONF", f"{SKYCLASS_HOME}/conf/cluster.yaml")
# Model packages live on a file system every executor can read (see deploy/README.md).
MODELS_DIR = os.environ.get("SKYCLASS_MODELS", "/mnt/skyclass/models")
# Horovod on GPU executors by default (deploy/spark-gpu.conf); "0" trains on the CPU executors.
TRAIN_GPU = os.environ.get("SKYCLASS_TRAIN_GPU", "train")
# SkyServer outages are usually short: the network stages are retried by Airflow, 20 minutes apart. (The jobs
# already retry single requests; these retries are for an outage longer than that.)
SKYSERVER_RETRIES = int(os.environ.get("SKYCLASS_SKYSERVER_RETRIES", "3"))


def submit(job: str, *args: str, env: str = "") -> str:
    """The bash command that submits one job with the configured wrapper."""
    prefix = f"{env} " if env else ""
    return (f"cd {SKYCLASS_HOME} && SKYCLASS_CONF={CONF} {prefix}deploy/{WRAPPER} {job} "
            + " ".join(args))


default_args = {
    "owner": "skyclass",
    "retries": 1,
    "retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=6),
}

with DAG(
    dag_id="skyclass_nightly",
    description="SDSS GALAXY/STAR/QSO classification: extract, cutouts, training table, train, score, evaluate",
    schedule="30 2 * * *",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # nights write the same lake tables: never two at once
    default_args=default_args,
    params={"retrain": False},
    tags=["skyclass", "spark"],
) as dag:
    extract = BashOperator(task_id="extract", bash_command=submit("extract_catalog"),
                           retries=SKYSERVER_RETRIES, retry_delay=timedelta(minutes=20))
    extract_photometric = BashOperator(task_id="extract_photometric",
                                       bash_command=submit("extract_catalog", "--photometric"),
                                       retries=SKYSERVER_RETRIES, retry_delay=timedelta(minutes=20))
    cutouts = BashOperator(task_id="cutouts", bash_command=submit("download_cutouts", "--catalog", "catalog"),
                           retries=SKYSERVER_RETRIES, retry_delay=timedelta(minutes=20))
    cutouts_photometric = BashOperator(task_id="cutouts_photometric",
                                       bash_command=submit("download_cutouts", "--catalog", "photometric"),
                                       retries=SKYSERVER_RETRIES, retry_delay=timedelta(minutes=20))
    table = BashOperator(task_id="training_table", bash_command=submit("build_training_table"))
    # Train on GPU executors when asked to, or when there is no package yet (the first night).
    train = BashOperator(
        task_id="train_if_needed",
        bash_command=(
            "if [ '{{ params.retrain }}' = 'True' ] || ! ls " + MODELS_DIR + "/*/metadata.json >/dev/null 2>&1; "
            "then " + submit("train", env=f"GPU={TRAIN_GPU}") + "; "
            "else echo 'model package exists and retrain is false: not training'; fi"),
        retries=0,  # a failed multi-hour training run is for a human to look at
    )
    score = BashOperator(task_id="score", bash_command=submit("score_catalog", "--run-date", "{{ ds }}"))
    evaluate = BashOperator(task_id="evaluate", bash_command=submit("evaluate"))

    # The SkyServer-bound stages run one after another, never two at once: each job already spends the whole polite
    # rate (skyserver.max_queries_per_s, cutouts.max_requests_per_s), so two in parallel would send SkyServer twice
    # that, and two cutout downloads at once would race over the lake's hidden temp files and cutout_failures.
    # The order is run_nightly's: extract -> extract_photometric -> cutouts -> cutouts_photometric. A failure stops
    # the SkyServer stages after it for that night; clear the failed task once SkyServer answers again.
    extract >> extract_photometric >> cutouts >> cutouts_photometric
    # The training table needs only the labelled cutouts, so it (and training) runs beside the photometric
    # download, which talks to SkyServer alone: those cutouts are not in the labelled catalog, and chunk files are
    # committed whole (hidden name, then rename), so the table never reads half of one.
    cutouts >> table >> train
    [train, cutouts_photometric] >> score >> evaluate
