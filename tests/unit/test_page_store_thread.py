"""fuse_mount.page_store without a kernel: which pages a small read stores,
and `drained` waiting for the stores of one inode only."""

from __future__ import annotations

import asyncio
import threading

from fuse_mount.page_store import PAGE, PageStore, around

BLOCK = 64 * 1024


def test_around_leaves_out_the_pages_of_the_read() -> None:
    block = memoryview(bytes(range(256)) * (BLOCK // 256))
    start = 3 * BLOCK
    pieces = around(start, block, start + 5 * PAGE + 10, 100)
    assert [(off, len(data)) for off, data in pieces] == [
        (start, 5 * PAGE),
        (start + 6 * PAGE, BLOCK - 6 * PAGE),
    ]
    assert bytes(pieces[1][1]) == bytes(block[6 * PAGE :])
    # A read over two pages; one at the block's start; one at its end.
    assert [o for o, _ in around(start, block, start + PAGE - 1, 2)] == [
        start + 2 * PAGE
    ]
    assert [o for o, _ in around(start, block, start, PAGE)] == [start + PAGE]
    last = start + BLOCK - PAGE
    assert [(o, len(d)) for o, d in around(start, block, last, PAGE)] == [
        (start, BLOCK - PAGE)
    ]


def test_around_a_short_last_block() -> None:
    block = memoryview(bytes(10_000))
    assert [(o, len(d)) for o, d in around(0, block, 0, 100)] == [(PAGE, 10_000 - PAGE)]
    assert [(o, len(d)) for o, d in around(0, block, 8192, 1808)] == [(0, 8192)]


async def test_drained_waits_for_that_inodes_stores() -> None:
    gate = threading.Event()
    stored: list[tuple[int, int]] = []

    def store(ino: int, offset: int, data: memoryview) -> None:
        if ino == 1:
            gate.wait(10)
        stored.append((ino, offset))

    pages = PageStore(store)
    try:
        await pages.drained(1)  # nothing queued: at once
        pages.store(1, [(0, memoryview(b"x" * PAGE))])
        pages.store(2, [(PAGE, memoryview(b"y" * PAGE))])
        assert pages.busy(1)
        waiter = asyncio.ensure_future(pages.drained(1))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the store of inode 1 is held
        gate.set()
        await asyncio.wait_for(waiter, 10)
        await asyncio.wait_for(pages.drained(2), 10)
        assert sorted(stored) == [(1, 0), (2, PAGE)]
        assert not pages.busy(1)
        assert not pages.busy(2)
    finally:
        gate.set()
        await asyncio.to_thread(pages.close)
