"""The one inode-level file API: how every layer above `client` moves file data.

`client.File`, the FUSE mount's handles, the USRBIO agent and the KV cache all
read and write through `FileIO` (`Client.files`), knowing a file only by what
Open/Create return: its inode number, its layout, its length. The policy for
what is not there lives here once:
- a hole (a chunk never written, or bytes past a chunk's end) reads as zeros;
- a missing chunk of a file read without a write session may instead mean the
  file was removed and its chunks collected (meta keeps data only for write
  sessions): then the read fails with NotFound instead of returning zeros.
Chunk I/O runs in parallel over the file's chains (`StorageClient`); a write
returns once every replica holds it, and `flush` puts it on disk. `ReadAhead`
serves a sequential reader from a window fetched in the background (the next
chunks, on other chains, arrive while the caller works on the current ones).
`ReadWindow` does the same for a reader that keeps several reads of one stream
in flight at once (the kernel's read-ahead through the FUSE mount).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from client.storage_client import ReadItem
from py3fs import errors
from py3fs.buffers import scratch
from py3fs.proto.messages import Layout

if TYPE_CHECKING:
    from client.client import Client

__all__ = [
    "FileIO",
    "ReadAhead",
    "ReadBudget",
    "ReadItem",
    "ReadWindow",
    "segment_size",
]


class FileIO:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def read(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        dest: Any,
        *,
        length: int,
        session: bool = False,
    ) -> int:
        """Fill `dest` from `offset` of a file of `length` bytes; returns how many
        bytes that is (short at the end). Raises NotFound if chunks are missing
        because the file was removed while held without a write `session`."""
        view = memoryview(dest).cast("B")
        n = max(0, min(view.nbytes, length - offset))
        if n:
            missing = await self._client.storage.read(inode, layout, offset, view[:n])
            if missing and not session:
                await self._check_not_removed(inode)
        return n

    async def _check_not_removed(self, inode: int) -> None:
        try:
            node = await self._client.stat_inode(inode)
        except errors.NotFound:
            node = None
        if node is None or node.nlink == 0:
            raise errors.NotFound(f"inode {inode} was removed while open for reading")

    async def read_batch(self, items: Sequence[ReadItem]) -> list[BaseException | None]:
        """Many reads (each `dest` clamped to the file's length by the caller), one
        frame per storage target; per item None or the error that failed it."""
        return await self._client.storage.read_batch(items)

    async def write(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        data: Any,
        *,
        sync: bool = False,
        stream: bool = False,
    ) -> int:
        """Write `data` at `offset`; returns its length once every replica has it
        (with `sync`, on every replica's disk: the chunks it touched need no
        `flush` then). `stream`: the caller writes the file front to back and
        will not read these bytes back soon, so replicas may keep them out of
        their page cache (wire.WriteReq.stream)."""
        view = memoryview(data).cast("B")
        if view.nbytes:
            await self._client.storage.write(
                inode, layout, offset, view, sync=sync, stream=stream
            )
        return view.nbytes

    async def flush(self, layout: Layout) -> None:
        """Put what was written to the file's chains on disk on every replica."""
        await self._client.storage.flush(layout)

    async def truncate(
        self, inode: int, layout: Layout, length: int, old_length: int
    ) -> None:
        """Drop the bytes in [length, old_length), so extending reads zeros there."""
        await self._client.storage.truncate(inode, layout, length, old_length)


class ReadAhead:
    """Sequential read-ahead for one open file: once a read continues the one
    before it, the `window` bytes after it are kept fetched in the background,
    in pieces of `window / 2`, and reads are served from them. Any other read,
    a write through the same handle (`invalidate`) or `aclose` drops them.
    Reads that overlap in time (several tasks reading one file at once) are not
    a sequential stream: while one read is under way, others go straight to
    storage and leave the window alone."""

    def __init__(self, files: FileIO, window: int = 8 << 20) -> None:
        self._files = files
        self.window = window
        self._next = -1  # where a sequential reader's next read starts
        # (start, buffer, task filling it and returning how many bytes it holds)
        self._segs: list[tuple[int, bytearray, asyncio.Task[int]]] = []
        self._busy = False

    async def read(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        dest: Any,
        *,
        length: int,
        session: bool,
    ) -> int:
        """As `FileIO.read`, from the fetched window when it holds the range."""
        if self._busy:
            return await self._files.read(
                inode, layout, offset, dest, length=length, session=session
            )
        self._busy = True
        try:
            return await self._read(inode, layout, offset, dest, length, session)
        finally:
            self._busy = False

    async def _read(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        dest: Any,
        length: int,
        session: bool,
    ) -> int:
        view = memoryview(dest).cast("B")
        sequential = offset == self._next
        if not sequential:
            await self.invalidate()
        n = 0
        while self._segs and n < view.nbytes:
            start, buf, task = self._segs[0]
            pos = offset + n
            try:
                got = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # we are being cancelled, not the prefetch
                got = 0  # dropped by a write meanwhile: read directly
            except Exception:
                got = 0  # the direct read below reports the error, if any
            if not start <= pos < start + got:
                break
            take = min(start + got - pos, view.nbytes - n)
            view[n : n + take] = buf[pos - start : pos - start + take]
            n += take
            if pos + take >= start + got:
                self._segs.pop(0)
        if n < view.nbytes:
            n += await self._files.read(
                inode, layout, offset + n, view[n:], length=length, session=session
            )
        self._next = offset + n
        while self._segs and self._segs[0][0] + len(self._segs[0][1]) <= self._next:
            await self._drop(self._segs.pop(0))
        if sequential and n:
            end = (
                self._segs[-1][0] + len(self._segs[-1][1]) if self._segs else self._next
            )
            piece = max(self.window // 2, 1)
            while end < min(self._next + self.window, length):
                buf = bytearray(min(piece, length - end))
                task = asyncio.ensure_future(
                    self._files.read(
                        inode, layout, end, buf, length=length, session=session
                    )
                )
                self._segs.append((end, buf, task))
                end += len(buf)
        return n

    @staticmethod
    async def _drop(seg: tuple[int, bytearray, asyncio.Task[int]]) -> None:
        task = seg[2]
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: a failed prefetch is not an error

    async def invalidate(self) -> None:
        segs, self._segs = self._segs, []
        self._next = -1
        for seg in segs:
            await self._drop(seg)

    async def aclose(self) -> None:
        await self.invalidate()


class ReadBudget:
    """What the `ReadWindow`s sharing it may hold in all: each takes a
    segment's bytes before fetching it and gives them back when it lets the
    segment go (0: no bound)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.limit and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


# Bounds of a `ReadWindow` segment: one READ_FD (or READ) and one pread per
# segment instead of one per 1 MiB request, and at most a few MiB per buffer.
_SEG_MIN = 1 << 20
_SEG_MAX = 4 << 20


def segment_size(chunk_size: int) -> int:
    """A `ReadWindow` segment for a file of `chunk_size` chunks: whole chunks
    (one chain each) of 1 to 4 MiB, or a 4 MiB part of a larger chunk."""
    if chunk_size <= 0:
        return _SEG_MAX
    if chunk_size >= _SEG_MAX:
        return _SEG_MAX if chunk_size % _SEG_MAX == 0 else chunk_size
    return chunk_size * max(1, -(-_SEG_MIN // chunk_size))


class ReadWindow:
    """Read-ahead for one open file whose sequential reads overlap in time.

    The kernel's read-ahead sends a FUSE daemon several 1 MiB READs of one file
    at once, in no fixed order. Each one read from storage costs a round trip
    and a pread (a READ_FD on this host); here a read that continues an earlier
    one (it starts where one ended, or near the fetched segments) has the
    segments of `segment` bytes (whole chunks) from its own up to `ahead`
    bytes past it fetched in the background, in parallel over their chains,
    and is answered from them: a view of the segment when it lies in one (no
    copy), else a copy. Segments wholly behind the reader are dropped; a read
    that is neither (a seek) drops them all and is not served here.

    Validity is the caller's: every read passes the file's current
    `generation` (a number that changes at every write, truncate or open that
    finds the file changed); a segment fetched under another one is dropped.
    A failed fetch is not an error here: the read is then not served, and the
    caller's own read reports (or gets around) it."""

    def __init__(
        self,
        files: FileIO,
        segment: int,
        ahead: int = 8 << 20,
        budget: ReadBudget | None = None,
    ) -> None:
        self._files = files
        # Bytes of segments all windows of a process may hold at once.
        self._budget = budget or ReadBudget(0)
        self.segment = segment
        # Segments fetched past the one being read: at least `ahead` bytes
        # (the kernel's read-ahead window is 4 MiB) and two segments.
        self.ahead = max(2, -(-ahead // segment))
        # start -> (generation, buffer, task filling it, returning its bytes)
        self._segs: dict[int, tuple[int, bytearray, asyncio.Task[int]]] = {}
        self._ends: deque[int] = deque(maxlen=16)  # where recent reads ended

    @property
    def fetched(self) -> int:
        """Bytes held in segments (fetched or being fetched)."""
        return sum(len(buf) for _, buf, _ in self._segs.values())

    async def read(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        n: int,
        *,
        length: int,
        session: bool,
        generation: int,
    ) -> bytearray | memoryview | None:
        """Bytes [offset, offset + n) of the file (`n` already clamped to
        `length`), or None when this read is not served here."""
        seg = self.segment
        first = offset // seg * seg
        if any(g != generation for g, _, _ in self._segs.values()):
            self.drop()
        # A continuation starts where a read ended, or near the segments (a
        # read of the stream that came ahead of the ones before it).
        known = offset in self._ends or bool(
            self._segs
            and min(self._segs) - seg <= first <= max(self._segs) + self.ahead * seg
        )
        self._ends.append(offset + n)
        if not known:
            self.drop()  # a seek, or a first read
            return None
        # Segments behind the one before this read are done with (a read of
        # that one may still be in flight, out of order).
        for start in [s for s in self._segs if s + seg <= first - seg]:
            self._budget.give(len(self._segs.pop(start)[1]))
        stop = min(length, (first // seg + 1 + self.ahead) * seg)
        for start in range(first, stop, seg):
            if start not in self._segs:
                self._fetch(inode, layout, start, length, session, generation)
        parts = []
        pos, end = offset, offset + n
        while pos < end:
            start = pos // seg * seg
            entry = self._segs.get(start)
            if entry is None:
                return None
            _, buf, task = entry
            try:
                got = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # the read is cancelled, not the fetch
                return None
            except Exception:
                return None
            take = min(end, start + got) - pos
            if take <= 0:
                return None  # short (the file was shorter when fetched)
            parts.append(memoryview(buf)[pos - start : pos - start + take])
            pos += take
        if len(parts) == 1:
            return parts[0]
        out = scratch(n)
        at = 0
        for part in parts:
            out[at : at + part.nbytes] = part
            at += part.nbytes
        return out

    def _fetch(
        self,
        inode: int,
        layout: Layout,
        start: int,
        length: int,
        session: bool,
        generation: int,
    ) -> None:
        size = min(self.segment, length - start)
        if not self._budget.take(size):
            return  # too much held by all windows: reads go to storage
        # Every byte of the buffer is written (holes as zeros) by the read.
        buf = scratch(size)
        task = asyncio.ensure_future(
            self._files.read(inode, layout, start, buf, length=length, session=session)
        )
        task.add_done_callback(_retrieve)
        self._segs[start] = (generation, buf, task)

    def drop(self) -> None:
        """Forget every segment (fetches under way finish unobserved). Where
        recent reads ended stays known: the reads of one stream may arrive in
        any order, so one that is not a continuation may be followed by
        those that are."""
        for _, buf, _ in self._segs.values():
            self._budget.give(len(buf))
        self._segs.clear()


def _retrieve(task: asyncio.Task[int]) -> None:
    # A failed fetch is reported by the read that needed it, not here.
    if not task.cancelled():
        task.exception()
