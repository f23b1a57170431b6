"""Stable local clusters: ports kept in the cluster file, `cluster up` restarts only
what is down, `cluster down` kills only processes that are still ours, and a
service refuses a port that is taken or out of range."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from py3fs.procs import pid_alive


def py3fs(
    *args: str, cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "py3fs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "PY3FS_CLUSTER"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"py3fs {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def status(cwd: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(py3fs("cluster", "status", "--json", cwd=cwd).stdout)
    return {f"{r['role']}-{r['node_id']}": r for r in rows}


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cwd = tmp_path_factory.mktemp("stable")
    try:
        py3fs("cluster", "up", "--no-fsync", "--meta", "1", cwd=cwd)
        payload = cwd / "payload.bin"
        payload.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
        py3fs("put", str(payload), "/kept.bin", cwd=cwd)
        yield cwd
    finally:
        py3fs("cluster", "down", cwd=cwd, check=False)


def reads_back(cwd: Path) -> bool:
    out = cwd / "readback.bin"
    py3fs("get", "/kept.bin", str(out), cwd=cwd)
    return out.read_bytes() == (cwd / "payload.bin").read_bytes()


def test_kill9_storage_then_up_restarts_only_it(workdir: Path) -> None:
    cluster_toml = (workdir / ".py3fs" / "cluster.toml").read_text()
    before = status(workdir)
    victim = before["storage-22"]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_dead(victim["pid"])
    assert status(workdir)["storage-22"]["state"] == "stopped"

    proc = py3fs("cluster", "up", cwd=workdir)
    assert "started 1 of 5" in proc.stdout
    after = status(workdir)
    assert after["storage-22"]["state"] == "running"
    assert after["storage-22"]["pid"] != victim["pid"]
    assert after["storage-22"]["address"] == victim["address"]
    for name, row in before.items():
        if name != "storage-22":
            assert after[name]["pid"] == row["pid"], name
    assert (workdir / ".py3fs" / "cluster.toml").read_text() == cluster_toml
    assert reads_back(workdir)


def test_down_then_up_keeps_every_port_and_the_data(workdir: Path) -> None:
    cluster_toml = (workdir / ".py3fs" / "cluster.toml").read_text()
    before = status(workdir)
    py3fs("cluster", "down", cwd=workdir)
    assert all(r["state"] == "stopped" for r in status(workdir).values())
    py3fs("cluster", "up", cwd=workdir)
    after = status(workdir)
    assert {n: r["address"] for n, r in after.items()} == {
        n: r["address"] for n, r in before.items()
    }
    assert all(r["state"] == "running" for r in after.values())
    assert (workdir / ".py3fs" / "cluster.toml").read_text() == cluster_toml
    assert reads_back(workdir)


def test_second_server_on_a_taken_port_fails(workdir: Path, tmp_path: Path) -> None:
    mgmtd = status(workdir)["mgmtd-1"]
    port = mgmtd["address"].rpartition(":")[2]
    kv = f"sqlite://{tmp_path / 'kv.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "mgmt_service", "--kv", kv, "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "cannot bind" in proc.stdout + proc.stderr
    # The running mgmtd still answers alone.
    assert reads_back(workdir)


def test_port_out_of_range_is_refused() -> None:
    for module in ("mgmt_service", "meta_service", "storage_service"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--port", "99999"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (module, proc.stderr)
        assert "99999" in proc.stderr


def test_down_leaves_a_reused_pid_alone(workdir: Path) -> None:
    """Run last: it stops the cluster. A pid recorded in cluster.json that now
    names another process (pid reuse) is not ours to kill."""
    py3fs("cluster", "down", cwd=workdir)
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        state_file = workdir / ".py3fs" / "cluster.json"
        state = json.loads(state_file.read_text())
        state["processes"][-1]["pid"] = stranger.pid
        state_file.write_text(json.dumps(state))
        assert all(r["state"] == "stopped" for r in status(workdir).values())
        proc = py3fs("cluster", "down", cwd=workdir)
        assert "stopped 0 process(es)" in proc.stdout
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
