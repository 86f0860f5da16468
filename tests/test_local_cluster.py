"""The local standalone cluster (deploy/local-cluster.sh), the shipping of code and environment
(deploy/package-venv.sh, deploy/submit-standalone.sh) and check-cluster, which proves what executors import.

Tests that start a cluster are marked slow; each stops exactly the JVMs it started.
"""
from __future__ import annotations

import doctest
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster_fixture import (DEPLOY, ROOT, StandaloneCluster, run_cluster_script, script_env,
                             standalone_cluster)  # noqa: F401
from skyclass import cluster_check
from skyclass.cluster_check import ClusterCheckError, ClusterDescription, TaskReport


def _pins() -> dict[str, str]:
    """Pinned versions from requirements.txt (what the executors' environment must hold)."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def _json_from(stdout: str):
    """The JSON document a job printed. Under spark-submit the driver's logging shares stdout with it (Spark's
    PythonRunner merges the Python driver's stderr into its stdout), so the document is cut out by its braces."""
    lines = stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):len(lines) - lines[::-1].index("}")]))


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by init counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def refused_start():
    """``refused_start(**env)``: run ``start`` in a fresh state dir, expecting a refusal; whatever it did start
    anyway (when the refusal is broken) is stopped at the end of the test. The state dir is not under pytest's
    basetemp, which a concurrent pytest run may delete."""
    state = Path(tempfile.mkdtemp(prefix="skyclass-cluster-")) / "state"

    def start(**env):
        done = run_cluster_script("start", state, env=script_env(state, **env), timeout=120)
        return state, done

    yield start
    run_cluster_script("stop", state)
    shutil.rmtree(state.parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# local-cluster.sh: refusals that need no cluster


def test_missing_java_is_reported_and_nothing_starts(tmp_path, refused_start):
    # A PATH with every tool of this machine except java.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = os.path.join(folder, name)
            if name != "java" and not (bin_dir / name).exists() and os.access(target, os.X_OK):
                (bin_dir / name).symlink_to(target)
    os.environ.get("JAVA_HOME") and pytest.skip("JAVA_HOME is set: the test hides java through PATH only")
    state, done = refused_start(PATH=str(bin_dir))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "java not found" in done.stderr and "Java 17" in done.stderr
    assert not list(state.glob("*.pid"))


def test_a_taken_port_is_reported_and_nothing_starts(refused_start):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        state, done = refused_start(SKYCLASS_MASTER_PORT=str(port))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1" in done.stderr and "SKYCLASS_MASTER_PORT" in done.stderr
    assert "already in use" in done.stderr
    assert not list(state.glob("*.pid"))


def test_status_of_no_cluster_is_non_zero(tmp_path):
    done = run_cluster_script("status", tmp_path / "none")
    assert done.returncode != 0
    assert "master: not started" in done.stdout


def test_prune_drops_what_finished_applications_unpacked_and_spares_a_running_executor(tmp_path):
    apps = tmp_path / "worker-1" / "work" / "app-20260101000000-0000"
    finished, running = apps / "0", apps / "1"
    for executor in (finished, running):
        (executor / "environment" / "bin").mkdir(parents=True)
        (executor / "skyclass-code-x.zip").write_bytes(b"zip")
        (executor / "stderr").write_text("Running task 0.0\n")
    # A process working in an executor's folder stands for a running executor JVM.
    executor_jvm = subprocess.Popen(["sleep", "60"], cwd=running)
    try:
        done = run_cluster_script("prune", tmp_path)
    finally:
        executor_jvm.kill()
        executor_jvm.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in finished.iterdir()) == ["stderr"]
    assert sorted(p.name for p in running.iterdir()) == ["environment", "skyclass-code-x.zip", "stderr"]


def test_stop_never_kills_a_process_that_merely_has_our_pid(tmp_path):
    # Pid files left by a cluster that died, whose pids now belong to unrelated processes.
    state = tmp_path / "state"
    state.mkdir()
    strangers = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    try:
        for name, proc in zip(["master", "worker-1", "worker-2"], strangers):
            (state / f"{name}.pid").write_text(f"{proc.pid}\n")
        status = run_cluster_script("status", state)
        assert status.returncode != 0 and status.stdout.count(" dead ") == 3, status.stdout
        done = run_cluster_script("stop", state)
        assert done.returncode == 0, done.stderr
        assert "not running as our" in done.stdout
        time.sleep(0.5)
        assert all(proc.poll() is None for proc in strangers)
        assert not list(state.glob("*.pid"))
    finally:
        for proc in strangers:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------------------------
# check-cluster's library on local Spark (the driver is its only executor there)


def test_describe_executors_on_local_spark(spark):
    description = cluster_check.describe_executors(spark, tasks=3)
    assert [t.task for t in description.tasks] == [0, 1, 2]
    assert description.executor_ids == ["driver"]
    import skyclass

    for task in description.tasks:
        assert task.skyclass_file == os.path.abspath(skyclass.__file__)
        assert task.executor_pid is None and task.python_pid != os.getpid()
        assert task.versions["numpy"] == _pins()["numpy"] and task.versions["pyarrow"] == _pins()["pyarrow"]
    failures, _ = doctest.testmod(cluster_check, extraglobs={"spark": spark}, report=True)
    assert failures == 0


def test_waiting_for_executors_that_never_come_times_out_on_the_injected_clock(spark):
    now = [0.0]
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        now[0] += seconds

    with pytest.raises(ClusterCheckError, match="only 0 of 2 executors registered within 5 s"):
        cluster_check.describe_executors(spark, tasks=1, min_executors=2, timeout_s=5,
                                         clock=lambda: now[0], sleep=sleep)
    assert len(naps) == 10
    with pytest.raises(ClusterCheckError, match="at least 1"):
        cluster_check.describe_executors(spark, tasks=0)


def test_the_table_shows_every_task():
    tasks = [TaskReport(task=i, executor_id=str(i % 2), host="127.0.0.1", executor_pid=100 + i, python_pid=200 + i,
                        worker_url=f"spark://Worker@127.0.0.1:{9000 + i % 2}", python="/w/env/bin/python",
                        skyclass_file=f"/w/{i}/code.zip/skyclass/__init__.py", cwd=f"/w/{i}",
                        versions={"numpy": "1.26.4", "horovod": None})
             for i in range(3)]
    text = str(ClusterDescription(master="spark://127.0.0.1:7077", tasks=tasks))
    lines = text.splitlines()
    assert lines[0] == "master spark://127.0.0.1:7077: 3 tasks on 2 executor(s) (0, 1)"
    assert "skyclass" in lines[1] and "executor" in lines[1]
    for i in range(3):
        assert f"/w/{i}/code.zip/skyclass/__init__.py" in text and str(200 + i) in text
    assert "horovod MISSING" in text and "numpy 1.26.4" in text
    data = json.loads(ClusterDescription(master="m", tasks=tasks).to_json())
    assert [t["executor_pid"] for t in data["tasks"]] == [100, 101, 102]


# ---------------------------------------------------------------------------------------------------------------
# submit-standalone.sh and package-venv.sh in DRY_RUN mode


def _dry_run(script, *args, **env):
    done = subprocess.run(["bash", str(DEPLOY / script), *args], capture_output=True, text=True,
                          env=script_env(None, DRY_RUN="1", **env), timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def _option(argv, flag):
    return argv[argv.index(flag) + 1]


def _confs(argv):
    """spark-submit's --conf key=value pairs (the job's own --conf FILE has no '=')."""
    return dict(v.split("=", 1) for f, v in zip(argv, argv[1:]) if f == "--conf" and "=" in v)


def test_standalone_submit_ships_the_env_archive_and_the_code_zip(tmp_path):
    env_path = _dry_run("package-venv.sh", "env-path", SKYCLASS_ENV_DIR=str(tmp_path)).stdout.strip()
    assert Path(env_path).parent == tmp_path and Path(env_path).name.startswith("skyclass-env-")
    done = _dry_run("submit-standalone.sh", "check_cluster", "--json", SPARK_MASTER_URL="spark://127.0.0.1:7077",
                    SKYCLASS_ENV_DIR=str(tmp_path), DRIVER_PYTHON=sys.executable)
    argv = shlex.split(done.stdout.strip())
    assert _option(argv, "--archives") == env_path + "#environment"
    code = _option(argv, "--py-files")
    assert Path(code).parent == tmp_path and Path(code).name.startswith("skyclass-code-") and code.endswith(".zip")
    assert not list(tmp_path.iterdir())  # a dry run writes neither the archive nor the zip
    confs = _confs(argv)
    assert confs["spark.pyspark.python"] == "./environment/bin/python"
    assert confs["spark.executor.extraJavaOptions"] == "-Djava.io.tmpdir=."  # in the executor's own folder
    assert confs["spark.pyspark.driver.python"] == sys.executable
    assert confs["spark.driver.host"] == confs["spark.driver.bindAddress"] == "127.0.0.1"
    # What a 1-core, 3g worker accepts.
    assert _option(argv, "--executor-cores") == "1" and _option(argv, "--executor-memory") == "1g"
    assert _option(argv, "--total-executor-cores") == "2"
    # Without spark-submit on PATH, the one of the driver's pyspark.
    assert argv[0] == str(Path(sys.prefix) / "lib/python3.11/site-packages/pyspark/bin/spark-submit")
    assert argv[argv.index(str(ROOT / "jobs" / "check_cluster.py")) + 1:] == [
        "--conf", str(ROOT / "conf" / "cluster.yaml"), "--json"]


# A spark-submit stand-in: records its arguments, TMPDIR and SPARK_LOCAL_DIRS, writes into the latter as Spark's
# unpacking of the environment archive does, and fails.
_RECORDING_SPARK_SUBMIT = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD/argv"
printf '%s' "$TMPDIR" > "$RECORD/tmpdir"
printf '%s' "$SPARK_LOCAL_DIRS" > "$RECORD/local_dirs"
mkdir -p "$SPARK_LOCAL_DIRS/userFiles/environment"
exit 3
"""


def test_the_driver_s_scratch_goes_when_its_submit_ends_and_a_killed_driver_s_at_the_next_submit(tmp_path):
    root, record = tmp_path / "scratch", tmp_path / "record"
    record.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    # What a wrapper killed together with its driver (kill -9 of the process group) left behind.
    stale = root / f"skyclass-driver-{gone.pid}.a1b2c3"
    (stale / "userFiles" / "environment" / "bin").mkdir(parents=True)
    running = subprocess.Popen(["sleep", "60"])  # stands for the wrapper of a submit still running
    live = root / f"skyclass-driver-{running.pid}.d4e5f6"
    live.mkdir()
    fake = tmp_path / "spark-submit"
    fake.write_text(_RECORDING_SPARK_SUBMIT)
    fake.chmod(0o755)
    archive = tmp_path / "skyclass-env-test.tar.gz"
    archive.write_bytes(b"stand-in archive")
    try:
        done = subprocess.run(
            ["bash", str(DEPLOY / "submit-standalone.sh"), "check_cluster"], capture_output=True, text=True,
            timeout=120, env=script_env(None, SPARK_MASTER_URL="spark://127.0.0.1:7077", SPARK_SUBMIT=str(fake),
                                        SKYCLASS_VENV_ARCHIVE=str(archive), SKYCLASS_ENV_DIR=str(tmp_path),
                                        SKYCLASS_DRIVER_TMPDIR=str(root), DRIVER_PYTHON=sys.executable,
                                        RECORD=str(record)))
    finally:
        running.kill()
        running.wait()
    assert done.returncode == 3, done.stderr  # spark-submit's exit code is the wrapper's
    argv = (record / "argv").read_text().splitlines()
    scratch = (record / "local_dirs").read_text()
    assert "spark.local.dir" not in _confs(argv)  # the executors' workers set their own
    assert Path(scratch).parent == root and Path(scratch).name.startswith("skyclass-driver-")
    java_options = _option(argv, "--driver-java-options").split()
    assert f"-Djava.io.tmpdir={scratch}" in java_options
    assert any(o.startswith("-Dlog4j2.configurationFile=") for o in java_options)
    assert (record / "tmpdir").read_text() == scratch
    # The submit's own folder went with it, the dead wrapper's too; the running one's stays.
    assert sorted(p.name for p in root.iterdir()) == [live.name]


def test_standalone_submit_to_a_remote_master_leaves_the_driver_address_alone(tmp_path):
    done = _dry_run("submit-standalone.sh", "score_catalog", SPARK_MASTER_URL="spark://master.example:7077",
                    SKYCLASS_ENV_DIR=str(tmp_path), TOTAL_CORES="16", EXECUTOR_MEMORY="8g")
    argv = shlex.split(done.stdout.strip())
    assert "spark.driver.host" not in _confs(argv)
    assert _option(argv, "--total-executor-cores") == "16" and _option(argv, "--executor-memory") == "8g"


def test_env_archive_name_follows_requirements(tmp_path):
    first = _dry_run("package-venv.sh", "env-path").stdout.strip()
    assert first == _dry_run("package-venv.sh", "env-path").stdout.strip()
    gpu = _dry_run("package-venv.sh", "env-path", TF_PACKAGE="tensorflow[and-cuda]==2.15.1").stdout.strip()
    assert gpu != first and Path(first).parent == ROOT / "dist"


def test_an_existing_env_archive_is_reused(tmp_path):
    out = tmp_path / "skyclass-env-test.tar.gz"
    out.write_bytes(b"stand-in archive")
    done = _dry_run("package-venv.sh", "env", OUT=str(out))
    assert done.stdout.startswith(f"reusing {out}")
    assert "pip" not in done.stdout


def test_code_zip_holds_the_package_and_its_sql_templates(tmp_path):
    zip_path = subprocess.run(["bash", str(DEPLOY / "package-venv.sh"), "code"], capture_output=True, text=True,
                              env=script_env(None, SKYCLASS_ENV_DIR=str(tmp_path), DRIVER_PYTHON=sys.executable),
                              timeout=60, check=True).stdout.strip()
    # Imported from the zip alone (no lib/ on the path), the templates load as package data.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import skyclass.skyserver as s; "
             "print(s.__file__); print(s.sql_template('catalog_page')[:2])")
    done = subprocess.run([sys.executable, "-c", probe, zip_path], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=script_env(None))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{zip_path}/skyclass/skyserver.py", "--"]
    # Same sources, same zip.
    again = subprocess.run(["bash", str(DEPLOY / "package-venv.sh"), "code"], capture_output=True, text=True,
                           env=script_env(None, SKYCLASS_ENV_DIR=str(tmp_path), DRIVER_PYTHON=sys.executable),
                           timeout=60, check=True).stdout.strip()
    assert again == zip_path and len(list(tmp_path.glob("skyclass-code-*.zip"))) == 1


# ---------------------------------------------------------------------------------------------------------------
# A real cluster


@pytest.mark.slow
def test_status_and_a_second_start_is_a_no_op(standalone_cluster):
    cluster = standalone_cluster
    status = cluster.status()
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"master URL: {cluster.master_url}" in status.stdout
    for pid in [cluster.master_pid, *cluster.worker_pids]:
        assert f"pid {pid} alive" in status.stdout
    again = run_cluster_script("start", cluster.state_dir)
    assert again.returncode == 0 and "already running" in again.stdout and cluster.master_url in again.stdout
    assert int((cluster.state_dir / "master.pid").read_text()) == cluster.master_pid
    assert [int((cluster.state_dir / f"worker-{n}.pid").read_text()) for n in (1, 2)] == cluster.worker_pids


@pytest.mark.slow
def test_check_cluster_runs_on_both_workers_with_shipped_code(standalone_cluster):
    cluster = standalone_cluster
    t0 = time.monotonic()
    done = cluster.submit("check_cluster", "--wait-executors", "2", "--tasks", "4", "--json")
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-5000:]
    report = _json_from(done.stdout)
    print(f"check_cluster submit took {seconds:.1f} s; cluster start took {cluster.start_seconds:.1f} s")
    assert report["master"] == cluster.master_url
    tasks = report["tasks"]
    assert len(tasks) == 4
    assert len({t["executor_id"] for t in tasks}) == 2 and "driver" not in {t["executor_id"] for t in tasks}
    assert len({t["executor_pid"] for t in tasks}) == 2
    work_dirs = [str(d) + os.sep for d in cluster.worker_work_dirs]
    used = set()
    pins = _pins()
    for task in tasks:
        # skyclass comes from the zip shipped into the executor's folder below a worker's work dir...
        under = [w for w in work_dirs if task["skyclass_file"].startswith(w)]
        assert under, task["skyclass_file"]
        used.add(under[0])
        assert ".zip/skyclass/" in task["skyclass_file"]
        # ...never from the checkout, and Python from the unpacked environment archive.
        assert not task["skyclass_file"].startswith(str(ROOT) + os.sep)
        assert task["cwd"].startswith(under[0])
        assert task["python"] == os.path.join(task["cwd"], "environment", "bin", "python")
        assert task["versions"] == {"tensorflow": pins["tensorflow-cpu"], "horovod": "0.28.1",
                                    "petastorm": pins["petastorm"], "pyarrow": pins["pyarrow"],
                                    "numpy": pins["numpy"]}
    assert used == set(work_dirs), "tasks ran in the executors of both workers"


@pytest.mark.slow
def test_fixture_lists_the_executors_of_a_running_application(standalone_cluster):
    cluster = standalone_cluster
    assert cluster.executor_pids() == []
    env = script_env(cluster.state_dir, SPARK_MASTER_URL=cluster.master_url, DRIVER_PYTHON=sys.executable)
    app = subprocess.Popen(["bash", str(DEPLOY / "submit-standalone.sh"), "check_cluster", "--wait-executors", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    seen = set()
    try:
        deadline = time.monotonic() + 300
        while app.poll() is None and time.monotonic() < deadline:
            seen.update(cluster.executor_pids())
            time.sleep(0.2)
        out, _ = app.communicate(timeout=300)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert app.returncode == 0
    pids_in_report = {int(line.split()[3]) for line in out.splitlines()[3:] if line[:1].isdigit()}
    assert len(seen) == 2 and seen == pids_in_report
    # The application is over: its executors are gone.
    deadline = time.monotonic() + 30
    while cluster.executor_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.executor_pids() == []


@pytest.mark.slow
def test_stop_ends_only_the_jvms_it_started():
    bystander = subprocess.Popen(["sleep", "300"])
    cluster = StandaloneCluster.start(tempfile.mkdtemp(prefix="skyclass-cluster-"))
    try:
        print(f"cluster start took {cluster.start_seconds:.1f} s")
        ours = [cluster.master_pid, *cluster.worker_pids]
        assert not any(_gone(pid) for pid in ours)
        # What a finished application left in an executor's folder: its logs stay, its unpacked files go.
        executor_dir = cluster.worker_work_dirs[0] / "app-20260101000000-0000" / "0"
        (executor_dir / "environment" / "bin").mkdir(parents=True)
        for name in ("stdout", "stderr", "skyclass-code-0.zip", ".hidden"):
            (executor_dir / name).write_text(name)
        done = cluster.stop()
        assert done.returncode == 0, done.stderr
        assert all(_gone(pid) for pid in ours)
        assert bystander.poll() is None, "an unrelated process was killed"
        assert sorted(p.name for p in executor_dir.iterdir()) == ["stderr", "stdout"]
        status = cluster.status()
        assert status.returncode != 0 and "master: not started" in status.stdout
    finally:
        cluster.stop()
        bystander.kill()
        bystander.wait()
        shutil.rmtree(cluster.state_dir, ignore_errors=True)
