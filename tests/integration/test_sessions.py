"""Write sessions with leases, and O_APPEND across clients (issue 9, acceptance 3).

Writers run in child processes (real clients) so they can be killed -9.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import client_for, list_chunks, running_cluster

from client import Client
from py3fs import ids
from py3fs.cluster import LocalCluster

MiB = 1 << 20
LEASE = 2.0
RECORD = 64

WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from client import Client

    async def main(cluster, path, mode, lease):
        async with Client.from_cluster(cluster, session_lease=lease) as fs:
            f = await fs.open(path, "wb")
            i = 0
            while True:
                if mode == "grow":
                    await f.write(bytes([i % 251 + 1]) * (1 << 20))
                elif i == 0:
                    await f.write(b"x" * (1 << 20))
                i += 1
                print(i, flush=True)
                await asyncio.sleep(0.05 if mode == "grow" else 0.5)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
    """
)

APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from client import Client

    async def main(cluster, path, name, n):
        async with Client.from_cluster(cluster) as fs:
            async with await fs.open(path, "ab") as f:
                for i in range(n):
                    rec = f"{name} {i:06d}".encode().ljust(63) + b"\\n"
                    await f.write(rec)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
async def fs(cluster: LocalCluster) -> AsyncIterator[Client]:
    client = client_for(cluster)
    try:
        yield client
    finally:
        await client.aclose()


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _progress(proc: subprocess.Popen[str], at_least: int) -> int:
    """Wait for the writer to report `at_least` completed writes."""
    assert proc.stdout is not None
    done = 0
    while done < at_least:
        line = proc.stdout.readline()
        assert line, f"writer exited ({proc.poll()})"
        done = int(line)
    return done


async def _chunks(fs: Client, inode: int) -> int:
    view = await fs.routing.refresh()
    total = 0
    for target in view.targets:
        total += sum(
            1
            for m in await list_chunks(fs, view, target)
            if m.chunk_id.startswith(ids.inode_prefix(inode))
        )
    return total


async def _until(pred, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "not reached within the lease"
        await asyncio.sleep(0.2)


async def test_killed_writer_gets_length_from_storage(
    fs: Client, cluster: LocalCluster
) -> None:
    proc = _spawn(WRITER, str(cluster.cluster_file), "/crash.bin", "grow", str(LEASE))
    try:
        acked = _progress(proc, 5)
        node = await fs.stat("/crash.bin")
        assert node.length == 0  # never fsynced or closed: meta does not know yet
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Writes acknowledged before the kill are on storage; one more may be.
    async def recovered() -> bool:
        return (await fs.stat("/crash.bin")).length >= acked * MiB

    await _until(recovered, LEASE + 10)
    length = (await fs.stat("/crash.bin")).length
    assert length in (acked * MiB, (acked + 1) * MiB)
    data = await fs.read_file("/crash.bin")
    assert len(data) == length
    for i in range(length // MiB):
        assert data[i * MiB : (i + 1) * MiB] == bytes([i % 251 + 1]) * MiB, i
    # No chunk leaks: once unlinked, GC removes every chunk.
    inode = node.inode
    assert await _chunks(fs, inode) > 0
    await fs.unlink("/crash.bin")

    async def gone() -> bool:
        return await _chunks(fs, inode) == 0

    await _until(gone, 15)


async def test_unlinked_file_of_killed_writer_is_collected(
    fs: Client, cluster: LocalCluster
) -> None:
    proc = _spawn(WRITER, str(cluster.cluster_file), "/held.bin", "hold", str(LEASE))
    try:
        _progress(proc, 1)
        node = await fs.stat("/held.bin")
        await fs.unlink("/held.bin")
        await asyncio.sleep(LEASE + 1.5)  # the writer renews: data must stay
        assert await _chunks(fs, node.inode) == 3
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def gone() -> bool:
        return await _chunks(fs, node.inode) == 0

    await _until(gone, LEASE + 15)


async def test_two_clients_append_every_record(
    fs: Client, cluster: LocalCluster
) -> None:
    n = 150
    await fs.write_file("/log.txt", b"")
    procs = [
        _spawn(APPENDER, str(cluster.cluster_file), "/log.txt", name, str(n))
        for name in ("alpha", "beta")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    data = await fs.read_file("/log.txt")
    assert len(data) == 2 * n * RECORD
    records = [data[i : i + RECORD] for i in range(0, len(data), RECORD)]
    want = {
        f"{name} {i:06d}".encode().ljust(63) + b"\n"
        for name in ("alpha", "beta")
        for i in range(n)
    }
    assert set(records) == want
