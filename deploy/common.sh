# shellcheck shell=bash
# Shared by deploy/submit-*.sh: job lookup, help, GPU settings and DRY_RUN. Source it; do not run it.
# A wrapper may set DEFAULT_EXECUTOR_MEMORY, DEFAULT_EXECUTOR_CORES and DEFAULT_PYTHON_MEMORY before sourcing it
# (the standalone wrapper's defaults fit the local 2-worker cluster of deploy/local-cluster.sh).
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
SPARK_SUBMIT="${SPARK_SUBMIT:-spark-submit}"

# The spark-submit-able jobs: one file per stage in jobs/ (each is `skyclass <command>` under spark-submit).
skyclass_jobs() {
    local f
    for f in "$REPO_DIR"/jobs/*.py; do
        basename "$f" .py
    done
}

skyclass_usage() {
    # $1: wrapper name, $2: what the wrapper targets, $3: wrapper-specific environment help
    cat <<USAGE
usage: deploy/$1 JOB [skyclass options ...]

Submit one skyclass job to $2 with spark-submit.

JOB is one of: $(skyclass_jobs | tr '\n' ' ')
Options after JOB go to the job, e.g. --set score.rescore=true or --retrain (run_nightly).
The config file is \$SKYCLASS_CONF (default conf/cluster.yaml) and is passed as --conf.

Environment:
  DRY_RUN=1            print the spark-submit command instead of running it
  GPU=1 | GPU=train    add the GPU settings of deploy/spark-gpu.conf: one task (one Horovod process) per GPU
  GPU=score            the same GPUs shared by one task per executor core, so every core decodes JPEGs
                       for its GPU (spark.task.cpus=1, spark.task.resource.gpu.amount=1/cores)
  SPARK_SUBMIT         spark-submit executable (default: ${DEFAULT_SPARK_SUBMIT_HELP:-spark-submit on PATH})
  SPARK_SUBMIT_ARGS    extra spark-submit arguments, split on spaces (e.g. "--conf spark.x=y")
  EXECUTOR_MEMORY      executor JVM heap (default ${DEFAULT_EXECUTOR_MEMORY:-8g})
  EXECUTOR_CORES       cores per executor (default ${DEFAULT_EXECUTOR_CORES:-4}; with GPU, spark-gpu.conf's spark.executor.cores)
  PYTHON_MEMORY        memory overhead per executor for the Python workers and TensorFlow (default ${DEFAULT_PYTHON_MEMORY:-6g})
$3
USAGE
}

# Sets JOB and JOB_ARGS from the wrapper's arguments; handles --help.
skyclass_parse_job() {
    local wrapper="$1" target="$2" env_help="$3"
    shift 3
    if [[ $# -eq 0 ]]; then
        skyclass_usage "$wrapper" "$target" "$env_help" >&2
        exit 2
    fi
    if [[ "$1" == "-h" || "$1" == "--help" ]]; then
        skyclass_usage "$wrapper" "$target" "$env_help"
        exit 0
    fi
    JOB="$1"
    shift
    JOB_ARGS=("$@")
    if [[ ! -f "$REPO_DIR/jobs/$JOB.py" ]]; then
        echo "deploy/$wrapper: unknown job '$JOB'; expected one of: $(skyclass_jobs | tr '\n' ' ')" >&2
        exit 2
    fi
}

# --conf key=value pairs for every setting in a Spark properties file (comments and blank lines skipped).
# Expanded rather than passed as --properties-file, which would stop spark-submit reading spark-defaults.conf.
skyclass_conf_args() {
    local file="$1" line key value
    while IFS= read -r line || [[ -n "$line" ]]; do
        line="${line%%#*}"
        line="$(echo "$line" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')"
        [[ -z "$line" ]] && continue
        if [[ "$line" == *=* ]]; then
            key="${line%%=*}"
            value="${line#*=}"
        else
            key="${line%%[[:space:]]*}"
            value="$(echo "${line#"$key"}" | sed -e 's/^[[:space:]]*//')"
        fi
        printf '%s\n' "--conf" "$key=$value"
    done <"$file"
}

# Settings every target shares: resources, Python memory, GPU settings when GPU=1, then SPARK_SUBMIT_ARGS.
skyclass_common_args() {
    local gpu="${GPU:-0}"
    COMMON_ARGS=(
        --name "skyclass-$JOB"
        --executor-memory "${EXECUTOR_MEMORY:-${DEFAULT_EXECUTOR_MEMORY:-8g}}"
        # TensorFlow and the Arrow batches live in the Python workers, outside the JVM heap.
        --conf "spark.executor.memoryOverhead=${PYTHON_MEMORY:-${DEFAULT_PYTHON_MEMORY:-6g}}"
        --conf "spark.sql.execution.arrow.pyspark.enabled=true"
    )
    case "$gpu" in
        0 | "")
            COMMON_ARGS+=(--executor-cores "${EXECUTOR_CORES:-${DEFAULT_EXECUTOR_CORES:-4}}")
            ;;
        1 | train | score)
            local arg cores
            while IFS= read -r arg; do
                COMMON_ARGS+=("$arg")
            done < <(skyclass_conf_args "$DEPLOY_DIR/spark-gpu.conf")
            cores="${EXECUTOR_CORES:-$(skyclass_conf_args "$DEPLOY_DIR/spark-gpu.conf" |
                sed -n 's/^spark\.executor\.cores=//p')}"
            # A later --conf of the same key wins, so these override the file.
            COMMON_ARGS+=(--conf "spark.executor.cores=$cores")
            if [[ "$gpu" == "score" ]]; then
                COMMON_ARGS+=(--conf spark.task.cpus=1
                              --conf "spark.task.resource.gpu.amount=$(awk "BEGIN { print 1 / $cores }")")
            else
                COMMON_ARGS+=(--conf "spark.task.cpus=$cores")
            fi
            ;;
        *)
            echo "deploy: GPU must be 0, 1, train or score; got '$gpu'" >&2
            exit 2
            ;;
    esac
    if [[ -n "${SPARK_SUBMIT_ARGS:-}" ]]; then
        # shellcheck disable=SC2206  # word splitting is the documented format of SPARK_SUBMIT_ARGS
        COMMON_ARGS+=(${SPARK_SUBMIT_ARGS})
    fi
}

# Run (or with DRY_RUN=1 print, shell-quoted) the command in "$@".
skyclass_run() {
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        printf '%q ' "$@" | sed -e 's/ $//'
        echo
        return 0
    fi
    skyclass_require_submit "$1"
    exec "$@"
}

skyclass_require_submit() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "deploy: $1 not found; install Spark 3.5 and put spark-submit on PATH, or set SPARK_SUBMIT" >&2
        exit 127
    fi
}

# The driver's scratch folder, for client deploy mode. Spark copies every --archives entry to the driver too and
# unpacks it there (the environment: 0.4 GB packed, 1.6 GB unpacked), under java.io.tmpdir and its local dir,
# and only a driver that shuts down cleanly deletes that. So each submit gets a folder of its own,
# SKYCLASS_DRIVER_TMPDIR (default $TMPDIR, else /tmp)/skyclass-driver-<wrapper pid>.XXXXXX, removed when
# spark-submit ends however it ends (skyclass_run_then_clean). The folders of wrappers that are gone (killed with
# their driver by kill -9, a lost host) are removed by the next submit. Sets DRIVER_SCRATCH.
skyclass_driver_scratch() {
    local root="${SKYCLASS_DRIVER_TMPDIR:-${TMPDIR:-/tmp}}" dir pid
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        DRIVER_SCRATCH="$root/skyclass-driver-$$.XXXXXX"
        return 0
    fi
    if ! mkdir -p "$root" 2>/dev/null || [[ ! -w "$root" ]]; then
        echo "deploy: cannot write the driver's scratch folder under SKYCLASS_DRIVER_TMPDIR=$root;" \
             "set SKYCLASS_DRIVER_TMPDIR to a writable folder with a few GB free" >&2
        exit 2
    fi
    for dir in "$root"/skyclass-driver-*.*; do
        pid="${dir##*/skyclass-driver-}"
        pid="${pid%%.*}"
        # ps sees other users' processes too: a folder whose wrapper still runs is never touched.
        if [[ -d "$dir" && "$pid" =~ ^[0-9]+$ ]] && ! ps -p "$pid" >/dev/null 2>&1; then
            rm -rf "$dir" 2>/dev/null || true
        fi
    done
    DRIVER_SCRATCH="$(mktemp -d "$root/skyclass-driver-$$.XXXXXX")"
}

# Like skyclass_run, but spark-submit runs as a child and DRIVER_SCRATCH is removed when it ends (an interrupt or
# a SIGTERM to the process group reaches spark-submit; the wrapper waits for it, cleans, and exits with its code).
skyclass_run_then_clean() {
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        skyclass_run "$@"
        return 0
    fi
    # shellcheck disable=SC2064  # the folder is fixed now
    trap "rm -rf '$DRIVER_SCRATCH'" EXIT
    skyclass_require_submit "$1"
    trap 'exit 143' TERM
    trap 'exit 130' INT
    trap 'exit 129' HUP
    local code=0
    # Spark's local dir by SPARK_LOCAL_DIRS, which only the driver reads (spark.local.dir would be sent to the
    # executors too, and Spark warns that their workers override it); the Python driver's temporary files
    # (TensorFlow's autograph sources among them) by TMPDIR.
    SPARK_LOCAL_DIRS="$DRIVER_SCRATCH" TMPDIR="$DRIVER_SCRATCH" "$@" || code=$?
    exit "$code"
}

# The executors' environment (deploy/package-venv.sh env: the pinned stack and Horovod, one archive per
# requirements hash, unpacked as ./environment) and the skyclass code (deploy/package-venv.sh code: a zip of
# lib/skyclass, rebuilt from the checkout at every submit, shipped with --py-files). Sets VENV_ARCHIVE, CODE_ZIP.
skyclass_venv_archive() {
    VENV_ARCHIVE="${SKYCLASS_VENV_ARCHIVE:-$("$DEPLOY_DIR/package-venv.sh" env-path)}"
    if [[ "${DRY_RUN:-0}" != "1" && "$VENV_ARCHIVE" != *://* && ! -f "$VENV_ARCHIVE" ]]; then
        echo "deploy: no packed environment at $VENV_ARCHIVE; build it with deploy/package-venv.sh env" \
             "(or set SKYCLASS_VENV_ARCHIVE, e.g. to an hdfs:// copy)" >&2
        exit 2
    fi
    CODE_ZIP="$("$DEPLOY_DIR/package-venv.sh" code)"  # with DRY_RUN=1: its path only, nothing written
}
