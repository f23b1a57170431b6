"""USRBIO without a mount (`client.usrbio.Usrbio`, in-process agent) and
`py3fs bench`, against a real cluster."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import ClientConfig
from client.usrbio import Usrbio
from py3fs.cluster import LocalCluster

MiB = 1 << 20


def _errno(fn: object, *args: object) -> int:
    """The errno of the OSError `fn(*args)` raises."""
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("no OSError raised")


@pytest.fixture
def u(cluster: LocalCluster) -> Iterator[Usrbio]:
    cfg = ClientConfig(
        mgmt=cluster.mgmt_addresses, token_file=str(cluster.admin_token_file)
    )
    with Usrbio(cfg) as usrbio:
        yield usrbio


def test_write_then_read_batches(u: Usrbio) -> None:
    iov = u.iovec(8 * MiB)
    data = os.urandom(4 * MiB)
    iov.view[: 4 * MiB] = data
    wring = u.ioring(64, for_read=False)
    fd = u.open("/u1.bin", "wb")
    for i in range(16):
        wring.prepare(iov[i * 256 * 1024 : (i + 1) * 256 * 1024], False, fd, i << 18)
    done = wring.submit().wait(min_results=16)
    assert [d.result for d in done] == [256 * 1024] * 16
    # The agent reported the length before posting completions.
    assert u._loop.run(u.client.stat("/u1.bin")).length == 4 * MiB
    rring = u.ioring(1024)
    rfd = u.open("/u1.bin", "rb")
    offsets = [(i * 4096 * 37) % (4 * MiB - 4096) for i in range(500)]
    for i, off in enumerate(offsets):
        rring.prepare(
            iov[4 * MiB + i * 4096 : 4 * MiB + (i + 1) * 4096], True, rfd, off, i
        )
    done = rring.submit().wait(min_results=500)
    assert len(done) == 500
    for d in done:
        off = offsets[d.userdata]
        assert d.result == 4096
        assert bytes(d.view) == data[off : off + 4096]
    rring.close()
    wring.close()
    u.free_iovec(iov)


def test_errors_and_eof(u: Usrbio) -> None:
    iov = u.iovec(MiB)
    u._loop.run(u.client.write_file("/u2.bin", b"z" * 5000))
    rring = u.ioring(8)
    wring = u.ioring(8, for_read=False)
    rfd = u.open("/u2.bin", "rb")
    assert _errno(rring.prepare, iov[:10], True, 999, 0) == errno.EBADF
    assert _errno(wring.prepare, iov[:10], False, rfd, 0) == errno.EACCES
    assert _errno(rring.prepare, iov[:0], True, rfd, 0) == errno.EINVAL
    rring.prepare(iov[:8192], True, rfd, 1000, "short")
    rring.prepare(iov[8192:9000], True, rfd, 7000, "past")
    done = {d.userdata: d.result for d in rring.submit().wait(min_results=2)}
    assert done == {"short": 4000, "past": 0}
    assert rring.wait(min_results=1, timeout=0.05) == []
    rring.close()
    wring.close()
    u.free_iovec(iov)


def test_ring_of_100k_entries_and_threads(u: Usrbio) -> None:
    u._loop.run(u.client.write_file("/u3.bin", b"q" * 100))
    iov = u.iovec(2 * MiB)
    ring = u.ioring(100_000)
    fd = u.open("/u3.bin", "rb")
    for i in range(100_000):
        ring.prepare(iov[i * 16 : i * 16 + 16], True, fd, 100 + i)
    assert _errno(ring.prepare, iov[:16], True, fd, 0) == errno.EAGAIN
    done = ring.submit().wait(min_results=100_000)
    assert len(done) == 100_000
    assert {d.result for d in done} == {0}
    ring.close()

    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            my = u.open("/u3.bin", "rb")
            r = u.ioring(4)
            r.prepare(iov[i * 100 : (i + 1) * 100], True, my, 0)
            [d] = r.submit().wait(min_results=1)
            assert d.result == 100
            r.close()
            u.close(my)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert bytes(iov.view[:800]) == b"q" * 800
    u.free_iovec(iov)


JOB = """
[global]
directory=/bench
size=8m
bs=1m
iodepth=8
verify=crc32c

[w]
rw=write

[r]
rw=read

[rr]
rw=randread
bs=4k
size=1m
chunk_size=64k
iodepth=16
"""


def test_bench_cli_json(cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "job.fio").write_text(JOB)
    cmd = [sys.executable, "-m", "py3fs", "bench", str(tmp_path / "job.fio")]
    cmd += ["--output-format=json", "--cluster", str(cluster.cluster_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    jobs = {j["jobname"]: j for j in report["jobs"]}
    assert set(jobs) == {"w", "r", "rr"}
    assert jobs["w"]["write"]["io_bytes"] == 8 * MiB
    assert jobs["r"]["read"]["io_bytes"] == 8 * MiB
    assert jobs["rr"]["read"]["total_ios"] == 256
    for j in jobs.values():
        assert j["error"] == 0
        assert j["verify"]["errors"] == 0
        assert j["verify"]["verified_ios"] > 0
        side = j["write"] if j["jobname"] == "w" else j["read"]
        assert side["bw"] > 0
        assert side["iops"] > 0
        assert side["clat_ns"]["mean"] > 0
        assert "99.000000" in side["clat_ns"]["percentile"]
