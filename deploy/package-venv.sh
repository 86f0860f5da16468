#!/usr/bin/env bash
# Build what YARN and standalone executors need: dist/skyclass-<version>-py3-none-any.whl and
# dist/skyclass-venv.tar.gz, a venv-pack archive of a fresh venv with the pinned stack (requirements.txt),
# Horovod built with Gloo, and the skyclass wheel. The wrappers ship it with --archives ...#environment.
#
# venv-pack does not copy the Python interpreter: every node must have Python 3.11 at the same path as the
# machine that builds the archive (build it on a node image, or use the Docker image for Kubernetes).
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    cat <<USAGE
usage: deploy/package-venv.sh

Build dist/skyclass-*.whl and dist/skyclass-venv.tar.gz (venv-pack) for spark-submit --archives.

Environment:
  DRY_RUN=1     print the commands instead of running them
  PYTHON        interpreter of the venv (default python3.11; must exist at the same path on every node)
  OUT           archive to write (default dist/skyclass-venv.tar.gz)
  BUILD_DIR     where the venv is built (default: a new temporary folder)
  TF_PACKAGE    TensorFlow requirement (default tensorflow-cpu==2.15.1; tensorflow[and-cuda]==2.15.1 for GPUs)
USAGE
    exit 0
fi

PYTHON="${PYTHON:-python3.11}"
OUT="${OUT:-$REPO_DIR/dist/skyclass-venv.tar.gz}"
TF_PACKAGE="${TF_PACKAGE:-tensorflow-cpu==2.15.1}"
if [[ "${DRY_RUN:-0}" == "1" ]]; then
    BUILD_DIR="${BUILD_DIR:-build/venv-pack}"
else
    BUILD_DIR="${BUILD_DIR:-$(mktemp -d)}"
fi
VENV="$BUILD_DIR/venv"

run() {
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        printf '%q ' "$@" | sed -e 's/ $//'
        echo
    else
        "$@"
    fi
}

# requirements.txt pins tensorflow-cpu; GPU archives swap in TF_PACKAGE and keep every other pin.
REQUIREMENTS="$BUILD_DIR/requirements.txt"
if [[ "${DRY_RUN:-0}" != "1" ]]; then
    mkdir -p "$BUILD_DIR" "$(dirname "$OUT")"
    grep -v '^tensorflow-cpu==' "$REPO_DIR/requirements.txt" >"$REQUIREMENTS"
    echo "$TF_PACKAGE" >>"$REQUIREMENTS"
fi

run "$PYTHON" -m venv "$VENV"
run "$VENV/bin/python" -m pip install --upgrade pip 'setuptools<70' wheel venv-pack
run "$VENV/bin/python" -m pip install -r "$REQUIREMENTS"
# Horovod compiles against the TensorFlow just installed (hence no build isolation), with Gloo and without MPI.
run env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
    HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 \
    "$VENV/bin/python" -m pip install --no-build-isolation --no-cache-dir 'horovod[spark]==0.28.1'
run "$VENV/bin/python" -c \
    "import horovod.tensorflow; from horovod.common.util import gloo_built; assert gloo_built(), 'Horovod without Gloo'"
run "$VENV/bin/python" -m pip wheel --no-deps --wheel-dir "$REPO_DIR/dist" "$REPO_DIR"
# --no-index: never pick up an unrelated "skyclass" from a package index.
run "$VENV/bin/python" -m pip install --no-deps --no-index --find-links "$REPO_DIR/dist" skyclass
run "$VENV/bin/venv-pack" --prefix "$VENV" --output "$OUT" --force
if [[ "${DRY_RUN:-0}" != "1" ]]; then
    echo "packed $OUT; submit with deploy/submit-yarn.sh or SPARK_MASTER_URL=... deploy/submit-standalone.sh"
fi
