"""Same-host reads (client.local_read): a client on a storage node's host gets
the chunk's data file over the node's Unix socket and verifies what it reads."""

from __future__ import annotations

import os
import re
import urllib.request

import pytest
from harness import client_for

from client import Client
from client.local_read import read_verified
from py3fs import errors, ids, wire
from py3fs.cluster import LocalCluster
from py3fs.dataplane import DataClient

MiB = 1024 * 1024


def local_read_bytes(cluster: LocalCluster) -> int:
    """Bytes the storage nodes served as data files (their /metrics)."""
    total = 0
    for proc in cluster.procs:
        if proc.role != "storage":
            continue
        with urllib.request.urlopen(f"http://{proc.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r'py3fs_storage_bytes_total\{op="read_local"\} (\S+)', text)
        total += int(float(m.group(1))) if m else 0
    return total


async def _chunk(fs: Client, path: str, index: int) -> tuple[str, wire.ReadIO, bytes]:
    """Address, a whole-chunk ReadIO at a serving replica, and a read cap."""
    node = await fs.stat(path)
    assert node.layout is not None
    view = await fs.routing.refresh()
    chain = view.chain(node.layout.chains[index % len(node.layout.chains)])
    target = chain.targets[-1]
    io = wire.ReadIO(
        target,
        ids.chunk_id(node.inode, index),
        0,
        node.layout.chunk_size,
        chain.chain_id,
        chain.version,
    )
    cap = await fs.storage.cap(node.inode, False)
    return view.target_address(target), io, cap


async def test_reads_take_the_data_file_and_match(
    fs: Client, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(9 * MiB + 12345)
    await fs.write_file("/local.bin", data)
    before = local_read_bytes(cluster)
    assert await fs.read_file("/local.bin") == data
    async with await fs.open("/local.bin") as f:
        for offset, n in [
            (100_001, 700_000),  # unaligned, inside a block table's middle
            (4 * MiB - 300_000, 600_000),  # across two chunks
            (len(data) - 400_000, MiB),  # short at the end of the file
        ]:
            assert await f.pread(n, offset) == data[offset : offset + n]
    assert local_read_bytes(cluster) - before >= len(data)
    # Over TCP only the same bytes come back.
    monkeypatch.setenv("PY3FS_DATA_UNIX", "0")
    tcp = client_for(cluster)
    try:
        assert await tcp.read_file("/local.bin") == data
    finally:
        await tcp.aclose()


async def test_a_block_changed_after_the_reply_fails_its_check(fs: Client) -> None:
    data = os.urandom(MiB)
    await fs.write_file("/changed.bin", data)
    address, io, cap = await _chunk(fs, "/changed.bin", 0)
    got = await fs.storage._data.call_fd(address, wire.ReadFdReq(io=io, cap=cap))
    assert got is not None
    reply, fd = got
    assert fd is not None
    try:
        assert reply.length == len(data)
        buf = bytearray(len(data))
        assert read_verified(fd, reply, 0, memoryview(buf))
        assert buf == data
        # Unaligned: blocks around the range are read into scratch and checked.
        part = bytearray(200_000)
        assert read_verified(fd, reply, 70_000, memoryview(part))
        assert part == data[70_000:270_000]
        # An overwrite applied after the reply: the old checksums no longer
        # match, so the client would read over the network instead.
        async with await fs.open("/changed.bin", "r+") as f:
            await f.pwrite(b"x" * 10, 300_000)
        assert not read_verified(fd, reply, 0, memoryview(buf))
        assert read_verified(fd, reply, 0, memoryview(part))  # block 0 unchanged
    finally:
        os.close(fd)
    back = await fs.read_file("/changed.bin")
    assert back == data[:300_000] + b"x" * 10 + data[300_010:]


async def test_read_fd_answers_like_read(fs: Client) -> None:
    await fs.write_file("/small.bin", b"abc")
    address, io, cap = await _chunk(fs, "/small.bin", 0)
    dc = fs.storage._data
    # Past the end: nothing to pass.
    past = wire.ReadIO(io.target_id, io.chunk_id, 10, 100, io.chain_id, io.chain_ver)
    got = await dc.call_fd(address, wire.ReadFdReq(io=past, cap=cap))
    assert got is not None
    assert got[0].length == 0
    assert got[1] is None
    # A chunk never written: as READ says.
    inode, _ = ids.split_chunk_id(io.chunk_id)
    hole = wire.ReadIO(io.target_id, ids.chunk_id(inode, 5), 0, 10)
    with pytest.raises(errors.ChunkNotFound):
        await dc.call_fd(address, wire.ReadFdReq(io=hole, cap=cap))
    # Without the inode's capability: refused.
    with pytest.raises(errors.PermissionDenied):
        await dc.call_fd(address, wire.ReadFdReq(io=io))
    # Over TCP: refused (a descriptor cannot cross hosts).
    tcp = DataClient(local=False)
    try:
        with pytest.raises(errors.InvalidArgument):
            await tcp.call(
                address, wire.MsgType.READ_FD, wire.ReadFdReq(io=io, cap=cap)
            )
        assert await tcp.call_fd(address, wire.ReadFdReq(io=io, cap=cap)) is None
    finally:
        await tcp.aclose()
