"""Bounded work and memory per request (issue 11), against a real cluster.

Before: truncating a file whose length was inflated to 16 GiB made one empty
chunk file per chunk slot (12,288 in 11 s); a storage node allocated each
frame's announced payload before the bytes arrived (20 idle connections
announcing 64 MiB held 1.3 GB), with no idle timeout. Now truncation touches
only chunks that exist, a WRITE without a capability is answered at once
before any payload is allocated (what follows is discarded through a small
buffer, and a sender that never delivers is cut off after the payload
timeout), and an idle connection is closed after the idle timeout.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FAST, client_for, list_chunks, running_cluster

from py3fs import ids, wire
from py3fs.cluster import LocalCluster
from py3fs.proto.messages import SyncReq

GiB = 1 << 30
ANNOUNCED = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    extra = {**FAST, "storage": [*FAST["storage"], "--idle-timeout", "2s"]}
    with running_cluster(tmp_path_factory.mktemp("bounded"), extra=extra) as c:
        yield c


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_truncate_touches_only_existing_chunks(cluster: LocalCluster) -> None:
    async with client_for(cluster) as fs:
        await fs.write_file("/inflated", b"x" * 1000)
        node = await fs.stat("/inflated")
        await fs.meta.sync(SyncReq(inode=node.inode, length=16 * GiB))
        start = time.monotonic()
        await fs.truncate("/inflated", 10)
        took = time.monotonic() - start
        assert (await fs.read_file("/inflated")) == b"x" * 10
        view = await fs.routing.refresh()
        files = 0
        for target in view.targets:
            held = await list_chunks(fs, view, target)
            files += sum(ids.split_chunk_id(m.chunk_id)[0] == node.inode for m in held)
        assert files <= 3  # chunk 0 on each replica, nothing else
        assert took < 60


async def test_idle_giant_frames_cost_no_memory(cluster: LocalCluster) -> None:
    async with client_for(cluster) as fs:
        view = await fs.routing.refresh()
    chain = next(iter(view.chains.values()))
    host, port = view.target_address(chain.targets[0]).rsplit(":", 1)
    # The head of the chain serves the WRITE: measure that process.
    head_node = view.targets[chain.targets[0]].node_id
    head_pid = next(p.pid for p in cluster.storages if p.node_id == head_node)
    before = rss_mib(head_pid)
    req = wire.WriteReq(
        chain_id=chain.chain_id,
        chain_ver=chain.version,
        target_id=chain.targets[0],
        chunk_id=ids.chunk_id(1 << 40, 0),
        offset=0,
        chunk_size=ANNOUNCED,
        data_crc=0,
        client_id="giant",
        request_id=1,
    )
    frame = wire.encode_frame(wire.MsgType.WRITE, 1, req, ANNOUNCED)
    socks = []
    for _ in range(20):
        s = socket.create_connection((host, int(port)))
        s.sendall(frame)  # the header announces 64 MiB; none of it follows
        socks.append(s)
    await asyncio.sleep(1.0)
    grown = rss_mib(head_pid) - before
    refused = 0
    for s in socks:
        s.settimeout(5)
        data = s.recv(65536)
        refused += b"capability" in data
        s.close()
    assert refused == 20  # each got PermissionDenied at once
    assert grown < 100, f"storage grew {grown:.0f} MiB"

    # A connection that sends nothing is closed after the idle timeout (2 s).
    idle = socket.create_connection((host, int(port)))
    idle.settimeout(10)
    start = time.monotonic()
    assert idle.recv(1) == b""
    assert time.monotonic() - start < 8
    idle.close()
