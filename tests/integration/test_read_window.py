"""Sequential read-ahead for readers with several reads in flight
(client.file_io.ReadWindow, what the FUSE mount answers the kernel's
read-ahead from) and the disk read-ahead of same-host sequential reads
(client.storage_client `_ahead`/`_warm`), against a real cluster."""

from __future__ import annotations

import asyncio
import os

from client import Client
from client.file_io import ReadBudget, ReadWindow, segment_size
from client.storage_client import DISK_READ_AHEAD
from client.striping import pieces
from py3fs.proto.messages import Inode

MiB = 1024 * 1024


def test_segment_sizes() -> None:
    assert segment_size(4 * MiB) == 4 * MiB
    assert segment_size(MiB) == MiB
    assert segment_size(256 * 1024) == MiB  # four whole chunks
    assert segment_size(384 * 1024) == 3 * 384 * 1024
    assert segment_size(64 * MiB) == 4 * MiB  # a part of one chunk
    assert segment_size(6 * MiB) == 6 * MiB


async def _read(
    window: ReadWindow,
    node: Inode,
    offset: int,
    length: int,
    n: int = MiB,
    gen: int = 0,
) -> bytearray | memoryview | None:
    """One read of `n` bytes at `offset` from `window` (no write session)."""
    assert node.layout is not None
    return await window.read(
        node.inode,
        node.layout,
        offset,
        n,
        length=length,
        session=False,
        generation=gen,
    )


async def _kernel_like(
    fs: Client,
    window: ReadWindow,
    path: str,
    data: bytes | bytearray,
    start: int,
    stop: int,
    gen: int = 0,
) -> int:
    """Read [start, stop) as the kernel's read-ahead does (1 MiB requests,
    four at a time, finishing in any order), each one from the window or, when
    it declines, from storage; returns how many the window served. Every
    read must return exactly the file's bytes."""
    node = await fs.stat(path)
    assert node.layout is not None
    served = 0

    async def one(offset: int) -> None:
        nonlocal served
        n = min(MiB, len(data) - offset)
        got = await _read(window, node, offset, len(data), n=n, gen=gen)
        if got is None:
            buf = bytearray(n)
            await fs.files.read(node.inode, node.layout, offset, buf, length=len(data))
            got = buf
        else:
            served += 1
        assert bytes(got) == data[offset : offset + n], offset

    offsets = list(range(start, min(stop, len(data)), MiB))
    for i in range(0, len(offsets), 4):
        await asyncio.gather(*(one(o) for o in reversed(offsets[i : i + 4])))
    return served


async def test_window_serves_overlapping_sequential_reads(fs: Client) -> None:
    for chunk in (4 * MiB, MiB, 256 * 1024):
        data = os.urandom(23 * MiB + 4321)
        path = f"/window-{chunk}.bin"
        await fs.write_file(path, data, chunk_size=chunk, stripe=3)
        window = ReadWindow(fs.files, segment_size(chunk))
        # The first read is no stream yet; every later one continues it.
        served = await _kernel_like(fs, window, path, data, 0, len(data) + 1)
        # (Reversed batches: the first ones arrive before their stream is known.)
        assert served >= 16, (chunk, served)
        # Segments behind the reader go: what is held stays bounded.
        assert window.fetched <= (window.ahead + 2) * window.segment


async def test_windows_share_a_budget(fs: Client) -> None:
    """Windows hold no more than their shared budget; past it, reads are
    declined (and read from storage), never wrong."""
    data = os.urandom(20 * MiB)
    await fs.write_file("/window-budget.bin", data, chunk_size=MiB)
    budget = ReadBudget(3 * MiB)
    windows = [ReadWindow(fs.files, MiB, budget=budget) for _ in range(2)]
    node = await fs.stat("/window-budget.bin")
    assert node.layout is not None
    served = 0
    for offset in range(0, len(data), MiB):
        for window in windows:
            got = await _read(window, node, offset, len(data))
            assert budget.used <= budget.limit
            if got is not None:
                served += 1
                assert bytes(got) == data[offset : offset + MiB]
    assert served > 0
    for window in windows:
        window.drop()
    assert budget.used == 0


async def test_window_follows_generations_and_declines_seeks(fs: Client) -> None:
    data = bytearray(os.urandom(16 * MiB))
    await fs.write_file("/window-gen.bin", data)
    window = ReadWindow(fs.files, segment_size(4 * MiB))
    assert await _kernel_like(fs, window, "/window-gen.bin", data, 0, 8 * MiB) >= 1
    assert window.fetched > 0  # fetched ahead, past 8 MiB
    # Another client changes bytes the window already fetched; the caller's
    # generation changes with it (a write here, or an open that saw it): the
    # rest of the stream reads the new bytes.
    patch = os.urandom(6 * MiB)
    data[8 * MiB : 14 * MiB] = patch
    await fs.write_file("/window-gen.bin", bytes(data))
    served = await _kernel_like(
        fs, window, "/window-gen.bin", data, 8 * MiB, len(data), gen=1
    )
    assert served >= 1
    # A new reader's first read and a seek are declined, and fetch nothing.
    node = await fs.stat("/window-gen.bin")
    assert node.layout is not None
    fresh = ReadWindow(fs.files, segment_size(4 * MiB))
    for offset in (0, 9 * MiB + 5):
        got = await _read(fresh, node, offset, len(data), gen=1)
        assert got is None
        assert fresh.fetched == 0


async def test_window_fetch_failure_is_left_to_the_caller(fs: Client) -> None:
    """The file is removed while the window fetches (no write session keeps
    its chunks): the window declines, and the caller's own read reports it."""
    data = os.urandom(12 * MiB)
    await fs.write_file("/window-gone.bin", data)
    node = await fs.stat("/window-gone.bin")
    assert node.layout is not None
    window = ReadWindow(fs.files, segment_size(4 * MiB))
    for offset in range(0, 4 * MiB, MiB):  # in order: all but the first served
        got = await _read(window, node, offset, len(data))
        assert (got is None) == (offset == 0)
        assert got is None or bytes(got) == data[offset : offset + MiB]
    await fs.unlink("/window-gone.bin")
    window.drop()
    await _read(window, node, 0, len(data))
    # Whether the chunks are already collected or not, what comes back is
    # either the file's bytes (collected later) or nothing.
    for offset in (MiB, 2 * MiB, 5 * MiB):
        try:
            got = await _read(window, node, offset, len(data))
        except Exception as exc:
            raise AssertionError(f"the window raised {exc!r}") from exc
        assert got is None or bytes(got) == data[offset : offset + MiB]


async def test_disk_read_ahead_follows_sequential_streams(fs: Client) -> None:
    """Same-host 1 MiB reads: a stream through a chunk asks the disk for the
    rest of it and warms the next chunk's replica; random reads ask nothing;
    the bytes are the file's either way, and a warm past the end is harmless."""
    data = os.urandom(10 * MiB + 999)
    await fs.write_file("/disk-ahead.bin", data)
    node = await fs.stat("/disk-ahead.bin")
    layout = node.layout
    assert layout is not None
    storage = fs.storage

    def ahead(offset: int) -> int:
        p = next(iter(pieces(layout, offset, MiB)))
        return storage._ahead(node.inode, layout, p)

    assert ahead(5 * MiB) == 0  # a first read
    assert ahead(6 * MiB) == DISK_READ_AHEAD  # continues it
    assert ahead(2 * MiB) == 0  # a seek
    assert ahead(9 * MiB) == 0  # inside a chunk not read yet
    assert ahead(8 * MiB) == 0  # chunk 2's start, but chunk 1 is not read to its end
    assert ahead(3 * MiB) == DISK_READ_AHEAD  # continues the read at 2 MiB
    assert ahead(4 * MiB) == DISK_READ_AHEAD  # the next chunk, after its end
    back = bytearray()
    for offset in range(0, len(data), MiB):
        buf = bytearray(min(MiB, len(data) - offset))
        await fs.files.read(node.inode, layout, offset, buf, length=len(data))
        back += buf
    assert back == data
    storage._warm_next(node.inode, layout, 40)  # no such chunk
    while storage._warming:
        await asyncio.wait(list(storage._warming))
