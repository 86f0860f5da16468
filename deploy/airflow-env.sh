#!/usr/bin/env bash
# The scheduler's own environment for deploy/airflow_dag.py, as on a real deployment: Apache Airflow in
# .venv-airflow (never inside the pinned job stack of .venv) and a throw-away AIRFLOW_HOME with a migrated SQLite
# metadata DB in .airflow-home/ (both ignored by git). Built once; later runs reuse it while the version holds.
#   deploy/airflow-env.sh          build (or reuse) and print nothing but errors
#   deploy/airflow-env.sh path     print the venv's airflow executable (builds first if needed)
# Airflow is installed without its constraints file: this version's own pins resolve cleanly on Python 3.11 here.
set -euo pipefail

AIRFLOW_VERSION=2.10.5
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
VENV="${AIRFLOW_VENV:-$REPO_DIR/.venv-airflow}"
HOME_DIR="${AIRFLOW_TEMPLATE_HOME:-$REPO_DIR/.airflow-home}"
STAMP="$VENV/.airflow-$AIRFLOW_VERSION"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

if [[ ! -f "$STAMP" ]]; then
    echo "deploy/airflow-env.sh: installing apache-airflow==$AIRFLOW_VERSION into $VENV (a few minutes, once)" >&2
    start=$(date +%s)
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q "apache-airflow==$AIRFLOW_VERSION" >&2
    "$VENV/bin/airflow" version >/dev/null
    echo "deploy/airflow-env.sh: installed in $(( $(date +%s) - start )) s" >&2
    touch "$STAMP"
    rm -rf "$HOME_DIR"
fi

if [[ ! -f "$HOME_DIR/airflow.db" ]]; then
    # A migrated, empty metadata DB: a test copies it into its own AIRFLOW_HOME instead of migrating each time.
    rm -rf "$HOME_DIR.tmp"
    mkdir -p "$HOME_DIR.tmp/dags"
    AIRFLOW_HOME="$HOME_DIR.tmp" AIRFLOW__CORE__LOAD_EXAMPLES=False \
        AIRFLOW__CORE__DAGS_FOLDER="$HOME_DIR.tmp/dags" "$VENV/bin/airflow" db migrate >&2
    # The generated airflow.cfg names the temporary folder; without it Airflow writes a new one for the home it runs
    # in (DB, dags/ and logs/ below AIRFLOW_HOME).
    rm -rf "$HOME_DIR.tmp/airflow.cfg" "$HOME_DIR.tmp/logs"
    rm -rf "$HOME_DIR"
    mv "$HOME_DIR.tmp" "$HOME_DIR"
fi

if [[ "${1:-}" == "path" ]]; then
    echo "$VENV/bin/airflow"
fi
