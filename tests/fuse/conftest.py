"""A real cluster and a real FUSE mount of it (`python -m fuse_mount`).

Skipped, with the reason, where FUSE cannot work: no /dev/fuse, no fusermount3,
no pyfuse3, or /dev/fuse not openable (mounting needs root on our machines).
The mount process is always stopped and the mount point always unmounted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import running_cluster

from py3fs.cluster import LocalCluster

MOUNT_TIMEOUT = 30.0


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse in this environment"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible (mounting needs root here)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed (pip install pyfuse3; needs libfuse3-dev)"
    return None


_REASON = _fuse_unavailable()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)


def fuse_mounted(path: Path) -> bool:
    from fuse_mount.mount import is_mounted

    return is_mounted(str(path), "fuse.hf3fs")


class Mount:
    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.path = path
        self.proc = proc
        self.log = log

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if fuse_mounted(self.path):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)


def start_mount(
    cluster: LocalCluster, path: Path, log: Path, env: dict[str, str] | None = None
) -> Mount:
    path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fuse_mount", str(path)]
    cmd += ["--cluster", str(cluster.cluster_file)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    mount = Mount(path, proc, log)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    try:
        while not fuse_mounted(path):
            if proc.poll() is not None:
                raise RuntimeError(f"mount exited {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not mounted after {MOUNT_TIMEOUT}s: {log.read_text()}"
                )
            time.sleep(0.05)
    except BaseException:
        mount.stop()
        raise
    return mount


@pytest.fixture(scope="module")
def fuse_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def mount(
    fuse_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    # Not under pytest's basetemp: that is 0700, and tests run commands as
    # another user on the mount.
    base = Path(tempfile.mkdtemp(prefix="py3fs-fuse-"))
    base.chmod(0o755)
    log = tmp_path_factory.mktemp("fuse") / "mount.log"
    try:
        m = start_mount(fuse_cluster, base / "mnt", log)
        try:
            yield m
        finally:
            m.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # Unexpected tracebacks in the daemon fail the module's tests late but loudly.
    text = m.log.read_text()
    assert "Traceback" not in text, text[-4000:]


@pytest.fixture
def mnt(mount: Mount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory on the mount for one test."""
    d = mount.path / request.node.name.replace("[", "_").replace("]", "")
    d.mkdir()
    d.chmod(0o777)
    return d
