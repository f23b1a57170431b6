#!/usr/bin/env bash
# Build the py3fs docker image without pulling anything from a registry:
#   1. debootstrap a Debian bookworm root file system (Debian's own mirror),
#      with python3, fuse3 and etcd from Debian's packages;
#   2. `docker import` it as py3fs-base:bookworm;
#   3. build py3fs and its Python dependencies as wheels on this host (PyPI),
#      and `docker build` the image py3fs:latest on top of the base.
# Idempotent: the base image is made once (delete it to refresh it).
# Usage: deploy/build-image.sh [TAG]   (needs root, debootstrap, a running dockerd)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-py3fs:latest}
BASE=py3fs-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILD=deploy/build
PACKAGES=python3,python3-venv,libfuse3-3,fuse3,etcd-server,ca-certificates,procps,iproute2

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    root=$(mktemp -d /var/tmp/py3fs-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "build-image: debootstrap bookworm into $root" >&2
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >&2
    # Keep the image small: no apt lists, caches or docs.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar -C "$root" -c . | docker import - "$BASE" >&2
fi

# Wheels for py3fs (core + FUSE) and every dependency, built with this host's
# pip: the container's Python (Debian's 3.11) installs them with --no-index.
rm -rf "$BUILD"
mkdir -p "$BUILD/wheels"
PIP=${PIP:-.venv/bin/python -m pip}
$PIP wheel -q --disable-pip-version-check --wheel-dir "$BUILD/wheels" ".[fuse]" >&2
docker build -q -t "$TAG" -f deploy/Dockerfile "$BUILD" >&2
echo "$TAG"
