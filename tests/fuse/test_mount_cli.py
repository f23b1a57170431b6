"""`py3fs mount`: one-line errors, daemon mode, clean unmount on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Mount, fuse_mounted

from py3fs.cluster import LocalCluster

PY3FS = [sys.executable, "-m", "py3fs"]


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PY3FS, "mount", *args], capture_output=True, text=True, timeout=60
    )


def test_errors_are_one_line(
    fuse_cluster: LocalCluster, mount: Mount, tmp_path: Path
) -> None:
    cluster = ["--cluster", str(fuse_cluster.cluster_file)]
    (tmp_path / "file").touch()
    for target, words in [
        (tmp_path / "file", "not a directory"),
        (tmp_path / "missing", "not a directory"),
        (mount.path, "already a mount point"),
    ]:
        out = _mount(str(target), *cluster)
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1, out.stderr
        assert words in out.stderr


def test_daemon_mode(fuse_cluster: LocalCluster, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pid_file = tmp_path / "pid"
    out = _mount(
        str(mnt),
        "--daemon",
        "--cluster",
        str(fuse_cluster.cluster_file),
        "--pid-file",
        str(pid_file),
        "--log-file",
        str(tmp_path / "log"),
    )
    try:
        assert out.returncode == 0, out.stderr
        assert fuse_mounted(mnt)  # mounted before the command returned
        (mnt / "daemon-was-here").write_bytes(b"x")
        assert (mnt / "daemon-was-here").read_bytes() == b"x"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while fuse_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not fuse_mounted(mnt)
    finally:
        if fuse_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
