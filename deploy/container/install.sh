#!/bin/sh
# Install steps of the Ketenpost container image (deploy/container/Dockerfile).
#
# The Dockerfile runs this script, and so does tests/deploy/test_container.py in a fresh
# virtual environment: a broken step fails the test suite, not the first image build.
#
#   install.sh build SOURCE WHEELS    build wheels of ketenpost[postgres] and all its
#                                     dependencies from the source tree SOURCE into WHEELS
#   install.sh runtime WHEELS PREFIX  make a virtual environment PREFIX holding exactly those
#                                     wheels (no index), byte-compiled ahead of time so the
#                                     read-only root file system needs no __pycache__ writes
#
# PYTHON names the interpreter (default: python3).
set -eu

PYTHON="${PYTHON:-python3}"

usage() {
    echo "usage: install.sh build SOURCE WHEELS | install.sh runtime WHEELS PREFIX" >&2
    exit 2
}

[ "$#" -eq 3 ] || usage

case "$1" in
build)
    source_dir="$2"
    wheels="$3"
    mkdir -p "$wheels"
    "$PYTHON" -m pip wheel --no-cache-dir --disable-pip-version-check --quiet \
        --wheel-dir "$wheels" "${source_dir}[postgres]"
    ;;
runtime)
    wheels="$2"
    prefix="$3"
    "$PYTHON" -m venv "$prefix"
    "$prefix/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --quiet \
        --no-index --find-links "$wheels" "ketenpost[postgres]"
    # The PostgreSQL store is imported lazily by the gateway; import it now so a missing
    # extra fails the build, not the first `serve`.
    "$prefix/bin/python" -c "import asyncpg, gateway.store.postgres, adapters.cli, ketenpost"
    "$prefix/bin/python" -m compileall -q "$prefix"
    "$prefix/bin/ketenpost" --help >/dev/null
    ;;
*)
    usage
    ;;
esac
