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


def test_daemon_against_a_dead_cluster_fails_and_logs(tmp_path: Path) -> None:
    from py3fs.etcd_local import free_ports

    # A cluster file whose mgmtd is gone: nothing listens on that port.
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(f'[client]\nmgmt = ["127.0.0.1:{free_ports(1)[0]}"]\n')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "daemon.log"
    out = _mount(
        str(mnt), "--daemon", "--cluster", str(cluster_file), "--log-file", str(log)
    )
    assert out.returncode == 1
    assert not fuse_mounted(mnt)
    assert out.stderr.count("\n") == 1, out.stderr
    assert "cannot reach the cluster" in out.stderr
    assert str(log) in out.stderr
    assert "cannot reach the cluster" in log.read_text()


def test_daemon_logs_somewhere_by_default(tmp_path: Path) -> None:
    from fuse_mount.mount import daemon_log_file

    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text('[client]\nmgmt = ["127.0.0.1:1"]\n')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    default_log = Path(daemon_log_file(str(mnt)))
    default_log.unlink(missing_ok=True)
    try:
        out = _mount(str(mnt), "--daemon", "--cluster", str(cluster_file))
        assert out.returncode == 1
        assert str(default_log) in out.stderr
        assert "cannot reach the cluster" in default_log.read_text()
    finally:
        default_log.unlink(missing_ok=True)
