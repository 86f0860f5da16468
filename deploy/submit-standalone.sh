#!/usr/bin/env bash
# Submit a skyclass job to a Spark standalone cluster (client deploy mode: Spark does not run Python drivers in
# standalone cluster mode). Executors unpack the venv of deploy/package-venv.sh; the driver uses local Python.
# DRY_RUN=1 prints the spark-submit command; --help explains the options.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skyclass_parse_job submit-standalone.sh "a Spark standalone cluster (client deploy mode)" \
"  SPARK_MASTER_URL     spark://host:7077 of the standalone master (required)
  SKYCLASS_CONF        config file read by the driver here (default conf/cluster.yaml)
  SKYCLASS_VENV_ARCHIVE  packed venv for the executors (default dist/skyclass-venv.tar.gz)
  DRIVER_PYTHON        Python of the driver, with skyclass installed (default .venv/bin/python)
  TOTAL_CORES          cores of the whole application (default 32)" "$@"
if [[ -z "${SPARK_MASTER_URL:-}" ]]; then
    echo "deploy/submit-standalone.sh: set SPARK_MASTER_URL=spark://<master host>:7077" >&2
    exit 2
fi
skyclass_venv_archive
skyclass_common_args
CONF_FILE="${SKYCLASS_CONF:-$REPO_DIR/conf/cluster.yaml}"

skyclass_run "$SPARK_SUBMIT" \
    --master "$SPARK_MASTER_URL" \
    --deploy-mode client \
    --total-executor-cores "${TOTAL_CORES:-32}" \
    --archives "$VENV_ARCHIVE#environment" \
    --conf spark.pyspark.python=./environment/bin/python \
    --conf "spark.pyspark.driver.python=${DRIVER_PYTHON:-$REPO_DIR/.venv/bin/python}" \
    "${COMMON_ARGS[@]}" \
    "$REPO_DIR/jobs/$JOB.py" --conf "$CONF_FILE" "${JOB_ARGS[@]}"
