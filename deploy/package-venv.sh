#!/usr/bin/env bash
# Build what standalone (and YARN) executors need, in two parts that change at very different rates:
#
#   env   dist/skyclass-env-<hash>.tar.gz: a venv-pack archive of a fresh venv with the pinned stack
#         (requirements.txt) and Horovod built with Gloo after TensorFlow, without build isolation. It does NOT
#         hold skyclass. <hash> covers requirements.txt (with TF_PACKAGE swapped in), the Horovod pin and build
#         flags, and the Python version and path; an archive that exists is reused, so the ~1 GB environment is
#         built once per requirements change. The wrappers ship it with --archives <env>#environment.
#   code  dist/skyclass-code-<hash>.zip: lib/skyclass (with its package data, sql/*.sql) zipped from the
#         checkout, a few hundred KB, rebuilt for every submit and shipped with --py-files; <hash> is of its
#         content, so an unchanged checkout reuses the same file.
#
# venv-pack does not copy the Python interpreter: every node must have Python 3.11 at the same path as the
# machine that builds the archive (true on the local cluster; on a real one, build on a node image).
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"

usage() {
    cat <<USAGE
usage: deploy/package-venv.sh [env | env-path | code]

  env       build the executors' environment archive, or reuse it if it exists (the default)
  env-path  print the path of the archive for the current requirements (builds nothing)
  code      zip lib/skyclass of this checkout for --py-files and print the zip's path

Environment:
  DRY_RUN=1          print the commands instead of running them
  PYTHON             interpreter of the venv (default python3.11; must exist at the same path on every node)
  OUT                archive to write (default: dist/skyclass-env-<hash>.tar.gz)
  SKYCLASS_ENV_DIR   folder of the env archives and code zips (default dist/ of the checkout)
  SKYCLASS_CACHE_DIR where the Horovod wheel built once per hash is kept (default ~/.cache/skyclass)
  BUILD_DIR          where the venv is built (default: a new temporary folder, removed afterwards)
  TF_PACKAGE         TensorFlow requirement (default tensorflow-cpu==2.15.1; tensorflow[and-cuda]==2.15.1 for GPUs)
  FORCE=1            rebuild the env archive even if it exists
USAGE
}

# Everything runs inside main, which bash reads whole before running it: editing this file while a build runs
# cannot break that build.
main() {
    ACTION="${1:-env}"
    case "$ACTION" in
        -h | --help) usage; exit 0 ;;
        env | env-path | code) ;;
        *) echo "deploy/package-venv.sh: unknown action '$ACTION'" >&2; usage >&2; exit 2 ;;
    esac

    PYTHON="${PYTHON:-python3.11}"
    TF_PACKAGE="${TF_PACKAGE:-tensorflow-cpu==2.15.1}"
    ENV_DIR="${SKYCLASS_ENV_DIR:-$REPO_DIR/dist}"
    CACHE_DIR="${SKYCLASS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/skyclass}"
    HOROVOD_SPEC='horovod[spark]==0.28.1'
    # Left out of the archive, which every executor of every application fetches and unpacks: the JVM jars of
    # the pip pyspark (executors' Python workers import pyspark from the worker's own Spark, never start a JVM)
    # and TensorFlow's C++ headers (only needed to compile Horovod, which is done). 320 MB and 8,000 files.
    PACK_EXCLUDES=('lib/python3.11/site-packages/pyspark/jars/*' 'lib/python3.11/site-packages/tensorflow/include/*')
    HOROVOD_ENV=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1
                 HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5)

    run() {
        if [[ "${DRY_RUN:-0}" == "1" ]]; then
            printf '%q ' "$@" | sed -e 's/ $//'
            echo
        else
            "$@"
        fi
    }

    # ---------------------------------------------------------------------------------------------------------------
    # code: a zip of lib/skyclass with fixed timestamps, so equal sources give an equal file (and name).
    if [[ "$ACTION" == "code" ]]; then
        CODE_PYTHON="${DRIVER_PYTHON:-$PYTHON}"
        command -v "$CODE_PYTHON" >/dev/null 2>&1 || CODE_PYTHON=python3
        [[ "${DRY_RUN:-0}" == "1" ]] || mkdir -p "$ENV_DIR"
        # DRY_RUN=1 prints the zip's path without writing it.
        "$CODE_PYTHON" - "$REPO_DIR/lib" "$ENV_DIR" "${DRY_RUN:-0}" <<'PY'
import hashlib, io, os, sys, tempfile, zipfile
lib, out_dir, dry_run = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
files = []
for root, dirs, names in os.walk(os.path.join(lib, "skyclass")):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    files += [os.path.join(root, n) for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
buffer = io.BytesIO()
with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
    for path in files:
        info = zipfile.ZipInfo(os.path.relpath(path, lib), date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
        with open(path, "rb") as src:
            zf.writestr(info, src.read())
data = buffer.getvalue()
final = os.path.join(out_dir, f"skyclass-code-{hashlib.sha256(data).hexdigest()[:12]}.zip")
# An existing zip of the same content is kept as it is: a running driver may be importing from it.
if not dry_run and not os.path.exists(final):
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".skyclass-code-", suffix=".zip")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, final)
print(final)
PY
        exit 0
    fi

    # ---------------------------------------------------------------------------------------------------------------
    # env: the archive's name is a hash of everything that decides its content.
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "deploy/package-venv.sh: $PYTHON not found; install Python 3.11 or set PYTHON" >&2
        exit 2
    fi
    REQUIREMENTS_TEXT="$(grep -v '^tensorflow-cpu==' "$REPO_DIR/requirements.txt"; echo "$TF_PACKAGE")"
    PYTHON_ID="$("$PYTHON" -c 'import platform, sys; print(platform.python_version(), sys.base_prefix, platform.machine())')"
    # The Horovod wheel depends on what it is compiled against; the archive also on what is left out of it.
    WHEEL_HASH="$(printf '%s\n' "$REQUIREMENTS_TEXT" "$HOROVOD_SPEC" "${HOROVOD_ENV[*]}" "$PYTHON_ID" |
                  sha256sum | cut -c1-12)"
    ENV_HASH="$(printf '%s\n' "$WHEEL_HASH" "${PACK_EXCLUDES[*]}" | sha256sum | cut -c1-12)"
    OUT="${OUT:-$ENV_DIR/skyclass-env-$ENV_HASH.tar.gz}"
    if [[ "$ACTION" == "env-path" ]]; then
        echo "$OUT"
        exit 0
    fi

    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        BUILD_DIR="${BUILD_DIR:-build/venv-pack}"
    else
        mkdir -p "$(dirname "$OUT")" "$CACHE_DIR"
        # One build per archive at a time: a second submit waits for the first build instead of racing it.
        exec 9>"$OUT.lock"
        flock 9
    fi
    if [[ -f "$OUT" && "${FORCE:-0}" != "1" ]]; then
        echo "reusing $OUT (environment hash $ENV_HASH)"
        exit 0
    fi
    if [[ "${DRY_RUN:-0}" != "1" ]]; then
        BUILD_DIR="${BUILD_DIR:-$(mktemp -d)}"
        # The build venv is ~1.5 GB and only the archive is kept.
        trap 'rm -rf "$BUILD_DIR"' EXIT
    fi
    VENV="$BUILD_DIR/venv"
    WHEELS="$CACHE_DIR/horovod-$WHEEL_HASH"
    TOOLS="$CACHE_DIR/venv-pack"
    PARTIAL="$OUT.partial"

    REQUIREMENTS="$BUILD_DIR/requirements.txt"
    if [[ "${DRY_RUN:-0}" != "1" ]]; then
        echo "building $OUT (environment hash $ENV_HASH) in $BUILD_DIR"
        mkdir -p "$BUILD_DIR"
        printf '%s\n' "$REQUIREMENTS_TEXT" >"$REQUIREMENTS"
    fi

    # venv-pack lives in its own small venv so it is not packed into the archive.
    if [[ "${DRY_RUN:-0}" == "1" || ! -x "$TOOLS/bin/venv-pack" ]]; then
        run "$PYTHON" -m venv "$TOOLS"
        run "$TOOLS/bin/python" -m pip install -q 'venv-pack==0.2.0'
    fi
    run "$PYTHON" -m venv "$VENV"
    run "$VENV/bin/python" -m pip install -q --upgrade pip 'setuptools<70' wheel
    run "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    # Horovod compiles against the TensorFlow just installed (hence no build isolation), with Gloo and without MPI.
    # The wheel is kept in a cache keyed by the same hash: compiling takes minutes, installing it seconds.
    if [[ "${DRY_RUN:-0}" == "1" ]] || ! compgen -G "$WHEELS/horovod-*.whl" >/dev/null; then
        run env "${HOROVOD_ENV[@]}" "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
            --wheel-dir "$WHEELS" "$HOROVOD_SPEC"
    fi
    run "$VENV/bin/python" -m pip install -q --only-binary horovod --find-links "$WHEELS" "$HOROVOD_SPEC"
    run "$VENV/bin/python" -c \
        "import horovod.tensorflow, petastorm, pyspark; from horovod.common.util import gloo_built; assert gloo_built(), 'Horovod without Gloo'"
    # skyclass is shipped per submit (code), never baked into the environment.
    run "$VENV/bin/python" -c \
        "import importlib.util, sys; sys.exit('skyclass must not be in the environment' if importlib.util.find_spec('skyclass') else 0)"
    local excludes=() pattern
    for pattern in "${PACK_EXCLUDES[@]}"; do
        excludes+=(--exclude "$pattern")
    done
    run "$TOOLS/bin/venv-pack" --quiet --prefix "$VENV" --format tar.gz "${excludes[@]}" --output "$PARTIAL" --force
    # Readable by every user that submits; renamed only when complete, so an interrupted build is never reused.
    run chmod 644 "$PARTIAL"
    run mv -f "$PARTIAL" "$OUT"
    if [[ "${DRY_RUN:-0}" != "1" ]]; then
        echo "packed $OUT ($(du -h "$OUT" | cut -f1)); submit with SPARK_MASTER_URL=... deploy/submit-standalone.sh JOB"
    fi
}

# One line: bash has read all of it before main runs.
main "$@"; exit $?
