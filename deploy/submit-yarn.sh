#!/usr/bin/env bash
# Submit a skyclass job to YARN (cluster deploy mode), shipping the packed venv of deploy/package-venv.sh.
# DRY_RUN=1 prints the spark-submit command; --help explains the options.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skyclass_parse_job submit-yarn.sh "YARN (cluster deploy mode)" \
"  SKYCLASS_CONF        config file shipped with --files (default conf/cluster.yaml)
  SKYCLASS_VENV_ARCHIVE  environment archive (default dist/skyclass-env-<hash>.tar.gz of deploy/package-venv.sh
                       env; an hdfs:// copy avoids re-uploading it)
  YARN_QUEUE           YARN queue (default: default)" "$@"
skyclass_venv_archive
skyclass_common_args
CONF_FILE="${SKYCLASS_CONF:-$REPO_DIR/conf/cluster.yaml}"

# The driver runs in the YARN application master: it finds the config in its working directory (--files) and
# runs the venv's Python, unpacked from the archive as ./environment in every container.
skyclass_run "$SPARK_SUBMIT" \
    --master yarn \
    --deploy-mode cluster \
    --queue "${YARN_QUEUE:-default}" \
    --archives "$VENV_ARCHIVE#environment" \
    --py-files "$CODE_ZIP" \
    --files "$CONF_FILE" \
    --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python \
    --conf spark.pyspark.python=./environment/bin/python \
    --conf spark.yarn.maxAppAttempts=1 \
    "${COMMON_ARGS[@]}" \
    "$REPO_DIR/jobs/$JOB.py" --conf "$(basename "$CONF_FILE")" "${JOB_ARGS[@]}"
