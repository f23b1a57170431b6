"""The `py3fs` command end to end: cluster up/status/down and the file commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def py3fs(
    *args: str, cwd: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "py3fs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PY3FS_CLUSTER"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"py3fs {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cwd = tmp_path_factory.mktemp("cli")
    try:
        py3fs("cluster", "up", cwd=cwd)
        yield cwd
    finally:
        py3fs("cluster", "down", cwd=cwd, check=False)


def test_status_json_lists_every_process(workdir: Path) -> None:
    rows = json.loads(py3fs("cluster", "status", "--json", cwd=workdir).stdout)
    roles = sorted(r["role"] for r in rows)
    assert roles == ["meta", "meta", "mgmtd", "storage", "storage", "storage"]
    for r in rows:
        assert r["state"] == "running"
        assert r["pid"] > 0
        assert r["address"].startswith("127.0.0.1:")
        assert r["node_id"] > 0
    assert (workdir / ".py3fs" / "cluster.toml").exists()


def test_second_up_refuses(workdir: Path) -> None:
    proc = py3fs("cluster", "up", cwd=workdir, check=False)
    assert proc.returncode == 1
    assert "already running" in proc.stderr


def test_file_commands(workdir: Path) -> None:
    local = workdir / "in.bin"
    payload = os.urandom(5 * 1024 * 1024 + 3)
    local.write_bytes(payload)
    py3fs("mkdir", "-p", "/data/sub", cwd=workdir)
    py3fs("put", str(local), "/data/sub/a.bin", cwd=workdir)
    assert py3fs("ls", "/data/sub", cwd=workdir).stdout.split() == ["a.bin"]
    listing = py3fs("ls", "-l", "/data/sub", cwd=workdir).stdout
    assert str(len(payload)) in listing
    assert "a.bin" in py3fs("stat", "/data/sub/a.bin", cwd=workdir).stdout

    py3fs("mv", "/data/sub/a.bin", "/data/b.bin", cwd=workdir)
    out = workdir / "out.bin"
    py3fs("get", "/data/b.bin", str(out), cwd=workdir)
    assert out.read_bytes() == payload

    py3fs("rm", "-r", "/data", cwd=workdir)
    assert py3fs("ls", "/", cwd=workdir).stdout.split() == []


def test_errors_are_one_line_and_exit_1(workdir: Path) -> None:
    proc = py3fs("get", "/no/such/file", str(workdir / "x"), cwd=workdir, check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "NotFound" in proc.stderr
    py3fs("mkdir", "/d", cwd=workdir)
    py3fs("put", str(workdir / "in.bin"), "/d/f", cwd=workdir)
    proc = py3fs("rm", "/d", cwd=workdir, check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1


def test_commands_without_a_cluster_explain(tmp_path: Path) -> None:
    proc = py3fs("ls", "/", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "py3fs cluster up" in proc.stderr
