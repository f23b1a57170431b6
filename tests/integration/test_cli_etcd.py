"""`py3fs cluster up --kv etcd`: a local cluster whose KV store is a 3-member etcd
run as processes of the cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from etcd_harness import require_etcd
from test_cli import py3fs


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    require_etcd()
    return tmp_path


def test_cluster_up_with_etcd(workdir: Path) -> None:
    try:
        out = py3fs("cluster", "up", "--kv", "etcd", cwd=workdir).stdout
        assert "KV store:     etcd://127.0.0.1:" in out
        rows = json.loads(py3fs("cluster", "status", "--json", cwd=workdir).stdout)
        roles = sorted(r["role"] for r in rows)
        assert roles == ["etcd"] * 3 + ["meta"] * 2 + ["mgmtd"] + ["storage"] * 3
        assert all(r["state"] == "running" for r in rows)
        assert (workdir / ".py3fs" / "etcd" / "etcd-1").is_dir()
        assert (workdir / ".py3fs" / "run" / "etcd-1.log").exists()

        payload = os.urandom(100_000)
        (workdir / "in.bin").write_bytes(payload)
        py3fs("mkdir", "/d", cwd=workdir)
        py3fs("put", str(workdir / "in.bin"), "/d/a.bin", cwd=workdir)
        py3fs("get", "/d/a.bin", str(workdir / "out.bin"), cwd=workdir)
        assert (workdir / "out.bin").read_bytes() == payload

        # down stops etcd too; up on the same directory brings the data back.
        assert "stopped 9 process" in py3fs("cluster", "down", cwd=workdir).stdout
        rows = json.loads(py3fs("cluster", "status", "--json", cwd=workdir).stdout)
        assert {r["state"] for r in rows} == {"stopped"}
        py3fs("cluster", "up", "--kv", "etcd", cwd=workdir)
        assert py3fs("ls", "/d", cwd=workdir).stdout.split() == ["a.bin"]
        py3fs("get", "/d/a.bin", str(workdir / "again.bin"), cwd=workdir)
        assert (workdir / "again.bin").read_bytes() == payload
    finally:
        py3fs("cluster", "down", cwd=workdir, check=False)
