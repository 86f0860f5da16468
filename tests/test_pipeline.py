"""The nightly chain's orchestration, the deploy/ wrappers in their DRY_RUN mode, and the schedules (crontab, Airflow
DAG) driving those wrappers in DRY_RUN mode. The schedules against a real cluster: tests/test_crontab.py and
tests/test_airflow_run.py."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skyclass import pipeline
from skyclass.errors import SkyclassError
from skyclass.pipeline import PipelineError, run_nightly, stage_function

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py"))

# --------------------------------------------------------------------------------------------------------------
# Orchestration, with stage functions from a small module written here (the real stages need SkyServer, Horovod
# and minutes; their own tests cover them, and test_nightly_end_to_end below runs them all).

FAKE_STAGES = textwrap.dedent('''
    from skyclass.errors import SkyclassError

    CALLS = []
    FAIL = set()


    class Result:
        def __init__(self, name, path=None):
            self.name, self.path = name, path

        def __str__(self):
            return f"{self.name} summary"


    def _stage(name):
        def run(spark, conf):
            CALLS.append((name, conf))
            if name in FAIL:
                raise SkyclassError(f"{name} broke: do something about it")
            return Result(name, path=conf.lake.path("models") + "/trained-v1" if name == "train" else None)
        return run


    extract_catalog = _stage("extract")
    extract_photometric = _stage("extract_photometric")
    download_cutouts = _stage("cutouts")
    build_training_table = _stage("training_table")
    train_model = _stage("train")
    score_catalog = _stage("score")
    evaluate = _stage("evaluate")
''')


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    (tmp_path / "fake_stages_mod.py").write_text(FAKE_STAGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_stages_mod", None)
    stages = {name: ("fake_stages_mod", function) for name, (_, function) in pipeline.STAGE_FUNCTIONS.items()}
    monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", stages)
    import fake_stages_mod

    yield fake_stages_mod
    sys.modules.pop("fake_stages_mod", None)


def _write_package(models_dir: Path, version: str) -> str:
    path = models_dir / version
    path.mkdir(parents=True)
    for name in ("model.keras", "tabular.keras", "metadata.json"):
        (path / name).write_text("{}")
    return str(path)


def test_first_night_trains_and_scores_with_the_new_package(fake_stages, conf_for):
    conf = conf_for()
    result = run_nightly(None, conf)
    names = [name for name, _ in fake_stages.CALLS]
    assert names == ["extract", "cutouts", "cutouts", "training_table", "train", "score", "evaluate"]
    # Cutouts for the training catalog and for the catalog being scored.
    assert [c.cutouts.catalog for n, c in fake_stages.CALLS if n == "cutouts"] == ["catalog", "photometric"]
    trained = os.path.join(conf.lake.path("models"), "trained-v1")
    assert fake_stages.CALLS[5][1].score.model == trained
    assert fake_stages.CALLS[6][1].evaluate.model == trained
    assert result.trained and result.model_path == trained
    assert result.stage("extract_photometric").skipped
    assert "[train]" in str(result) and "train summary" in str(result)


def test_existing_package_is_used_without_training(fake_stages, conf_for):
    conf = conf_for(extract={"box_ra_deg": [230.1, 231.1], "box_dec_deg": [27.2, 28.2]},
                    score={"catalog": "catalog"})
    _write_package(Path(conf.lake.path("models")), "20240101-000000")
    newest = _write_package(Path(conf.lake.path("models")), "20240201-000000")
    result = run_nightly(None, conf)
    names = [name for name, _ in fake_stages.CALLS]
    assert names == ["extract", "extract_photometric", "cutouts", "training_table", "score", "evaluate"]
    assert result.stage("train").skipped and not result.trained
    assert fake_stages.CALLS[4][1].score.model == newest


def test_retrain_trains_even_with_a_package(fake_stages, conf_for):
    conf = conf_for()
    _write_package(Path(conf.lake.path("models")), "old")
    result = run_nightly(None, conf, retrain=True)
    assert "train" in [name for name, _ in fake_stages.CALLS]
    assert result.model_path.endswith("trained-v1")


def test_a_failing_stage_stops_the_chain_and_is_named(fake_stages, conf_for):
    fake_stages.FAIL.add("training_table")
    with pytest.raises(PipelineError, match="stage 'training_table'.*training_table broke") as caught:
        run_nightly(None, conf_for())
    assert [name for name, _ in fake_stages.CALLS][-1] == "training_table"
    assert [s.name for s in caught.value.stages] == ["extract", "extract_photometric", "cutouts (catalog)",
                                                     "cutouts (photometric)"]
    assert isinstance(caught.value, SkyclassError)


def test_missing_stage_module_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "cutouts", ("skyclass.no_such_stage", "download_cutouts"))
    with pytest.raises(PipelineError, match=r"stage 'cutouts' runs skyclass\.no_such_stage\.download_cutouts, "
                                            r"but skyclass\.no_such_stage is not installed"):
        stage_function("cutouts")


def test_stage_module_with_a_missing_dependency_names_it(tmp_path, monkeypatch):
    (tmp_path / "stage_needing_dep.py").write_text("import skyclass_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "train", ("stage_needing_dep", "train_model"))
    with pytest.raises(PipelineError, match="needs 'skyclass_missing_dependency_xyz'"):
        stage_function("train")


def test_stage_module_without_the_function(monkeypatch):
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "score", ("skyclass.lake", "score_catalog"))
    with pytest.raises(PipelineError, match="has no function score_catalog"):
        stage_function("score")


def test_real_stage_table_points_at_existing_functions():
    """Every stage the chain runs is importable from this checkout (modules that are not written yet show here)."""
    for stage in pipeline.STAGE_FUNCTIONS:
        assert callable(stage_function(stage)), stage


# --------------------------------------------------------------------------------------------------------------
# The real chain, in this process's Spark, on a lake and predictions named by file:/// URIs (what a cluster config
# looks like: every stage must reach its files through the URI, never through a plain local path).

@pytest.mark.slow
def test_nightly_end_to_end_on_a_file_uri_lake(spark, standin_factory, tmp_path, monkeypatch):
    import pandas as pd

    from catalog_fixture import make_labelled, make_photometric
    from skyclass.config import load_config

    labelled, photometric = make_labelled(500, seed=21), make_photometric(150, seed=22)
    server = standin_factory(catalogs=[labelled, photometric])
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a stage writing to a mangled "file:" path would land here
    lake_uri, predictions_uri = f"file://{tmp_path}/lake", f"file://{tmp_path}/predictions"
    conf = load_config(None, [
        f"lake.root={lake_uri}", f"lake.predictions={predictions_uri}", f"lake.models={tmp_path / 'models'}",
        f"lake.reports={tmp_path / 'reports'}", f"skyserver.url={server.url}", "skyserver.backoff_s=0.05",
        "skyserver.max_queries_per_s=500", "extract.tasks=2", "extract.page_rows=200",
        "extract.box_ra_deg=[230.0, 231.5]", "extract.box_dec_deg=[27.0, 28.5]", "extract.run_date=2026-02-01",
        "cutouts.max_requests_per_s=500", "cutouts.concurrency_per_task=8",
        "train.epochs=1", "train.batch_size=32", "train.num_proc=2", "train.version=uri-lake-1",
        "evaluate.baselines=[logistic_regression]", "evaluate.feature_sets=[photometric]",
        "score.run_date=2026-02-01"])
    assert conf.lake.path("root") == lake_uri  # URIs are kept as given

    first = run_nightly(spark, conf)
    assert first.trained and [s.name for s in first.stages if s.skipped] == []
    lake = tmp_path / "lake"
    catalog = pd.read_parquet(lake / "catalog")
    assert len(catalog) == 500 and catalog.objid.is_unique
    cutouts = pd.concat([pd.read_parquet(p) for p in sorted((lake / "cutouts").glob("part-*.parquet"))])
    assert cutouts.objid.is_unique and set(cutouts.objid) == set(labelled.objid) | set(photometric.objid)
    stats = json.loads((lake / "training" / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 500 - (catalog.quality != "ok").sum()
    night = pd.read_parquet(tmp_path / "predictions" / "run_date=2026-02-01")
    assert len(night) == 150 and set(night.objid) == set(photometric.objid)
    assert not (lake / "_locks" / "cutouts.lock").exists()
    assert not list(lake.glob("*.ranges"))  # finished extractions leave no staging

    # The next night's incremental stages (the whole chain again would mostly repeat the evaluation): nothing is
    # fetched twice, nothing scored twice by the same package.
    from skyclass.cutouts import download_cutouts
    from skyclass.score import score_catalog

    server.reset_stats()
    refetch = download_cutouts(spark, conf.replace(cutouts=dataclasses.replace(conf.cutouts, catalog="photometric")))
    assert (refetch.requested, refetch.skipped_present) == (0, 150)
    assert server.stats().get("getjpeg", {}).get("requests", 0) == 0
    second = score_catalog(spark, conf.replace(score=dataclasses.replace(conf.score, run_date="2026-02-02",
                                                                         model=first.model_path)))
    assert second.n_scored == 0 and second.n_skipped == 150
    assert list(work.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# deploy/ wrappers: DRY_RUN=1 prints the spark-submit command they would run.

def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("GPU", "SPARK_MASTER_URL", "SKYCLASS_CONF", "SPARK_SUBMIT", "SPARK_SUBMIT_ARGS",
                                "SKYCLASS_VENV_ARCHIVE", "EXECUTOR_CORES")}
    environment.update(env)
    return subprocess.run(["bash", str(DEPLOY / script), *args], capture_output=True, text=True, env=environment,
                          timeout=60)


def _dry_run(script: str, *args: str, **env: str) -> list[str]:
    done = _run(script, *args, DRY_RUN="1", **env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return shlex.split(lines[0])


def _confs(argv: list[str]) -> dict[str, str]:
    """--conf key=value pairs; a later one wins, as in spark-submit."""
    out = {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "--conf":
            key, _, val = value.partition("=")
            out[key] = val
    return out


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


WRAPPERS = ["submit-yarn.sh", "submit-standalone.sh", "submit-k8s.sh"]


@pytest.mark.parametrize("script", WRAPPERS + ["package-venv.sh"])
def test_help(script):
    done = _run(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: deploy/" + script in done.stdout and "DRY_RUN=1" in done.stdout


@pytest.mark.parametrize("job", JOBS)
def test_yarn_dry_run_submits_every_job(job):
    argv = _dry_run("submit-yarn.sh", job, "--set", "score.rescore=true")
    assert argv[0] == "spark-submit"
    assert _option(argv, "--master") == "yarn" and _option(argv, "--deploy-mode") == "cluster"
    archive = _option(argv, "--archives")
    assert re.search(r"dist/skyclass-env-[0-9a-f]{12}\.tar\.gz#environment$", archive), archive
    assert re.search(r"dist/skyclass-code-.*\.zip$", _option(argv, "--py-files"))
    confs = _confs(argv)
    assert confs["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
    assert confs["spark.pyspark.python"] == "./environment/bin/python"
    assert Path(_option(argv, "--files")) == ROOT / "conf" / "cluster.yaml"
    app = argv.index(str(ROOT / "jobs" / f"{job}.py"))
    # The driver finds the config shipped by --files in its working directory.
    assert argv[app + 1:] == ["--conf", "cluster.yaml", "--set", "score.rescore=true"]
    assert "spark.executor.resource.gpu.amount" not in confs


def test_gpu_settings_come_from_spark_gpu_conf(tmp_path):
    # What Spark needs to schedule one Horovod process per GPU, written out here (not read from the file).
    confs = _confs(_dry_run("submit-yarn.sh", "train", GPU="1"))
    assert confs["spark.executor.resource.gpu.amount"] == "1" and confs["spark.task.resource.gpu.amount"] == "1"
    assert confs["spark.executor.resource.gpu.discoveryScript"] == "/opt/skyclass/deploy/get-gpus.sh"
    assert (DEPLOY / "get-gpus.sh").is_file()  # the script the image installs at that path
    assert confs["spark.executorEnv.TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    # One Horovod process per GPU: a task takes a whole GPU and all of the executor's cores.
    assert confs["spark.task.cpus"] == confs["spark.executor.cores"] == "8"
    # And they come from deploy/spark-gpu.conf: a copy of the checkout with other values there submits those.
    for part in ("deploy", "jobs", "lib", "conf"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    (tmp_path / "deploy" / "spark-gpu.conf").write_text(
        "# other hardware\nspark.executor.resource.gpu.amount 2\nspark.task.resource.gpu.amount=2\n"
        "spark.executor.resource.gpu.discoveryScript   /srv/gpus.sh  # trailing comment\n"
        "spark.executor.cores 6\nspark.executorEnv.SKYCLASS_TEST_MARK  yes\n")
    done = subprocess.run(["bash", str(tmp_path / "deploy" / "submit-yarn.sh"), "train"], capture_output=True,
                          text=True, env={**os.environ, "DRY_RUN": "1", "GPU": "1"}, timeout=60)
    assert done.returncode == 0, done.stderr
    other = _confs(shlex.split(done.stdout.strip().splitlines()[-1]))
    assert other["spark.executor.resource.gpu.amount"] == "2" and other["spark.task.resource.gpu.amount"] == "2"
    assert other["spark.executor.resource.gpu.discoveryScript"] == "/srv/gpus.sh"
    assert other["spark.executorEnv.SKYCLASS_TEST_MARK"] == "yes"
    assert other["spark.task.cpus"] == other["spark.executor.cores"] == "6"
    assert "spark.executorEnv.TF_FORCE_GPU_ALLOW_GROWTH" not in other


def test_gpu_scoring_shares_each_gpu_among_the_cores():
    confs = _confs(_dry_run("submit-yarn.sh", "score_catalog", GPU="score", EXECUTOR_CORES="4"))
    assert confs["spark.executor.cores"] == "4" and confs["spark.task.cpus"] == "1"
    assert float(confs["spark.task.resource.gpu.amount"]) == pytest.approx(0.25)


def test_standalone_dry_run():
    argv = _dry_run("submit-standalone.sh", "run_nightly", "--retrain", SPARK_MASTER_URL="spark://master:7077")
    assert _option(argv, "--master") == "spark://master:7077" and _option(argv, "--deploy-mode") == "client"
    confs = _confs(argv)
    assert confs["spark.pyspark.python"] == "./environment/bin/python"
    assert confs["spark.pyspark.driver.python"] == str(ROOT / ".venv" / "bin" / "python")
    app = argv.index(str(ROOT / "jobs" / "run_nightly.py"))
    assert argv[app + 1:] == ["--conf", str(ROOT / "conf" / "cluster.yaml"), "--retrain"]


def test_standalone_needs_a_master_url():
    done = _run("submit-standalone.sh", "score_catalog", DRY_RUN="1")
    assert done.returncode == 2 and "SPARK_MASTER_URL" in done.stderr


def test_k8s_dry_run_runs_the_job_from_the_image():
    argv = _dry_run("submit-k8s.sh", "train", GPU="1", SKYCLASS_IMAGE="registry.example/skyclass:1")
    assert _option(argv, "--master").startswith("k8s://") and _option(argv, "--deploy-mode") == "cluster"
    confs = _confs(argv)
    assert confs["spark.kubernetes.container.image"] == "registry.example/skyclass:1"
    assert confs["spark.executor.resource.gpu.vendor"] == "nvidia.com"
    app = argv.index("local:///opt/skyclass/jobs/train.py")
    assert argv[app + 1:] == ["--conf", "/opt/skyclass/conf/cluster.yaml"]
    assert "--archives" not in argv  # everything is in the image


def test_extra_spark_submit_args_are_passed_through():
    argv = _dry_run("submit-yarn.sh", "evaluate", SPARK_SUBMIT_ARGS="--conf spark.x=1 --num-executors 3")
    assert _confs(argv)["spark.x"] == "1" and _option(argv, "--num-executors") == "3"
    assert argv.index("--num-executors") < argv.index(str(ROOT / "jobs" / "evaluate.py"))


def test_unknown_job_and_bad_gpu_value_are_refused():
    done = _run("submit-yarn.sh", "train_everything", DRY_RUN="1")
    assert done.returncode == 2 and "unknown job 'train_everything'" in done.stderr and "score_catalog" in done.stderr
    done = _run("submit-yarn.sh", "train", DRY_RUN="1", GPU="lots")
    assert done.returncode == 2 and "GPU must be" in done.stderr
    done = _run("submit-yarn.sh")
    assert done.returncode == 2 and "usage:" in done.stderr


def test_without_dry_run_a_missing_spark_submit_is_reported():
    done = _run("submit-yarn.sh", "score_catalog", SPARK_SUBMIT="/nonexistent/spark-submit",
                SKYCLASS_VENV_ARCHIVE="hdfs:///apps/skyclass-venv.tar.gz")
    assert done.returncode == 127 and "spark-submit not found" in done.stderr


def test_without_dry_run_a_missing_venv_archive_is_reported(tmp_path):
    done = _run("submit-yarn.sh", "score_catalog", SKYCLASS_VENV_ARCHIVE=str(tmp_path / "none.tar.gz"))
    assert done.returncode == 2 and "deploy/package-venv.sh" in done.stderr


def test_package_venv_dry_run_builds_horovod_with_gloo_and_packs(tmp_path):
    out = tmp_path / "venv.tar.gz"
    done = _run("package-venv.sh", DRY_RUN="1", OUT=str(out), BUILD_DIR=str(tmp_path / "build"))
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.strip().splitlines()]
    horovod = next(c for c in commands if "horovod[spark]==0.28.1" in c)
    assert "HOROVOD_WITH_GLOO=1" in horovod and "HOROVOD_WITH_TENSORFLOW=1" in horovod
    assert "--no-build-isolation" in horovod
    # The compiled Horovod wheel is kept in a cache keyed by the requirements hash, so never --no-cache-dir.
    assert "--wheel-dir" in horovod and "--no-cache-dir" not in horovod
    pack = next(c for c in commands if c[0].endswith("venv-pack"))
    # Packed under a temporary name and renamed when complete, so an interrupted build is never reused.
    assert commands[-1] == ["mv", "-f", pack[pack.index("--output") + 1], str(out)]
    # skyclass itself is shipped per submit (--py-files), never installed into the environment.
    assert not any(arg == str(ROOT) or arg.startswith(str(ROOT / "lib")) for c in commands for arg in c)
    assert not out.exists() and not (tmp_path / "build").exists()  # a dry run writes nothing


# --------------------------------------------------------------------------------------------------------------
# Schedules, in their wrappers' DRY_RUN mode: the crontab's lines run as cron would (tests/cron.py), the DAG's
# commands as Airflow renders them. Running them for real against the standalone cluster is tests/test_crontab.py and
# tests/test_airflow_run.py.

def _days(field: str) -> set[int]:
    days = set()
    for part in field.split(","):
        low, _, high = part.partition("-")
        days |= set(range(int(low), int(high or low) + 1))
    return days


def test_crontab_lines_call_existing_wrappers_and_jobs(tmp_path):
    from cron import CRONTAB, read_crontab, run_entry

    variables, entries = read_crontab(CRONTAB.read_text())
    assert len(entries) == 2
    # Monday to Saturday incremental, Sunday retrain: every day once, at 02:30.
    weekdays, sunday = entries
    assert {e.schedule[:4] for e in entries} == {("30", "2", "*", "*")}
    assert _days(weekdays.schedule[4]) == set(range(1, 7)) and _days(sunday.schedule[4]) == {0}
    logs = tmp_path / "logs"
    logs.mkdir()
    python_dir = os.path.dirname(shutil.which("python3.11") or sys.executable)
    # What an operator adjusts (the variables), plus DRY_RUN so the wrapper prints its spark-submit command.
    variables.update(SKYCLASS_HOME=str(ROOT), SKYCLASS_LOGS=str(logs), SKYCLASS_LOCK=str(tmp_path / "lock"),
                     PATH=f"{python_dir}:{variables['PATH']}", DRY_RUN="1")
    for entry, extra in ((weekdays, []), (sunday, ["--retrain"])):
        done = run_entry(entry, variables, tmp_path)
        assert done.returncode == 0 and done.stdout == done.stderr == "", done
        [log] = list(logs.iterdir())  # nightly-YYYY-MM-DD.log: `date +%F` got its % back from cron
        assert re.fullmatch(r"nightly-\d{4}-\d{2}-\d{2}\.log", log.name), log.name
        argv = shlex.split(log.read_text().strip().splitlines()[-1])
        log.unlink()
        assert argv[0] == "spark-submit" and _option(argv, "--master") == "yarn"
        app = argv.index(str(ROOT / "jobs" / "run_nightly.py"))
        assert argv[app + 1:] == ["--conf", "cluster.yaml", *extra]
        assert Path(_option(argv, "--files")) == ROOT / "conf" / "cluster.yaml"  # the checkout's, by default
        gpus = _confs(argv).get("spark.executor.resource.gpu.amount")
        assert gpus == ("1" if extra else None)  # Sunday's training on GPU executors


@pytest.mark.slow  # the first run installs Airflow (deploy/airflow-env.sh, about a minute; cached after)
def test_airflow_dag_compiles_and_submits_existing_jobs(tmp_path):
    """Airflow parses the DAG (its own environment) and renders every task's command; each command, run in the
    wrapper's DRY_RUN mode, submits an existing job with the run's logical date where it needs one."""
    from airflow_env import DAG_ID, AirflowHome, ensure_airflow

    home = AirflowHome(tmp_path / "airflow", ensure_airflow())
    env = home.env(SKYCLASS_HOME=str(ROOT), SKYCLASS_SUBMIT="submit-yarn.sh", SKYCLASS_CONF=str(ROOT / "conf" /
                   "cluster.yaml"), SKYCLASS_MODELS=str(tmp_path / "models"))
    bag = home.dagbag(env)
    assert bag["import_errors"] == {}
    tasks = bag["dags"][DAG_ID]["tasks"]
    submitted = {}
    for with_models in (False, True):
        if with_models:
            _write_package(tmp_path / "models", "20260101-000000")
        for name, task in tasks.items():
            for ds, command in task["rendered"].items():
                done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                                      env={**os.environ, "DRY_RUN": "1"})
                assert done.returncode == 0, (name, command, done.stderr)
                lines = done.stdout.strip().splitlines()
                if name == "train_if_needed" and with_models and ds == "2026-03-04":
                    assert lines == ["model package exists and retrain is false: not training"]
                    continue
                argv = shlex.split(lines[-1])
                job = next(Path(a).stem for a in argv if a.startswith(str(ROOT / "jobs")))
                assert (ROOT / "jobs" / f"{job}.py").is_file()
                args = argv[argv.index(str(ROOT / "jobs" / f"{job}.py")) + 3:]
                submitted[(name, ds, with_models)] = (job, args, _confs(argv))
    jobs = {job for job, _, _ in submitted.values()}
    assert jobs == {"extract_catalog", "download_cutouts", "build_training_table", "train", "score_catalog",
                    "evaluate"}
    for ds in ("2026-03-04", "2026-03-05"):
        assert submitted[("score", ds, True)][1] == ["--run-date", ds]  # the night's partition is the run's date
        assert submitted[("extract_photometric", ds, True)][1] == ["--photometric"]
    # No package yet, or params.retrain: train on GPU executors; otherwise train is not submitted.
    for key in (("train_if_needed", "2026-03-04", False), ("train_if_needed", "2026-03-05", True)):
        assert submitted[key][0] == "train" and submitted[key][2]["spark.executor.resource.gpu.amount"] == "1"
    assert ("train_if_needed", "2026-03-04", True) not in submitted
