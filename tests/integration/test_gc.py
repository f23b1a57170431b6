"""Acceptance 5: unlinked files' chunks leave every target and the space is freed."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from harness import list_chunks

from client import Client
from py3fs import errors, ids
from py3fs.cluster import LocalCluster

MiB = 1024 * 1024


async def _chunks_of(fs: Client, inode: int) -> int:
    view = await fs.routing.refresh()
    count = 0
    for target in view.targets:
        count += sum(
            1
            for m in await list_chunks(fs, view, target)
            if m.chunk_id.startswith(ids.inode_prefix(inode))
        )
    return count


async def _wait_for(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def test_unlink_removes_chunks_and_frees_space(
    fs: Client, cluster: LocalCluster
) -> None:
    size = 24 * MiB
    await fs.write_file("/gc.bin", os.urandom(size))
    node = await fs.stat("/gc.bin")
    assert await _chunks_of(fs, node.inode) == 3 * (size // (4 * MiB))

    async def accounted() -> bool:
        return (await fs.statfs()).used_bytes >= 3 * size

    await _wait_for(accounted)
    used_before = (await fs.statfs()).used_bytes

    await fs.unlink("/gc.bin")

    async def chunks_gone() -> bool:
        return await _chunks_of(fs, node.inode) == 0

    await _wait_for(chunks_gone)

    async def space_freed() -> bool:
        return (await fs.statfs()).used_bytes <= used_before - 3 * size

    await _wait_for(space_freed)


async def test_file_open_for_write_keeps_data_until_closed(fs: Client) -> None:
    data = os.urandom(5 * MiB)
    f = await fs.open("/open-unlinked.bin", "w+b")
    await f.write(data)
    await fs.unlink("/open-unlinked.bin")
    await asyncio.sleep(1.0)  # several GC intervals
    assert await f.pread(len(data), 0) == data
    inode = f.inode.inode
    await f.close()

    async def chunks_gone() -> bool:
        return await _chunks_of(fs, inode) == 0

    await _wait_for(chunks_gone)


async def test_reader_of_collected_file_gets_an_error_not_zeros(fs: Client) -> None:
    await fs.write_file("/read-unlinked.bin", os.urandom(2 * MiB))
    f = await fs.open("/read-unlinked.bin", "rb")
    try:
        inode = f.inode.inode
        await fs.unlink("/read-unlinked.bin")

        async def chunks_gone() -> bool:
            return await _chunks_of(fs, inode) == 0

        await _wait_for(chunks_gone)
        with pytest.raises(errors.NotFound):
            await f.pread(MiB, 0)
    finally:
        await f.close()
