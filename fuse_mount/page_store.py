"""Handing verified blocks to the kernel's page cache (FUSE_NOTIFY_STORE).

A small read makes the mount fetch and verify the whole 64 KiB CRC block
around it (fuse_mount.block_cache). Without more, every later 4 KiB read in
that block is still one FUSE READ (~200 us of daemon CPU each, answered from
the block cache). Storing the block's other pages in the kernel's page cache
makes those reads plain page-cache hits with no request at all, as the
kernel's own read-around would for a local file.

The store is a write to /dev/fuse that the kernel handles in the writer's
context, locking each page it fills. A page stays locked while a READ or a
WRITE of it waits for this daemon's answer, so the store never runs on the
event loop (it could wait for a reply only the loop can send): it runs on a
thread of its own, in order. That also means it lands later than the loop
decided it, so `OpenFiles` only decides it when no write can overtake it
(see its docstring: no writable handle on the inode, no truncation, no
invalidation since the fetch began) and makes every open and truncation of
the inode wait for its stores under way (`drained`) before it answers.

A failed store changes nothing the mount relies on (later reads of those
pages reach the daemon as before); ENOENT (the kernel dropped the inode)
is normal, anything else is logged once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import threading
from collections.abc import Callable

from py3fs.faults import fault_point

logger = logging.getLogger(__name__)
PAGE = 4096
_Store = Callable[[int, int, memoryview], None]


class PageStore:
    def __init__(self, store: _Store | None = None) -> None:
        if store is None:
            import pyfuse3

            store = pyfuse3.notify_store
        self._store = store
        self._queue: queue.SimpleQueue[tuple[int, list[tuple[int, memoryview]]] | None]
        self._queue = queue.SimpleQueue()
        # Shared with the thread: inode -> stores queued or running, and the
        # futures of callers waiting for that to reach zero.
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._warned = False
        self.stored = 0

    def store(self, ino: int, pieces: list[tuple[int, memoryview]]) -> None:
        """Queue (offset, bytes) pieces of `ino`; the bytes must not change."""
        if self._closed or not pieces:
            return
        with self._lock:
            self._pending[ino] = self._pending.get(ino, 0) + 1
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="page-store", daemon=True
            )
            self._thread.start()
        self._queue.put((ino, pieces))

    def busy(self, ino: int) -> bool:
        with self._lock:
            return ino in self._pending

    async def drained(self, ino: int) -> None:
        """Return once every store of `ino` queued before this call is done."""
        with self._lock:
            if ino not in self._pending:
                return
            fut = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(ino, []).append(fut)
        await fut

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            ino, pieces = item
            try:
                # A slow store, for the tests that prove no write or open
                # can be overtaken by one.
                fault_point("mount.page_store.before")
                for offset, data in pieces:
                    if self._closed:
                        break
                    self._store(ino, offset, data)
                    self.stored += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT and not self._warned:
                    self._warned = True
                    logger.warning("storing pages in the kernel failed: %s", exc)
            except Exception:
                logger.exception("storing pages of inode %d failed", ino)
            finally:
                self._done(ino)

    def _done(self, ino: int) -> None:
        with self._lock:
            left = self._pending[ino] - 1
            if left:
                self._pending[ino] = left
                return
            del self._pending[ino]
            waiters = self._waiters.pop(ino, [])
        for fut in waiters:
            fut.get_loop().call_soon_threadsafe(_wake, fut)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (unmount: before the FUSE session goes); stores
        still queued are dropped."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            # A store can wait for a page lock that only the (stopped) loop's
            # reply would release; the kernel ends those at unmount.
            self._thread.join(timeout)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def around(
    start: int, block: memoryview, offset: int, n: int
) -> list[tuple[int, memoryview]]:
    """The whole pages of `block` (file bytes from `start`) outside the pages
    of the read [offset, offset+n), which the READ's reply fills itself (and
    which stay locked until it does). A block ends at a page boundary or at
    the end of the file, where the kernel takes a short last page."""
    end = start + block.nbytes
    lo = offset - offset % PAGE
    hi = min(end, -(-(offset + n) // PAGE) * PAGE)
    out = []
    if lo > start:
        out.append((start, block[: lo - start]))
    if end > hi:
        out.append((hi, block[hi - start :]))
    return out
