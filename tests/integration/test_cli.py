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


def test_second_up_starts_nothing_and_keeps_ports(workdir: Path) -> None:
    before = json.loads(py3fs("cluster", "status", "--json", cwd=workdir).stdout)
    proc = py3fs("cluster", "up", cwd=workdir)
    assert "started 0 of 6" in proc.stdout
    after = json.loads(py3fs("cluster", "status", "--json", cwd=workdir).stdout)
    assert [(r["pid"], r["address"]) for r in after] == [
        (r["pid"], r["address"]) for r in before
    ]


def test_up_refuses_to_reshape_an_existing_cluster(workdir: Path) -> None:
    proc = py3fs("cluster", "up", "--storage", "5", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "storage=3" in proc.stderr


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


def test_mkdir_bad_mode_is_a_usage_error(workdir: Path) -> None:
    for mode in ("999", "abc", "17777"):
        proc = py3fs("mkdir", "-m", mode, "/badmode", cwd=workdir, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "mode" in proc.stderr
    py3fs("mkdir", "-m", "700", "/goodmode", cwd=workdir)
    assert "(0700)" in py3fs("stat", "/goodmode", cwd=workdir).stdout


def test_get_and_cat_of_a_directory_fail(workdir: Path) -> None:
    py3fs("mkdir", "-p", "/adir", cwd=workdir)
    out = workdir / "adir-copy"
    proc = py3fs("get", "/adir", str(out), cwd=workdir, check=False)
    assert proc.returncode == 1
    assert "/adir" in proc.stderr
    assert "-r" in proc.stderr
    assert not out.exists()
    proc = py3fs("cat", "/adir", cwd=workdir, check=False)
    assert proc.returncode == 1
    assert "Is a directory" in proc.stderr
    assert proc.stdout == ""


def test_mv_and_put_into_a_directory(workdir: Path) -> None:
    local = workdir / "into.txt"
    local.write_bytes(b"into")
    py3fs("mkdir", "-p", "/into/a", "/into/b", cwd=workdir)
    py3fs("put", str(local), "/into/a/", cwd=workdir)
    py3fs("mv", "/into/a/into.txt", "/into/b/", cwd=workdir)
    assert py3fs("ls", "/into/b", cwd=workdir).stdout.split() == ["into.txt"]
    # A directory named without the trailing slash receives it too.
    py3fs("mv", "/into/b/into.txt", "/into/a", cwd=workdir)
    assert py3fs("cat", "/into/a/into.txt", cwd=workdir).stdout == "into"


def test_put_and_get_recursive(workdir: Path) -> None:
    src = workdir / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    files = {
        "top.bin": os.urandom(1000),
        "sub/a.txt": b"alpha",
        "sub/deeper/b.bin": os.urandom(70_000),
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    proc = py3fs("put", str(src), "/treecopy", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "put -r" in proc.stderr
    py3fs("put", "-r", str(src), "/treecopy", cwd=workdir)
    assert sorted(py3fs("ls", "/treecopy", cwd=workdir).stdout.split()) == [
        "empty/",
        "sub/",
        "top.bin",
    ]
    back = workdir / "back"
    py3fs("get", "-r", "/treecopy", str(back), cwd=workdir)
    for rel, data in files.items():
        assert (back / rel).read_bytes() == data
    assert (back / "empty").is_dir()


def test_errors_name_the_whole_path(workdir: Path) -> None:
    proc = py3fs(
        "get", "/no/such/deep/file", str(workdir / "x"), cwd=workdir, check=False
    )
    assert proc.returncode == 1
    assert "/no/such/deep/file" in proc.stderr
    assert "No such file or directory" in proc.stderr
    py3fs("put", str(workdir / "in.bin"), "/named.bin", cwd=workdir)
    missing = workdir / "missing-dir" / "out.bin"
    proc = py3fs("get", "/named.bin", str(missing), cwd=workdir, check=False)
    assert proc.returncode == 1
    assert str(missing) in proc.stderr
    assert "py3fs-partial" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_df_separates_logical_and_raw_space(workdir: Path) -> None:
    st = json.loads(py3fs("df", "--json", cwd=workdir).stdout)
    assert st["replicas"] == 3
    logical, raw = st["logical"], st["raw"]
    assert raw["size"] == raw["used"] + raw["avail"]
    assert logical["size"] == raw["size"] // 3
    assert logical["used"] == raw["used"] // 3
    text = py3fs("df", cwd=workdir).stdout
    assert text.splitlines()[1].startswith("logical")
    assert text.splitlines()[2].startswith("raw")
