#!/usr/bin/env bash
# Submit a skyclass job to a Spark standalone cluster (client deploy mode: Spark does not run Python drivers in
# standalone cluster mode). Executors unpack the environment archive of deploy/package-venv.sh (the pinned stack
# and Horovod, built once per requirements hash) as ./environment and import skyclass from a zip of this
# checkout's lib/skyclass shipped with --py-files (built for every submit); the driver runs DRIVER_PYTHON here.
# DRY_RUN=1 prints the spark-submit command; --help explains the options.
USER_SPARK_SUBMIT="${SPARK_SUBMIT:-}"
# Defaults that a worker of deploy/local-cluster.sh (1 core, 3g) accepts; raise them for a real cluster.
DEFAULT_EXECUTOR_MEMORY=1g
DEFAULT_EXECUTOR_CORES=1
DEFAULT_PYTHON_MEMORY=1g
DEFAULT_SPARK_SUBMIT_HELP="spark-submit on PATH, else the one of DRIVER_PYTHON's pyspark"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skyclass_parse_job submit-standalone.sh "a Spark standalone cluster (client deploy mode)" \
"  SPARK_MASTER_URL     spark://host:7077 of the standalone master (required; deploy/local-cluster.sh start
                       writes the local cluster's to .cluster/master-url)
  SKYCLASS_CONF        config file read by the driver here (default conf/cluster.yaml)
  SKYCLASS_VENV_ARCHIVE  environment archive for the executors (default: dist/skyclass-env-<hash>.tar.gz of
                       deploy/package-venv.sh, built first if missing; an hdfs:// URI is used as it is)
  DRIVER_PYTHON        Python of the driver, with the pinned stack (default .venv/bin/python)
  DRIVER_HOST          address executors reach the driver at (default 127.0.0.1 for a loopback master)
  TOTAL_CORES          cores of the whole application (default 2)
  DRIVER_LOG_CONF      log4j2 file of the driver JVM (default deploy/log4j2-driver.properties: warnings only;
                       empty: Spark's default, INFO)
  SKYCLASS_DRIVER_TMPDIR  where the driver's scratch folder goes (default \$TMPDIR, else /tmp): Spark unpacks the
                       environment archive there too (~2 GB); removed when the submit ends, or by the next submit
                       when the driver was killed" "$@"
if [[ -z "${SPARK_MASTER_URL:-}" ]]; then
    echo "deploy/submit-standalone.sh: set SPARK_MASTER_URL=spark://<master host>:7077" \
         "(for the local cluster: SPARK_MASTER_URL=\$(cat .cluster/master-url))" >&2
    exit 2
fi
DRIVER_PYTHON="${DRIVER_PYTHON:-$REPO_DIR/.venv/bin/python}"
if [[ -z "$USER_SPARK_SUBMIT" ]] && ! command -v spark-submit >/dev/null 2>&1; then
    # The pyspark wheel carries a whole Spark distribution, spark-submit included.
    SPARK_SUBMIT="$(dirname "$(dirname "$DRIVER_PYTHON")")/lib/python3.11/site-packages/pyspark/bin/spark-submit"
fi

# The executors' environment: built once per requirements hash, reused afterwards.
ENV_ARCHIVE="${SKYCLASS_VENV_ARCHIVE:-$("$DEPLOY_DIR/package-venv.sh" env-path)}"
if [[ "$ENV_ARCHIVE" != *://* && ! -f "$ENV_ARCHIVE" ]]; then
    if [[ -n "${SKYCLASS_VENV_ARCHIVE:-}" ]]; then
        echo "deploy/submit-standalone.sh: no environment archive at SKYCLASS_VENV_ARCHIVE=$ENV_ARCHIVE;" \
             "build one with deploy/package-venv.sh (or unset SKYCLASS_VENV_ARCHIVE)" >&2
        exit 2
    elif [[ "${DRY_RUN:-0}" == "1" ]]; then
        echo "(DRY_RUN: $ENV_ARCHIVE does not exist; a real submit builds it with deploy/package-venv.sh)" >&2
    else
        echo "deploy/submit-standalone.sh: building the executors' environment $ENV_ARCHIVE" \
             "(once per requirements.txt; several minutes)" >&2
        OUT="$ENV_ARCHIVE" "$DEPLOY_DIR/package-venv.sh" env >&2
    fi
fi
# The code: a zip of this checkout's lib/skyclass, so executors never import skyclass from a checkout.
CODE_ZIP="$(DRIVER_PYTHON="$DRIVER_PYTHON" "$DEPLOY_DIR/package-venv.sh" code)"
# The driver imports skyclass from the code zip too: relative config paths resolve against the checkout.
export SKYCLASS_HOME="${SKYCLASS_HOME:-$REPO_DIR}"

skyclass_common_args
CONF_FILE="${SKYCLASS_CONF:-$REPO_DIR/conf/cluster.yaml}"
DRIVER_ARGS=()
DRIVER_HOST="${DRIVER_HOST:-}"
if [[ -z "$DRIVER_HOST" && "$SPARK_MASTER_URL" =~ ^spark://(127\.[0-9.]+|localhost)(:[0-9]+)?$ ]]; then
    # A loopback master (deploy/local-cluster.sh): keep the driver on loopback too.
    DRIVER_HOST=127.0.0.1
    export SPARK_LOCAL_IP=127.0.0.1
fi
if [[ -n "$DRIVER_HOST" ]]; then
    DRIVER_ARGS=(--conf "spark.driver.host=$DRIVER_HOST" --conf "spark.driver.bindAddress=$DRIVER_HOST")
fi
# The driver runs here, on the user's terminal: Spark's INFO chatter off (deploy/log4j2-driver.properties keeps
# warnings and errors); DRIVER_LOG_CONF= (empty) restores Spark's default.
DRIVER_LOG_CONF="${DRIVER_LOG_CONF-$DEPLOY_DIR/log4j2-driver.properties}"
skyclass_driver_scratch
DRIVER_JAVA_OPTIONS="-Djava.io.tmpdir=$DRIVER_SCRATCH"
if [[ -n "$DRIVER_LOG_CONF" ]]; then
    DRIVER_JAVA_OPTIONS+=" -Dlog4j2.configurationFile=file:$DRIVER_LOG_CONF"
fi
DRIVER_ARGS+=(--driver-java-options "$DRIVER_JAVA_OPTIONS")

# An executor copies the environment archive to java.io.tmpdir before unpacking it into its folder, and only an
# executor that shuts down cleanly deletes the copy (0.4 GB per killed executor, in the worker's /tmp). Its own
# folder (the worker's work dir, app-*/N: java.io.tmpdir=.) holds the copy instead: the worker's cleanup, or
# local-cluster.sh prune, removes it with the application's other files.

skyclass_run_then_clean "$SPARK_SUBMIT" \
    --master "$SPARK_MASTER_URL" \
    --deploy-mode client \
    --total-executor-cores "${TOTAL_CORES:-2}" \
    --archives "$ENV_ARCHIVE#environment" \
    --py-files "$CODE_ZIP" \
    --conf spark.pyspark.python=./environment/bin/python \
    --conf spark.executor.extraJavaOptions=-Djava.io.tmpdir=. \
    --conf "spark.pyspark.driver.python=$DRIVER_PYTHON" \
    "${DRIVER_ARGS[@]}" \
    "${COMMON_ARGS[@]}" \
    "$REPO_DIR/jobs/$JOB.py" --conf "$CONF_FILE" "${JOB_ARGS[@]}"
