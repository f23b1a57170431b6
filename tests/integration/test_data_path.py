"""Acceptance 1: file data through the client on a 3-node, 3-replica cluster."""

from __future__ import annotations

import asyncio
import hashlib
import os

from harness import list_chunks

from client import Client
from py3fs import ids, wire
from py3fs.cluster import LocalCluster
from storage_service.chunk_format import content_digest

MiB = 1024 * 1024


async def test_256mib_file_roundtrip_replicated(
    fs: Client, cluster: LocalCluster
) -> None:
    data = os.urandom(256 * MiB)
    assert await fs.write_file("/big.bin", data) == len(data)

    node = await fs.stat("/big.bin")
    assert node.length == len(data)
    back = await fs.read_file("/big.bin")
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    del back

    # Every chunk is on all three targets of its chain with the same digest.
    layout = node.layout
    assert layout is not None
    view = await fs.routing.refresh()
    size = layout.chunk_size
    nchunks = -(-len(data) // size)
    by_target: dict[int, dict[bytes, wire.ChunkMeta]] = {}
    for chain_id in set(layout.chains):
        targets = view.chain(chain_id).targets
        assert len(targets) == 3
        nodes = {view.targets[t].node_id for t in targets}
        assert len(nodes) == 3, "replicas of a chain must be on distinct nodes"
        for t in targets:
            metas = await list_chunks(fs, view, t)
            by_target[t] = {m.chunk_id: m for m in metas}
    for i in range(nchunks):
        cid = ids.chunk_id(node.inode, i)
        chain = view.chain(layout.chains[i % len(layout.chains)])
        want = content_digest(memoryview(data)[i * size : (i + 1) * size])
        replicas = [by_target[t].get(cid) for t in chain.targets]
        assert all(r is not None for r in replicas), f"chunk {i} missing a replica"
        assert {r.crc for r in replicas if r} == {want}, f"chunk {i} digest differs"
        assert len({r.committed_ver for r in replicas if r}) == 1

    # Reads at and past EOF come back short.
    async with await fs.open("/big.bin") as f:
        assert await f.pread(MiB, len(data) - 100) == data[-100:]
        assert await f.pread(10, len(data)) == b""
        assert await f.pread(10, len(data) + 5) == b""


async def test_streamed_writes_bypass_cache_and_stay_coherent(
    fs: Client, cluster: LocalCluster
) -> None:
    """Whole chunks written as a stream (what the mount's write-behind sends)
    go to each replica's disk with O_DIRECT; they read back, replicas agree,
    and a later buffered overwrite inside them and a flush read back too."""
    data = bytearray(os.urandom(3 * 4 * MiB + 12345))
    async with await fs.open("/stream.bin", "wb") as f:
        size = f.inode.layout.chunk_size
        assert size == 4 * MiB
        for off in range(0, len(data), size):
            await f.pwrite(data[off : off + size], off, stream=True)
        await f.pwrite(b"Z" * 100, size + 7)  # buffered, into a streamed chunk
        data[size + 7 : size + 107] = b"Z" * 100
        await f.fsync()
    assert await fs.read_file("/stream.bin") == data
    node = await fs.stat("/stream.bin")
    layout = node.layout
    assert layout is not None
    view = await fs.routing.refresh()
    for i in range(-(-len(data) // size)):
        chain = view.chain(layout.chains[i % len(layout.chains)])
        want = content_digest(memoryview(data)[i * size : (i + 1) * size])
        cid = ids.chunk_id(node.inode, i)
        for t in chain.targets:
            metas = {m.chunk_id: m for m in await list_chunks(fs, view, t)}
            assert metas[cid].crc == want, f"chunk {i} differs on target {t}"


async def test_overwrite_append_and_holes(fs: Client) -> None:
    async with await fs.open("/holes.bin", "wb") as f:
        await f.pwrite(b"tail", 9 * MiB)  # chunks 0 and 1 never written
    assert (await fs.stat("/holes.bin")).length == 9 * MiB + 4
    back = await fs.read_file("/holes.bin")
    assert back[: 9 * MiB] == bytes(9 * MiB)
    assert back[9 * MiB :] == b"tail"

    async with await fs.open("/holes.bin", "r+b") as f:
        await f.pwrite(b"X" * 10, 4 * MiB - 5)  # across a chunk boundary
    back = await fs.read_file("/holes.bin")
    assert back[4 * MiB - 5 : 4 * MiB + 5] == b"X" * 10
    assert back[: 4 * MiB - 5] == bytes(4 * MiB - 5)

    async with await fs.open("/log.txt", "ab") as f:
        await f.write(b"one\n")
    async with await fs.open("/log.txt", "ab") as f:
        await f.write(b"two\n")
    assert await fs.read_file("/log.txt") == b"one\ntwo\n"


async def test_small_chunks_and_stripe(fs: Client) -> None:
    data = os.urandom(3 * MiB + 17)
    async with await fs.open(
        "/striped.bin", "wb", chunk_size=256 * 1024, stripe=2
    ) as f:
        await f.write(data)
    node = await fs.stat("/striped.bin")
    assert node.layout is not None
    assert node.layout.chunk_size == 256 * 1024
    assert len(node.layout.chains) == 2
    assert await fs.read_file("/striped.bin") == data
    async with await fs.open("/striped.bin") as f:
        f.seek(1000)
        assert await f.read(5000) == data[1000:6000]


async def test_truncated_bytes_never_come_back(fs: Client) -> None:
    await fs.write_file("/trunc.bin", b"A" * 100)
    await fs.write_file("/trunc.bin", b"B" * 10)  # O_TRUNC
    async with await fs.open("/trunc.bin", "r+b") as f:
        await f.pwrite(b"C", 50)
    assert await fs.read_file("/trunc.bin") == b"B" * 10 + bytes(40) + b"C"

    await fs.write_file("/trunc2.bin", b"A" * (5 * MiB))
    await fs.truncate("/trunc2.bin", 3)
    await fs.truncate("/trunc2.bin", 5 * MiB)
    back = await fs.read_file("/trunc2.bin")
    assert back[:3] == b"AAA"
    assert back[3:] == bytes(5 * MiB - 3)


async def test_sequential_read_ahead_stays_coherent(fs: Client) -> None:
    """Sequential reads are served from a background window; a write through
    the handle, a seek and a short tail still read exactly the file."""
    data = bytearray(os.urandom(21 * MiB + 123))
    await fs.write_file("/ahead.bin", data, chunk_size=1 * MiB, stripe=3)
    async with await fs.open("/ahead.bin", "r+b") as f:
        head = await f.read(3 * MiB)  # two reads in a row start the window
        head += await f.read(3 * MiB)
        assert head == data[: 6 * MiB]
        patch = os.urandom(5000)
        await f.pwrite(patch, 6 * MiB + 10)  # inside the window fetched
        data[6 * MiB + 10 : 6 * MiB + 5010] = patch
        rest = bytearray()
        while chunk := await f.read(700 * 1024):
            rest += chunk
        assert rest == data[6 * MiB :]
        f.seek(MiB)
        assert await f.read(MiB) == data[MiB : 2 * MiB]
        assert await f.read(MiB) == data[2 * MiB : 3 * MiB]


async def test_concurrent_reads_of_one_handle(fs: Client) -> None:
    """Many tasks reading one open file at once (as the checkpoint loader does)
    neither trip over the read-ahead window nor get another task's bytes."""
    data = os.urandom(9 * MiB + 77)
    await fs.write_file("/shared-read.bin", data, chunk_size=1 * MiB)
    async with await fs.open("/shared-read.bin") as f:
        await f.read(MiB)
        await f.read(MiB)  # a sequential stream: the window is being fetched

        async def one(i: int) -> bytes:
            return await f.pread(300_000, i * 290_000)

        got = await asyncio.gather(*(one(i) for i in range(30)))
        for i, part in enumerate(got):
            assert part == data[i * 290_000 : i * 290_000 + 300_000]
        assert await f.read(MiB) == data[2 * MiB : 3 * MiB]
