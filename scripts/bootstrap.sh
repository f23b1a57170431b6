#!/usr/bin/env bash
# Make ./.venv with py3fs and everything its tests use (idempotent, quiet when done).
# System packages come from Debian's apt (with sudo when not root): FUSE 3 for the
# mount, fio for the benchmarks, etcd for the etcd KV backend, python3-venv,
# iproute2 + nftables for the partition tests (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
APT_PACKAGES=(python3-venv python3-pip python3-dev gcc pkg-config fuse3 libfuse3-dev fio etcd-server rsync iproute2 nftables)

missing=()
if command -v dpkg-query >/dev/null; then
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
fi
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "bootstrap: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "py3fs needs Python 3.11 or newer as $PY" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.py3fs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    touch "$stamp"
fi

# SGLang and LMCache for their integration tests (tests/integration/test_sglang_
# hicache.py, test_lmcache_plugin.py). Their full installs pin CUDA torch builds, so
# they go in without dependencies, plus what their HiCache / connector import paths
# need; torch stays the pinned CPU build. PY3FS_SKIP_ML_INTEGRATIONS=1 skips this.
ML_INTEGRATIONS=(sglang==0.5.23 lmcache==0.5.6 triton==3.9.0 numba==0.68.1 llvmlite==0.50.0)
ML_IMPORT_DEPS=(orjson psutil pybase64 requests pillow packaging starlette pydantic
    pyzmq ipython aiohttp transformers dill anyio cachetools prometheus_client
    py-cpuinfo aiofile caio cryptography cffi)
ml_stamp=.venv/.py3fs-ml-integrations
if [ "${PY3FS_SKIP_ML_INTEGRATIONS:-0}" != 1 ] &&
    { [ ! -f "$ml_stamp" ] || [ scripts/bootstrap.sh -nt "$ml_stamp" ]; }; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        "${ML_INTEGRATIONS[@]}"
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        -c <(echo "torch==2.13.0") "${ML_IMPORT_DEPS[@]}"
    touch "$ml_stamp"
fi
