#!/usr/bin/env bash
# Make ./.venv with py3fs and its development tools (idempotent).
# On Debian without the venv module it installs python3-venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "py3fs needs Python 3.11 or newer as $PY" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq python3-venv python3-pip >/dev/null
        "$PY" -m venv .venv
    fi
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.py3fs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    touch "$stamp"
fi
