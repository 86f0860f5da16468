#!/usr/bin/env bash
# Builds .venv-hats: a separate virtual environment with LSDB (and its own numpy/pyarrow/pandas), used only to
# read skyclass's HATS exports back the way a survey user would (`make check-hats`, tests/test_hats_lsdb.py).
# It is never the pinned stack: LSDB needs a newer pyarrow than Petastorm/Horovod allow.
# Cached: rebuilt only when LSDB_SPEC or the Python version changes (the stamp records both).
#
# usage: deploy/hats-venv.sh [VENV_DIR]      (prints the venv's python on the last line of its output)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-${HATS_VENV:-$REPO_DIR/.venv-hats}}"
PYTHON="${PYTHON:-python3.11}"
# Pinned so that a cached venv and a fresh one read the same way; bump deliberately.
LSDB_SPEC="${LSDB_SPEC:-lsdb==0.11.1 hats==0.11.1}"
STAMP="$VENV_DIR/.skyclass-hats-stamp"
WANT="$LSDB_SPEC $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV_DIR/bin/python" ]]; then
    echo "$VENV_DIR/bin/python"
    exit 0
fi
echo "building $VENV_DIR ($LSDB_SPEC)" >&2
rm -rf "$VENV_DIR"
"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install -q --upgrade pip >&2
# shellcheck disable=SC2086  # LSDB_SPEC is a list of requirement specifiers
"$VENV_DIR/bin/python" -m pip install -q $LSDB_SPEC >&2
"$VENV_DIR/bin/python" -c "import lsdb, hats; print('lsdb', lsdb.__version__, 'hats', hats.__version__)" >&2
echo "$WANT" > "$STAMP"
echo "$VENV_DIR/bin/python"
