"""The USRBIO agent core: maps iovs and rings, runs the ios prepared in each ring
with many in flight, straight between the shared buffer and storage.

It runs on the event loop of a `Client`: inside the FUSE daemon
(`fuse_mount.agent`) or in a private thread (`client.usrbio.local`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mmap
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from client.storage_client import ReadItem
from client.usrbio.iov import close_map, map_shm
from client.usrbio.ring import RingConsumer, parse_name
from py3fs import errors
from py3fs.proto.messages import Inode, SyncReq

if TYPE_CHECKING:
    from client.client import Client

logger = logging.getLogger(__name__)
Sqe = tuple[bytes, int, int, int, int, int]  # iov id, buf off, inode, off, len, tag
WORKERS_PER_BATCH = 64  # writes one batch keeps in flight
# Writes of at least this many bytes go as streams (wire.WriteReq.stream):
# replicas put them on disk with O_DIRECT, past their page cache, as 3FS's
# storage does with every chunk write. A program doing USRBIO batch I/O
# manages its own buffers and reads back through USRBIO; the page-cache copy
# was most of a replica's CPU in a write stream.
STREAM_BYTES = 1024 * 1024
SLICE_IOS = 256  # reads per `read_batch` call
SLICE_BYTES = 32 << 20
SLICES_IN_FLIGHT = 8
SCAN_INTERVAL = 0.05  # s: look at a ring even without a doorbell (prepare w/o submit)
# s: how long the owner's open files, read from /proc, answer for later batches.
# Reading them (a worker thread, one /proc file per fd) cost more than a 4 KiB
# read itself; an io on an inode the snapshot does not allow reads them again.
HELD_TTL = 1.0


@dataclass
class _Iov:
    name: str
    mm: mmap.mmap
    view: memoryview


@dataclass
class _Ring:
    name: str
    ring: RingConsumer
    owner: int = 0  # pid whose open files bound what the ring may touch; 0: none
    task: asyncio.Task[None] | None = None
    batches: set[asyncio.Task[None]] = field(default_factory=set)
    # The owner's open files (inode -> access mode) and when they were read.
    held: dict[int, int] = field(default_factory=dict)
    held_at: float = float("-inf")


class UsrbioServer:
    """Registry of iovs and rings by symlink name, and the ring servers."""

    def __init__(
        self,
        on_length: Callable[[int], Awaitable[None]] | None = None,
        open_files: Callable[[int], dict[int, int]] | None = None,
    ) -> None:
        # Called with an inode whose length grew through a ring, before the
        # completions are posted (the FUSE agent drops the kernel's cached size).
        self._on_length = on_length
        # pid -> {inode: O_ACCMODE} of the files it holds open (the FUSE agent
        # reads /proc); None in-process, where the client's own token and
        # meta's capabilities already bound what it may do.
        self._open_files = open_files
        self._iovs: dict[bytes, _Iov] = {}
        self._rings: dict[str, _Ring] = {}
        self._names: dict[str, str] = {}  # name -> target
        self._client: Client | None = None
        self._inodes: dict[int, tuple[Inode, float]] = {}

    # ------------------------------------------------------------ registry

    def register_iov(
        self, name: str, target: str, uid: int = 0, owner: int = 0
    ) -> None:
        """`uid` is part of the agent protocol (fuse_mount.hooks); ownership of
        the shared memory is checked by the FUSE agent before it calls this."""
        if name in self._names:
            raise OSError(errno.EEXIST, f"{name} is registered already")
        ident, _block, spec = parse_name(name)
        path = os.path.realpath(target)
        if spec is None:
            mm = map_shm(path)
            self._iovs[ident.bytes] = _Iov(name, mm, memoryview(mm))
        else:
            ring = _Ring(name, RingConsumer(path), owner)
            self._rings[name] = ring
            if self._client is not None:
                self._start_ring(ring)
        self._names[name] = target

    def deregister_iov(self, name: str) -> None:
        if self._names.pop(name, None) is None:
            raise OSError(errno.ENOENT, f"{name} is not registered")
        ring = self._rings.pop(name, None)
        if ring is not None:
            if ring.task is not None:
                ring.task.cancel()
                # Close once the serving task has let go of the ring.
                ring.task.add_done_callback(lambda _t: ring.ring.close())
            else:
                ring.ring.close()
            return
        ident, _, _ = parse_name(name)
        iov = self._iovs.pop(ident.bytes, None)
        if iov is not None:
            iov.view.release()
            close_map(iov.mm)

    def iov_names(self) -> list[str]:
        return list(self._names)

    # ------------------------------------------------------------ lifecycle

    async def start(self, client: Client) -> None:
        self._client = client
        for ring in self._rings.values():
            if ring.task is None:
                self._start_ring(ring)

    async def aclose(self) -> None:
        for name in list(self._names):
            with contextlib.suppress(OSError):
                self.deregister_iov(name)
        tasks = [r.task for r in self._rings.values() if r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_ring(self, ring: _Ring) -> None:
        ring.task = asyncio.get_running_loop().create_task(
            self._serve(ring), name=f"usrbio-ring-{ring.name}"
        )

    # ------------------------------------------------------------ serving

    async def _serve(self, r: _Ring) -> None:
        loop = asyncio.get_running_loop()
        ring = r.ring
        wake = asyncio.Event()
        loop.add_reader(ring.submit_bell.fd, wake.set)
        try:
            while True:
                wake.clear()
                ring.submit_bell.drain()
                batch = self._take(ring)
                if batch:
                    task = loop.create_task(self._run_batch(r, batch))
                    r.batches.add(task)
                    task.add_done_callback(r.batches.discard)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SCAN_INTERVAL):
                        await wake.wait()
        finally:
            loop.remove_reader(ring.submit_bell.fd)
            for task in list(r.batches):
                task.cancel()
            await asyncio.gather(*r.batches, return_exceptions=True)

    @staticmethod
    def _take(ring: RingConsumer) -> list[Sqe]:
        depth = ring.io_depth
        if depth > 0:
            # Fixed-size batches only, as 3FS does: fewer queued ios wait.
            return ring.take(depth) if ring.pending() >= depth else []
        return ring.take(-depth if depth < 0 else ring.entries)

    async def _run_batch(self, r: _Ring, batch: list[Sqe]) -> None:
        ring = r.ring
        if self._open_files is not None and r.owner:
            batch = await self._owned(r, batch)
            if not batch:
                return
        if ring.for_read:
            await self._read_batch(ring, batch)
        else:
            await self._write_batch(ring, batch)

    async def _read_batch(self, ring: RingConsumer, batch: list[Sqe]) -> None:
        """Reads go out grouped (`StorageClient.read_batch`): a slice of the batch at a
        time, several slices in flight, completions posted per slice."""
        since = time.monotonic()
        need: dict[int, int] = {}
        for sqe in batch:
            need[sqe[2]] = max(need.get(sqe[2], 0), sqe[3] + sqe[4])
        nodes: dict[int, Inode | int] = {}

        async def resolve(inode: int) -> None:
            try:
                nodes[inode] = await self._inode(inode, need[inode], since)
            except errors.Py3fsError as exc:
                nodes[inode] = -exc.errno

        if len(need) == 1:  # the common case: no task to schedule
            await resolve(next(iter(need)))
        else:
            await asyncio.gather(*(resolve(i) for i in need))
        slices: list[list[tuple[int, ReadItem]]] = [[]]
        size = 0
        posted = 0  # ios completed here, before any read
        for iov_id, buf_off, inode, file_off, length, tag in batch:
            iov = self._iovs.get(iov_id)
            node = nodes[inode]
            if iov is None or buf_off + length > iov.view.nbytes:
                ring.post(tag, -errno.EFAULT)
                posted += 1
                continue
            if isinstance(node, int):
                ring.post(tag, node)
                posted += 1
                continue
            n = max(0, min(length, node.length - file_off))
            if n == 0:
                ring.post(tag, 0)
                posted += 1
                continue
            assert node.layout is not None
            dest = iov.view[buf_off : buf_off + n]
            if len(slices[-1]) >= SLICE_IOS or size >= SLICE_BYTES:
                slices.append([])
                size = 0
            slices[-1].append((tag, ReadItem(inode, node.layout, file_off, dest)))
            size += n
        if posted:
            # Only then: a waiter woken with nothing to reap costs a thread
            # switch and a doorbell round for every 4 KiB read.
            ring.done_bell.ring()
        sem = asyncio.Semaphore(SLICES_IN_FLIGHT)

        async def run(part: list[tuple[int, ReadItem]]) -> None:
            async with sem:
                try:
                    failed = await self._client_or_fail().files.read_batch(
                        [it for _, it in part]
                    )
                except Exception:
                    logger.exception("usrbio batch read failed")
                    failed = [errors.Py3fsError("batch read failed")] * len(part)
            for (tag, item), exc in zip(part, failed, strict=True):
                if exc is None:
                    ring.post(tag, item.dest.nbytes)
                else:
                    ring.post(tag, -getattr(exc, "errno", errno.EIO))
            ring.done_bell.ring()

        await asyncio.gather(*(run(p) for p in slices if p))

    async def _owned(self, r: _Ring, batch: list[Sqe]) -> list[Sqe]:
        """The ios of `batch` on inodes the ring's owner holds open with a mode
        that allows them; the others complete at once with EBADF (not open)
        or EACCES (open, but not for this direction). The owner's open files
        are read again when the last reading is HELD_TTL old or does not
        allow an io of the batch, so a refusal always reflects the present,
        and a file closed less than HELD_TTL ago may still be served (3FS
        trusts a registered fd until it is deregistered)."""
        assert self._open_files is not None
        want = (os.O_RDONLY, os.O_RDWR) if r.ring.for_read else (os.O_WRONLY, os.O_RDWR)
        held = r.held
        if time.monotonic() - r.held_at > HELD_TTL or any(
            held.get(sqe[2]) not in want for sqe in batch
        ):
            read_at = time.monotonic()
            held = await asyncio.to_thread(self._open_files, r.owner)
            r.held, r.held_at = held, read_at
        ok: list[Sqe] = []
        refused: list[int] = []
        for sqe in batch:
            mode = held.get(sqe[2])
            if mode is None or mode not in want:
                code = errno.EBADF if mode is None else errno.EACCES
                r.ring.post(sqe[5], -code)
                refused.append(sqe[2])
            else:
                ok.append(sqe)
        if refused:
            # One line per batch, however many entries it refused.
            logger.warning(
                "usrbio: ring %s of pid %d: refused %d ios on inodes %s it does "
                "not hold open in that mode",
                r.name,
                r.owner,
                len(refused),
                sorted(set(refused))[:8],
            )
            r.ring.done_bell.ring()
        return ok

    def _client_or_fail(self) -> Client:
        assert self._client is not None
        return self._client

    async def _write_batch(self, ring: RingConsumer, batch: list[Sqe]) -> None:
        """Writes to one chunk run one after another (the chain's head
        serializes updates of a chunk anyway, so concurrent ones only contend);
        writes to different chunks run in parallel. Back-to-back writes to one
        chunk are joined into one: a sequential writer's 1 MiB pieces then cost
        one chunk update (one round trip down the chain) instead of several."""
        since = time.monotonic()
        ends: dict[int, int] = {}
        held: list[tuple[int, int]] = []
        groups: dict[tuple[int, int], list[Sqe]] = {}
        for sqe in batch:
            cached = self._inodes.get(sqe[2])
            layout = cached[0].layout if cached else None
            chunk = sqe[3] // layout.chunk_size if layout else 0
            groups.setdefault((sqe[2], chunk), []).append(sqe)
        sem = asyncio.Semaphore(WORKERS_PER_BATCH)

        async def run(group: list[Sqe]) -> None:
            async with sem:
                for sqes in _adjacent_runs(group, self._iovs):
                    result = await self._write_run(sqes, since, ends)
                    held.extend((q[5], result if result < 0 else q[4]) for q in sqes)

        await asyncio.gather(*(run(g) for g in groups.values()))
        if held:
            # Written lengths reach meta before the program sees the completions,
            # so a stat right after wait() shows them (3FS needs force_fsync).
            await self._sync_lengths(ends)
            for tag, result in held:
                ring.post(tag, result)
            ring.done_bell.ring()

    async def _write_run(
        self, sqes: list[Sqe], since: float, ends: dict[int, int]
    ) -> int:
        """One storage write for a run of adjacent writes (see `_adjacent_runs`);
        returns its total length or a negative errno shared by all of them."""
        if not _buffer_ok(sqes[0], self._iovs):
            return -errno.EFAULT  # such a write always stands alone
        inode, start = sqes[0][2], sqes[0][3]
        views = [self._iovs[q[0]].view[q[1] : q[1] + q[4]] for q in sqes]
        data = views[0] if len(views) == 1 else memoryview(b"".join(views))
        try:
            node = await self._inode(inode, 0, since)
            assert node.layout is not None
            await self._client_or_fail().files.write(
                inode, node.layout, start, data, stream=data.nbytes >= STREAM_BYTES
            )
        except errors.Py3fsError as exc:
            return -exc.errno
        except Exception:
            logger.exception("usrbio write on inode %d failed", inode)
            return -errno.EIO
        ends[inode] = max(ends.get(inode, 0), start + data.nbytes)
        return data.nbytes

    async def _inode(self, inode: int, need_end: int, since: float) -> Inode:
        """The inode, re-read from meta when the cached length is short of
        `need_end` and older than the batch (another writer may have grown it)."""
        cached = self._inodes.get(inode)
        if cached is not None and (cached[0].length >= need_end or cached[1] >= since):
            return cached[0]
        assert self._client is not None
        node = await self._client.stat_inode(inode)
        if not node.layout:
            raise errors.IsADirectory(f"inode {inode} is not a file")
        self._inodes[inode] = (node, time.monotonic())
        return node

    async def _sync_lengths(self, ends: dict[int, int]) -> None:
        assert self._client is not None
        for inode, end in ends.items():
            cached = self._inodes.get(inode)
            if cached is not None and cached[0].length >= end:
                continue
            try:
                node = await self._client.meta.sync(SyncReq(inode=inode, length=end))
            except errors.Py3fsError:
                logger.warning("usrbio: length of inode %d not updated", inode)
                continue
            self._inodes[inode] = (node, time.monotonic())
            if self._on_length is not None:
                try:
                    await self._on_length(inode)
                except Exception:
                    logger.exception("usrbio: length hook failed for %d", inode)


def _adjacent_runs(group: list[Sqe], iovs: dict[bytes, _Iov]) -> list[list[Sqe]]:
    """Split one chunk's writes, in offset order, into runs where each write
    starts where the previous ended; a write with a bad buffer stands alone (it
    gets its own EFAULT)."""
    runs: list[list[Sqe]] = []
    for sqe in sorted(group, key=lambda q: q[3]):
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last[3] + last[4] == sqe[3]
            and _buffer_ok(last, iovs)
            and _buffer_ok(sqe, iovs)
        ):
            runs[-1].append(sqe)
        else:
            runs.append([sqe])
    return runs


def _buffer_ok(sqe: Sqe, iovs: dict[bytes, _Iov]) -> bool:
    iov = iovs.get(sqe[0])
    return iov is not None and sqe[1] + sqe[4] <= iov.view.nbytes
