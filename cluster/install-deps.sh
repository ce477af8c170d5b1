#!/usr/bin/env bash
# Installs what building Session Queue needs and a fresh Debian/Ubuntu machine may lack:
# a C++ compiler and libclang (RocksDB is built from source), curl, Rust itself, and
# for the tests libfaketime (the `faketime` package), fusermount3 (`fuse3`) and
# Python with venv (`python3-venv`).
# Installs only what is missing; safe to run again.
set -euo pipefail

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v git >/dev/null 2>&1 || missing+=(git)
# bindgen loads libclang itself (libclang.so or libclang-N.so.*); libclang-cpp, which
# some images carry alone, is a different library and does not do.
[ -n "${LIBCLANG_PATH:-}" ] || have_pkg libclang-dev || ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
have_pkg ca-certificates || missing+=(ca-certificates)
# The clock test (tests/clock.rs) steps the nodes' wall clocks with libfaketime
# (preloaded into the node processes only).
have_pkg libfaketime || missing+=(faketime)
# The power-loss tests (tests/lossyfs, tests/power_loss_cluster.rs, the fault run)
# mount FUSE filesystems with fusermount3.
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
# The OpenAPI test (tests/openapi.rs) installs its PyPI tools into a Python venv.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install these first: ${missing[*]}" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    exit 0
  fi
  echo "installing Rust (rustup)" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
fi
