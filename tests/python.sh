#!/usr/bin/env bash
# Tests the Python client (clients/python) against a real three-node cluster that the
# tests start themselves (clients/python/tests/conftest.py): makes a virtual
# environment under ~/.cache/session-queue/, installs the package with its test
# extra into it (`pip install ./clients/python[test]`), and runs pytest with the
# node binary. Extra arguments go to pytest (e.g. -k websocket).
#
#   SQ_BIN       the node binary (default: built here, in release mode)
#   SQ_PY_VENV   the virtual environment (default: ~/.cache/session-queue/venv-python)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
venv=${SQ_PY_VENV:-$HOME/.cache/session-queue/venv-python}

# Python 3 with venv and pip (Debian splits them into python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install Python 3 with its venv module first" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: python3 python3-venv" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3 python3-venv >/dev/null
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check "$root/clients/python[test]"
# The same version number may hold other code: always install this checkout's.
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$root/clients/python"

if [ -z "${SQ_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  SQ_BIN="$CARGO_TARGET_DIR/release/session-queue"
fi
export SQ_BIN

# Run from the tests folder, so the installed package (not the source tree) is the
# one imported.
cd "$root/clients/python/tests"
set +e
"$py" -m pytest -p no:cacheprovider -q -rs "$@"
status=$?
set -e
# pytest's 5 (no test collected) must not pass as success.
if [ "$status" -eq 5 ]; then
  echo "python.sh: pytest collected no test" >&2
  exit 1
fi
exit "$status"
