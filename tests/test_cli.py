"""The CLI and the spark-submit files start, parse their arguments and report bad input kindly.

Each command is also run for real, end to end, in tests/test_end_to_end.py.
"""
import importlib.util
import subprocess
import sys

import pytest

from skyclass import cli
from skyclass.config import REPO_ROOT

JOB_FILES = sorted((REPO_ROOT / "jobs").glob("*.py"))
COMMANDS = [*cli.COMMANDS, "standin"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"skyclass {command}" in out
    if command != "standin":
        assert "--conf" in out and "--set" in out


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.stem for p in JOB_FILES])
def test_every_job_file_runs_its_command(path, capsys):
    spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    command = capsys.readouterr().out.split("usage: skyclass ")[1].split()[0]
    assert command in cli.COMMANDS


def test_every_command_has_a_job_file():
    commands = set()
    for path in JOB_FILES:
        text = path.read_text()
        commands.add(text.split('job_entry("')[1].split('"')[0])
    assert commands == set(cli.COMMANDS) - {"demo"}


def test_bad_config_value_exits_2_naming_the_key(capsys):
    code = cli.main(["train", "--set", "train.epochs=-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.epochs must be > 0" in err and "local.yaml" in err


def test_flags_become_config_overrides():
    args = cli.build_parser().parse_args(["score", "--rescore", "--catalog", "catalog", "--run-date", "2026-01-02"])
    assert sorted(cli._overrides_from_flags(args)) == ["score.catalog=catalog", "score.rescore=true",
                                                       "score.run_date=2026-01-02"]


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "skyclass.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and "extract" in done.stdout and "score" in done.stdout


# --- every subcommand's main() runs once, in this process on the tests' Spark session, with tiny sizes ------------

def _sets(tmp_path, *extra):
    items = [f"lake.root={tmp_path / 'lake'}", f"lake.models={tmp_path / 'models'}",
             f"lake.predictions={tmp_path / 'predictions'}", f"lake.reports={tmp_path / 'reports'}",
             "spark.master=local[2]", "cutouts.tasks=2", "cutouts.concurrency_per_task=4", "cutouts.max_objects=null",
             "extract.tasks=2", "extract.page_rows=200", "skyserver.backoff_s=0.05", "score.catalog=catalog",
             "train.mode=tabular", "train.epochs=1", "train.batch_size=32", "train.warmup_epochs=0",
             "train.num_proc=2", "evaluate.baselines=[logistic_regression]", "evaluate.feature_sets=[photometric]",
             *extra]
    return [arg for item in items for arg in ("--set", item)]


def _main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"skyclass {argv[0]} exited {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    return out


def test_simulate_and_table_mains_write_the_lake(spark, tmp_path, capsys):
    import json

    out = _main(capsys, "simulate", "--objects", "120", "--seed", "5", *_sets(tmp_path))
    assert "SIMULATED" in out.upper()
    assert len(spark.read.parquet(str(tmp_path / "lake" / "catalog")).collect()) == 120
    out = _main(capsys, "table", *_sets(tmp_path))
    stats = json.loads((tmp_path / "lake" / "training" / "stats.json").read_text())
    assert 0 < sum(stats["rows"].values()) <= 120 and f"{stats['rows']['train']:,}" in out
    assert not spark.sparkContext._jsc.sc().isStopped()  # main() leaves a session it did not start running


def test_extract_and_cutouts_mains_fill_the_lake_from_the_standin(spark, standin_factory, tmp_path, capsys):
    from catalog_fixture import make_labelled, make_photometric

    server = standin_factory(catalogs=[make_labelled(150, seed=21), make_photometric(40, seed=22)])
    sets = _sets(tmp_path, f"skyserver.url={server.url}", "extract.box_ra_deg=[230.0, 231.5]",
                 "extract.box_dec_deg=[27.0, 28.5]", "extract.balance_ranges=false")
    out = _main(capsys, "extract", *sets)
    assert "150 rows written" in out
    out = _main(capsys, "extract", "--photometric", *sets)
    assert "40 rows written" in out
    _main(capsys, "cutouts", *sets)
    assert spark.read.parquet(str(tmp_path / "lake" / "cutouts")).count() == 150


def test_check_cluster_main_describes_the_local_executors(spark, tmp_path, capsys):
    import json

    out = _main(capsys, "check-cluster", "--tasks", "2", "--json", *_sets(tmp_path))
    description = json.loads(out)
    assert len(description["tasks"]) == 2


def test_standin_main_serves_until_interrupted(tmp_path):
    import os
    import signal
    import time
    import urllib.request

    from catalog_fixture import make_labelled, write_csv

    csv = write_csv(make_labelled(30, seed=23), tmp_path / "labelled.csv")
    process = subprocess.Popen([sys.executable, "-m", "skyclass.cli", "standin", "--catalog", csv, "--port", "0"],
                               stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "lib")})
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if "serving http://" in line:
                url = line.split("serving ", 1)[1].split()[0]
        assert url, "the stand-in never said where it serves"
        query = "SkyServerWS/SearchTools/SqlSearch?cmd=SELECT+TOP+3+objID+FROM+PhotoObj&format=csv"
        with urllib.request.urlopen(f"{url}/{query}", timeout=30) as answer:
            assert len(answer.read().decode().strip().splitlines()) >= 4  # a header and three rows
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_train_evaluate_score_run_and_demo_mains(spark, standin_factory, tmp_path, capsys):
    import pandas as pd

    from catalog_fixture import make_labelled, make_photometric, write_csv

    labelled, photometric = make_labelled(200, seed=24), make_photometric(40, seed=25)
    server = standin_factory(catalogs=[labelled, photometric])
    sets = _sets(tmp_path, f"skyserver.url={server.url}", "extract.box_ra_deg=[230.0, 231.5]",
                 "extract.box_dec_deg=[27.0, 28.5]", "extract.balance_ranges=false")
    _main(capsys, "extract", *sets)
    _main(capsys, "cutouts", *sets)
    _main(capsys, "table", *sets)
    out = _main(capsys, "train", "--mode", "tabular", *sets)
    packages = [p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]
    assert len(packages) == 1 and packages[0].name in out
    _main(capsys, "evaluate", *sets)
    assert list((tmp_path / "reports").rglob("report.md"))
    _main(capsys, "score", "--run-date", "2026-02-01", *sets)
    assert len(pd.read_parquet(tmp_path / "predictions" / "run_date=2026-02-01")) == 200
    out = _main(capsys, "run", *sets, "--set", "score.run_date=2026-02-02", "--set", "score.rescore=true")
    assert "train] (skipped)" in out and "[score]" in out and "[evaluate]" in out
    assert len(pd.read_parquet(tmp_path / "predictions" / "run_date=2026-02-02")) == 200

    catalogs = [write_csv(labelled, tmp_path / "labelled.csv"), write_csv(photometric, tmp_path / "field.csv")]
    demo = tmp_path / "demo"
    out = _main(capsys, "demo", *_sets(demo, f"standin.catalogs=[{catalogs[0]}, {catalogs[1]}]",
                                       "score.catalog=photometric", "extract.box_ra_deg=[230.0, 231.5]",
                                       "extract.box_dec_deg=[27.0, 28.5]"))
    assert "skyclass demo — summary" in out and "[train]" in out and "SIMULATED" in out
    rows = [line.split() for line in out.splitlines()
            if line.startswith("    ") and line.split()[0] in ("GALAXY", "STAR", "QSO")]
    assert sum(int(r[1].replace(",", "")) for r in rows if r[1] != "all") == 40  # the field's class counts
    assert sum(int(r[2].replace(",", "")) for r in rows if r[1] == "all") == 40  # all vs in domain, all column


def test_third_party_chatter_is_hidden_unless_verbose(monkeypatch):
    import logging
    import os

    from skyclass import logs

    def shown(record_path, level, verbose):
        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", [logging.StreamHandler()])  # a fresh root handler for this check
        monkeypatch.delenv("SKYCLASS_VERBOSE", raising=False)
        logs.configure_logging(verbose)
        record = logging.LogRecord("root", level, record_path, 109, "scope global has keys %s", (["x"],), None)
        return bool(root.handlers[0].filter(record))

    horovod_file = os.path.join(os.sep, "venv", "site-packages", "horovod", "runner", "http", "http_server.py")
    ours = os.path.join(os.sep, "repo", "lib", "skyclass", "train.py")
    try:
        assert not shown(horovod_file, logging.INFO, verbose=False)  # Horovod's rendezvous INFO: hidden
        assert shown(horovod_file, logging.WARNING, verbose=False)  # its warnings: shown
        assert shown(ours, logging.INFO, verbose=False)  # our INFO: shown
        assert shown(horovod_file, logging.INFO, verbose=True)  # --verbose: everything
        assert os.environ["SKYCLASS_VERBOSE"] == "1"
    finally:
        for name in logs.NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_keras_slow_callback_note_is_held_back_in_training_processes(monkeypatch):
    """What each Horovod process printed at its first steps ("Callback method `on_train_batch_end` is slow compared
    to the batch time ...", on the tensorflow logger) is dropped; TensorFlow's other warnings are not."""
    import logging

    from tensorflow.python.platform import tf_logging

    from skyclass import logs

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    tensorflow = logging.getLogger("tensorflow")
    tensorflow.removeFilter(logs._not_slow_callback_note)  # an earlier configure_logging may have added it
    handler = Keep()
    tensorflow.addHandler(handler)
    monkeypatch.delenv("SKYCLASS_VERBOSE", raising=False)
    try:
        note = ("Callback method `on_train_batch_end` is slow compared to the batch time (batch time: 0.0090s vs "
                "`on_train_batch_end` time: 0.0437s). Check your callbacks.")
        tf_logging.warning(note)
        assert seen == [note]  # before: it reaches the handlers
        logs.quiet_third_party_warnings()
        logs.quiet_third_party_warnings()  # twice, as the driver and a process may: one filter
        tf_logging.warning(note)
        tf_logging.warning("5 out of the last 5 calls triggered tf.function retracing")
        assert seen == [note, "5 out of the last 5 calls triggered tf.function retracing"]
        assert tensorflow.filters.count(logs._not_slow_callback_note) == 1
    finally:
        tensorflow.removeHandler(handler)
        tensorflow.removeFilter(logs._not_slow_callback_note)


def test_spark_size_notes_are_held_back_on_the_driver(spark):
    """build_spark holds DAGScheduler's "Broadcasting large task binary" notes (hundreds per MLlib evaluation) at
    ERROR, and netlib's native-BLAS notes; other Spark loggers keep their warnings. (The test session runs at ERROR: back to WARN for the check.)"""
    from skyclass.session import quiet_spark_warnings

    log_manager = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager
    try:
        spark.sparkContext.setLogLevel("WARN")
        quiet_spark_warnings(spark)
        assert str(log_manager.getLogger("org.apache.spark.scheduler.DAGScheduler").getLevel()) == "ERROR"
        # netlib's "Failed to load implementation" notes at the first MLlib fit (no native BLAS here)
        assert str(log_manager.getLogger("dev.ludovic.netlib.InstanceBuilder").getLevel()) == "ERROR"
        assert str(log_manager.getLogger("org.apache.spark.scheduler.TaskSetManager").getLevel()) == "WARN"
    finally:
        spark.sparkContext.setLogLevel("ERROR")
