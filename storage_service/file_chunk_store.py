"""The on-disk chunk engine of one storage target (format 2, see chunk_format).

A target is a directory; an inode's chunks live in `<inode hex>/` so they list
and remove as one directory. Each chunk is `<name>.d` (data) + `<name>.m` (block
table). An update:

1. stage: the payload goes to `<name>.p` with the new block table; an append (a
   write at or past the committed length) instead writes its bytes straight into
   `<name>.d` past the committed length, where no read looks, and `<name>.p`
   holds only the table. Committed bytes are not touched.
2. commit: rename `<name>.p` to `<name>.r` (the commit point), write the payload
   into `<name>.d` (only the bytes written, never the whole chunk), rewrite
   `<name>.m`, unlink `<name>.r`.

The first write of a chunk (no table yet) stages no `.p`: its bytes go into a
new `<name>.d`, and its commit writes the table to `<name>.m.tmp` and renames it
to `<name>.m` (the commit point; see `_commit_new`).

On load, a `.p` is an uncommitted pending version and is dropped, as are a
`.m.tmp` and a `.d` without a table; a `.r` newer than `<name>.m` is replayed
(idempotent), so a crash anywhere leaves each write wholly old or wholly new.
Reads that overlap an overwrite's apply wait for it (a per-chunk gate), so they
never mix old and new bytes.

Durability: with `fsync=False` (the default) an update reaches the page cache
when it is acknowledged and the disk on `sync()` (a client's fsync/close); with
`fsync=True` every update is on disk before it is acknowledged; `sync_chunk`
puts one chunk on disk (a write that carries `sync`).
Disk I/O runs in worker threads, except small updates without fsync and reads
the page cache holds (`_inline`, `read`); block tables are cached in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from py3fs import errors, faults, ids
from py3fs.buffers import page_aligned, scratch
from py3fs.faults import fault_point
from py3fs.wire import crc32c
from storage_service.chunk_files import (
    convert_v1,
    fsync_path,
    pwrite_all,
    replay,
    unlink,
    write_meta,
)
from storage_service.chunk_format import (
    BLOCK_SIZE,
    DATA_SUFFIX,
    META_SUFFIX,
    PENDING_SUFFIX,
    REDO_SUFFIX,
    STAGE_FULL,
    STAGE_INPLACE,
    TMP_SUFFIX,
    ChunkInfo,
    ChunkMeta,
    check_payload,
    make_meta,
    pack_stage,
    plan_update,
    unpack_meta,
    verify_blocks,
)
from storage_service.chunk_store import (
    AFTER_APPLY,
    AFTER_STAGE,
    MID_APPLY,
    STAGE_WRITTEN,
    ChunkStore,
    Staged,
    StoreStats,
    check_write,
    read_window,
)

logger = logging.getLogger(__name__)
_UPDATE_POINTS = (STAGE_WRITTEN, AFTER_STAGE, MID_APPLY, AFTER_APPLY)
# Update steps of at most this many payload bytes run on the loop (`_inline`).
INLINE_BYTES = 128 * 1024
# preadv that fails with EAGAIN instead of waiting for the disk (Linux 4.14+).
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# A read the page cache cannot serve may wait for the disk on the loop when it
# is at most this long (see `read`).
INLINE_READ_BYTES = 128 * 1024
# Appends of at least this many bytes, at offsets and from buffers aligned to
# DIRECT_ALIGN, are written with O_DIRECT (see `_write_data`).
DIRECT_BYTES = 1024 * 1024
DIRECT_ALIGN = 4096
# A flush fsyncs its files in at most _FSYNC_THREADS worker threads, each taking
# at least _FSYNC_PER_THREAD of them (see `_fsync_chunks`).
_FSYNC_THREADS = 4
_FSYNC_PER_THREAD = 8


class _NoWaitUnsupported(Exception):
    """The file system refuses RWF_NOWAIT: read in threads from now on."""


@dataclass(frozen=True)
class _Plan:
    meta: ChunkMeta
    offset: int
    payload: memoryview  # empty when it was appended in place
    flags: int
    base: str
    fresh: bool = False  # the first write of the chunk: see `_commit_new`


class _Gate:
    """Readers of one chunk vs. an apply that rewrites committed bytes."""

    def __init__(self) -> None:
        self.readers = 0
        self.writer: asyncio.Future[None] | None = None
        self.drained: asyncio.Event | None = None


class FileChunkStore(ChunkStore):
    """Chunks under `root`, format 2. Call `await load()` first."""

    def __init__(
        self, root: str, *, fsync: bool = False, disk_wait_on_loop: float = 0.002
    ) -> None:
        self.root = root
        self.fsync = fsync
        # Small reads wait for the disk on the loop while they take at most
        # this long on average (`disk_read_s`); 0: never.
        self.disk_wait_on_loop = disk_wait_on_loop
        self._chunks: dict[int, dict[bytes, ChunkMeta]] = {}
        # Totals over `_chunks`, kept as it changes: heartbeats report them
        # twice a second per target, and summing them took ~10% of a busy
        # node's loop with a few thousand chunks.
        self._used = 0
        self._count = 0
        # Chunks whose files fail to parse: listed, unreadable until replaced.
        self._damaged: dict[bytes, ChunkInfo] = {}
        self._pending: dict[bytes, int] = {}
        self._gates: dict[bytes, _Gate] = {}
        self._unsynced: set[bytes] = set()
        self._flushing: list[set[bytes]] = []  # what running sync()s flush
        self._device = 0  # st_dev of root, read once by load()
        self._nowait = _NOWAIT
        # How long a read that went to the disk took, on average (seconds,
        # moving average): decides whether the next one may wait on the loop.
        self.disk_read_s = 0.0
        self._bases: dict[bytes, str] = {}  # chunk id -> base(), computed once
        self._direct = True  # O_DIRECT works here (see `_write_data`)

    # -- layout

    def _dir(self, inode: int) -> str:
        return os.path.join(self.root, f"{inode:016x}")

    def base(self, chunk_id: bytes) -> str:
        """The path of a chunk without suffix (format 1 kept its file there)."""
        path = self._bases.get(chunk_id)
        if path is None:
            inode, _ = ids.split_chunk_id(chunk_id)
            path = os.path.join(self._dir(inode), ids.chunk_file_name(chunk_id))
            if len(self._bases) >= 65536:
                self._bases.clear()
            self._bases[chunk_id] = path
        return path

    def data_path(self, chunk_id: bytes) -> str:
        return self.base(chunk_id) + DATA_SUFFIX

    def meta_path(self, chunk_id: bytes) -> str:
        return self.base(chunk_id) + META_SUFFIX

    # -- loading and recovery

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        """Scan the directory: drop pending versions, replay committed ones,
        convert format-1 chunks, cache every block table."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        # Chunk data is other users' file contents: a root an older version
        # made wider becomes 0700 too.
        os.chmod(self.root, 0o700)
        self._device = os.stat(self.root).st_dev
        self._chunks.clear()
        self._used = self._count = 0
        self._damaged.clear()
        for sub in os.scandir(self.root):
            if not sub.is_dir():
                continue
            bases: dict[str, set[str]] = {}
            for entry in os.scandir(sub.path):
                base, dot, suffix = entry.name.partition(".")
                bases.setdefault(base, set()).add(dot + suffix)
            for base, suffixes in bases.items():
                try:
                    cid = ids.parse_chunk_file_name(base)
                except ValueError:
                    logger.warning("ignoring stray files %s.*", os.path.join(sub, base))
                    continue
                self._recover(cid, os.path.join(sub.path, base), suffixes)
        # Updates acknowledged before a restart may still be only in the page
        # cache (the process died, not the host), and the set of unsynced
        # chunks starts empty: without this a sync write that finds its update
        # already applied would report it on disk without any fsync.
        _syncfs(self.root)

    def _recover(self, cid: bytes, base: str, suffixes: set[str]) -> None:
        for junk in (TMP_SUFFIX, META_SUFFIX + TMP_SUFFIX, PENDING_SUFFIX):
            if junk in suffixes:
                unlink(base + junk)
        meta: ChunkMeta | None = None
        if META_SUFFIX in suffixes:
            try:
                with open(base + META_SUFFIX, "rb") as fh:
                    meta = unpack_meta(fh.read())
            except errors.ChecksumMismatch as exc:
                if REDO_SUFFIX not in suffixes:
                    self._mark_damaged(cid, base, str(exc))
                    return
        elif "" in suffixes:
            try:
                meta = convert_v1(base)
            except errors.ChecksumMismatch as exc:
                self._mark_damaged(cid, base, str(exc))
                return
        if REDO_SUFFIX in suffixes:
            meta = replay(base, meta)
        if "" in suffixes and META_SUFFIX in suffixes:
            unlink(base)  # a format-1 file already converted
        if meta is None:
            unlink(base + DATA_SUFFIX)  # an append that never committed
            return
        if meta.info.length and not os.path.exists(base + DATA_SUFFIX):
            self._mark_damaged(cid, base, "data file missing")
            return
        self._set(cid, meta)

    def _mark_damaged(self, cid: bytes, base: str, why: str) -> None:
        try:
            size = os.stat(base + DATA_SUFFIX).st_size
        except FileNotFoundError:
            size = 0
        logger.warning("chunk %s is damaged (%s); it reads as corrupt", base, why)
        self._damaged[cid] = ChunkInfo(0, size, 0, 0)
        inode, _ = ids.split_chunk_id(cid)
        self._chunks.setdefault(inode, {})

    def _set(self, chunk_id: bytes, meta: ChunkMeta) -> None:
        inode, _ = ids.split_chunk_id(chunk_id)
        chunks = self._chunks.setdefault(inode, {})
        old = chunks.get(chunk_id)
        if old is None:
            self._count += 1
        else:
            self._used -= old.info.length
        self._used += meta.info.length
        chunks[chunk_id] = meta
        self._damaged.pop(chunk_id, None)

    def _forget(self, chunks: dict[bytes, ChunkMeta]) -> None:
        """`chunks` left `_chunks`: take them off the totals."""
        self._count -= len(chunks)
        self._used -= sum(meta.info.length for meta in chunks.values())

    def _meta(self, chunk_id: bytes) -> ChunkMeta | None:
        inode, _ = ids.split_chunk_id(chunk_id)
        return self._chunks.get(inode, {}).get(chunk_id)

    # -- metadata

    def get(self, chunk_id: bytes) -> ChunkInfo | None:
        meta = self._meta(chunk_id)
        return meta.info if meta else self._damaged.get(chunk_id)

    def pending_version(self, chunk_id: bytes) -> int:
        return self._pending.get(chunk_id, 0)

    def list_chunks(self, inode: int = 0) -> list[tuple[bytes, ChunkInfo]]:
        if inode:
            items = [(c, m.info) for c, m in self._chunks.get(inode, {}).items()]
        else:
            items = [
                (c, m.info)
                for chunks in self._chunks.values()
                for c, m in chunks.items()
            ]
        items += [
            (c, info)
            for c, info in self._damaged.items()
            if not inode or ids.split_chunk_id(c)[0] == inode
        ]
        return sorted(items)

    async def stats(self) -> StoreStats:
        st = await asyncio.to_thread(os.statvfs, self.root)
        return StoreStats(
            self._used,
            self._count,
            st.f_bavail * st.f_frsize,
            st.f_blocks * st.f_frsize,
            self._device,
        )

    # -- the read gate

    @contextlib.asynccontextmanager
    async def _reading(self, chunk_id: bytes) -> AsyncIterator[None]:
        gate = self._gates.get(chunk_id)
        while gate is not None and gate.writer is not None:
            await asyncio.shield(gate.writer)
            gate = self._gates.get(chunk_id)
        if gate is None:
            gate = self._gates[chunk_id] = _Gate()
        gate.readers += 1
        try:
            yield
        finally:
            gate.readers -= 1
            if gate.readers == 0:
                if gate.drained is not None:
                    gate.drained.set()
                elif gate.writer is None:
                    del self._gates[chunk_id]

    @contextlib.asynccontextmanager
    async def _rewriting(self, chunk_id: bytes) -> AsyncIterator[None]:
        """Exclusive against readers (updates are serialized by the caller)."""
        gate = self._gates.setdefault(chunk_id, _Gate())
        gate.writer = asyncio.get_running_loop().create_future()
        try:
            if gate.readers:
                gate.drained = asyncio.Event()
                await gate.drained.wait()
            yield
        finally:
            gate.writer.set_result(None)
            gate.writer = None
            gate.drained = None
            if gate.readers == 0:
                self._gates.pop(chunk_id, None)

    # -- reads

    async def read(
        self, chunk_id: bytes, offset: int, length: int, verify: bool = True
    ) -> tuple[ChunkInfo, memoryview]:
        # Most reads hit the page cache: served on the loop they cost a few
        # microseconds, while a worker thread's round trip costs ~150 us of
        # CPU (4 KiB random reads spent most of their time there). A small
        # read that must wait for a fast disk (an SSD: ~100-700 us) waits on
        # the loop too, which costs less CPU than the thread's round trip;
        # larger reads, or any read while the disk is slow, go to a thread.
        # With no apply under way, a read on the loop needs no place in the
        # gate: nothing else runs until it returns.
        gate = self._gates.get(chunk_id)
        if self._nowait and (gate is None or gate.writer is None):
            meta, start, end = self._window(chunk_id, offset, length)
            if start == end:
                return meta.info, memoryview(b"")
            try:
                return self._read(chunk_id, meta, start, end, verify, _NOWAIT)
            except BlockingIOError:
                if (
                    end - start <= INLINE_READ_BYTES
                    and self.disk_read_s < self.disk_wait_on_loop
                ):
                    return self._disk_read(chunk_id, meta, start, end, verify)
            except _NoWaitUnsupported:
                self._nowait = False
        async with self._reading(chunk_id):
            meta, start, end = self._window(chunk_id, offset, length)
            if start == end:
                return meta.info, memoryview(b"")
            return await asyncio.to_thread(
                self._disk_read, chunk_id, meta, start, end, verify
            )

    def _disk_read(
        self, chunk_id: bytes, meta: ChunkMeta, start: int, end: int, verify: bool
    ) -> tuple[ChunkInfo, memoryview]:
        """`_read` that may wait for the disk; a small one is timed into
        `disk_read_s` (large ones take longer on any disk)."""
        if end - start > INLINE_READ_BYTES:
            return self._read(chunk_id, meta, start, end, verify)
        began = time.perf_counter()
        try:
            return self._read(chunk_id, meta, start, end, verify)
        finally:
            took = time.perf_counter() - began
            self.disk_read_s += (took - self.disk_read_s) / 16

    async def open_range(
        self, chunk_id: bytes, offset: int, length: int
    ) -> tuple[ChunkMeta, int, int, int]:
        """For a reader on this host (storage_service.local_read): the committed
        chunk's block table, the part [start, end) of the range it has, and its
        data file open for reading (-1 when that part is empty). An overwrite
        being applied is waited for; one applied later shows in the checksums
        the reader verifies."""
        gate = self._gates.get(chunk_id)
        if gate is not None and gate.writer is not None:
            async with self._reading(chunk_id):
                pass
        meta, start, end = self._window(chunk_id, offset, length)
        if start == end:
            return meta, start, end, -1
        try:
            fd = os.open(self.data_path(chunk_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self._meta(chunk_id) is None:  # removed meanwhile
                raise errors.ChunkNotFound(f"chunk {chunk_id.hex()} removed") from None
            raise errors.ChecksumMismatch(
                f"chunk {chunk_id.hex()}: data file missing"
            ) from None
        except OSError as exc:
            raise errors.from_oserror(exc) from None
        return meta, start, end, fd

    def _window(
        self, chunk_id: bytes, offset: int, length: int
    ) -> tuple[ChunkMeta, int, int]:
        """The committed chunk and the part of [offset, offset+length) it has."""
        meta = self._meta(chunk_id)
        if meta is None:
            if chunk_id in self._damaged:
                raise errors.ChecksumMismatch(
                    f"chunk {chunk_id.hex()} is damaged on disk"
                )
            raise errors.ChunkNotFound(f"chunk {chunk_id.hex()} not found")
        start, end = read_window(meta.info.length, offset, length)
        return meta, start, end

    def _read(
        self,
        chunk_id: bytes,
        meta: ChunkMeta,
        start: int,
        end: int,
        verify: bool,
        flags: int = 0,
    ) -> tuple[ChunkInfo, memoryview]:
        """Read and verify [start, end) of the committed chunk; with RWF_NOWAIT
        in `flags`, raises BlockingIOError unless the page cache holds it all."""
        length = meta.info.length
        lo, hi = start, end
        if verify:
            # Whole blocks: their checksums cover them, not the range.
            lo = start // BLOCK_SIZE * BLOCK_SIZE
            hi = min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, length)
        buf = scratch(hi - lo)  # all of it read below, or an error
        try:
            fd = os.open(self.data_path(chunk_id), os.O_RDONLY)
            try:
                got = os.preadv(fd, [buf], lo, flags)
                if flags and got != len(buf):
                    raise BlockingIOError  # partly cached: the rest may wait
            finally:
                os.close(fd)
        except BlockingIOError:
            raise
        except OSError as exc:
            if flags and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                raise _NoWaitUnsupported from None
            if isinstance(exc, FileNotFoundError):
                if self._meta(chunk_id) is None:  # removed while we were reading
                    raise errors.ChunkNotFound(
                        f"chunk {chunk_id.hex()} removed"
                    ) from None
                raise errors.ChecksumMismatch(
                    f"chunk {chunk_id.hex()}: data file missing"
                ) from None
            raise errors.from_oserror(exc) from None
        if got != len(buf):
            raise errors.ChecksumMismatch(
                f"chunk {chunk_id.hex()}: data file ends at {lo + got}, length {length}"
            )
        view = memoryview(buf)
        if verify:
            verify_blocks(meta.crcs, lo // BLOCK_SIZE, view, length, chunk_id.hex())
        return meta.info, view[start - lo : end - lo]

    def _old_block(
        self, fd: int, chunk_id: bytes, meta: ChunkMeta, block: int
    ) -> memoryview:
        start = block * BLOCK_SIZE
        end = min(start + BLOCK_SIZE, meta.info.length)
        got = memoryview(os.pread(fd, end - start, start))
        if got.nbytes != end - start:
            raise errors.ChecksumMismatch(f"chunk {chunk_id.hex()}: data file short")
        verify_blocks(meta.crcs, block, got, meta.info.length, chunk_id.hex())
        return got

    # -- updates

    async def stage(
        self,
        chunk_id: bytes,
        offset: int,
        data: Any,
        *,
        version: int,
        chunk_size: int,
        chain_ver: int,
        full_replace: bool = False,
        data_crc: int | None = None,
        stream: bool = False,
    ) -> Staged:
        payload = memoryview(data).cast("B")
        check_write(chunk_size, offset, payload.nbytes)
        if chunk_id in self._damaged and not full_replace:
            raise errors.ChecksumMismatch(f"chunk {chunk_id.hex()} is damaged on disk")
        self._pending[chunk_id] = version
        args = (
            chunk_id,
            offset,
            payload,
            version,
            chain_ver,
            full_replace,
            data_crc,
            stream,
        )
        try:
            if self._inline(payload.nbytes):
                return self._stage(*args)
            return await asyncio.to_thread(self._stage, *args)
        except BaseException:
            self._pending.pop(chunk_id, None)
            raise

    def _inline(self, nbytes: int) -> bool:
        """Whether an update step moving `nbytes` runs on the event loop: small
        ones do, unless they fsync. Without fsync they only touch the page cache
        (a create, a pwrite of at most INLINE_BYTES, a rename: tens of us),
        where a worker thread's round trip costs ~100 us of CPU and, on a busy
        host, a wait for a core; a small write paid two per replica."""
        return (
            not self.fsync
            and nbytes <= INLINE_BYTES
            and not faults.delaying(*_UPDATE_POINTS)
        )

    def _stage(
        self,
        chunk_id: bytes,
        offset: int,
        payload: memoryview,
        version: int,
        chain_ver: int,
        full: bool,
        data_crc: int | None,
        stream: bool,
    ) -> Staged:
        pieces = check_payload(payload, offset, data_crc)
        old = self._meta(chunk_id)
        old_len = old.info.length if old else 0
        base = self.base(chunk_id)
        inplace = not full and offset >= old_len
        try:
            chunk_dir = os.path.dirname(base)
            if not os.path.isdir(chunk_dir):
                os.makedirs(chunk_dir, mode=0o700, exist_ok=True)
                if self.fsync:
                    fsync_path(self.root, directory=True)
            fd = os.open(base + DATA_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if inplace:
                    if os.fstat(fd).st_size > old_len:
                        # Bytes of an aborted append: a gap must read as zeros.
                        os.ftruncate(fd, old_len)
                    self._write_data(fd, base + DATA_SUFFIX, payload, offset, stream)
                    if not payload.nbytes and offset > old_len:
                        os.ftruncate(fd, offset)  # an empty write that extends
                    if self.fsync:
                        os.fdatasync(fd)
                length, crcs = plan_update(
                    old,
                    offset,
                    payload,
                    full,
                    lambda block: self._old_block(fd, chunk_id, old, block),  # type: ignore[arg-type]
                    pieces,
                )
            finally:
                os.close(fd)
            meta = make_meta(version, length, chain_ver, crcs)
            flags = (STAGE_FULL if full else 0) | (STAGE_INPLACE if inplace else 0)
            stored = memoryview(b"") if inplace else payload
            fresh = inplace and old is None
            if not fresh:
                # A new chunk needs no staged record: its bytes are in a data
                # file no table describes yet (see `_commit_new`).
                crc = data_crc if data_crc is not None else crc32c(stored)
                head = pack_stage(version, offset, crc, flags, meta, payload.nbytes)
                fd = os.open(
                    base + PENDING_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
                )
                try:
                    pwrite_all(fd, [head, stored], 0)
                    if self.fsync:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            unlink(base + PENDING_SUFFIX)
            raise errors.from_oserror(exc) from None
        fault_point(STAGE_WRITTEN)
        plan = _Plan(meta, offset, stored, flags, base, fresh)
        return Staged(chunk_id, meta.info, plan)

    def _write_data(
        self, fd: int, path: str, payload: memoryview, offset: int, stream: bool
    ) -> None:
        """Write `payload` at `offset` of data file `fd` (`path`). A large one
        of a `stream` that starts on a page goes to the disk with O_DIRECT,
        straight from the server's page-aligned receive buffer: a buffered
        write copies it into the page cache (here ~1.3 ms of CPU per MiB, half
        a storage node's CPU in a stream of writes, plus the kernel's writeback
        later) where DMA costs ~0.06 ms. The bytes are then on the device
        before the ack, not yet durable (no cache flush, no metadata: fsync
        still does that), and not in the page cache: a read of them goes to
        the disk, which is why only writers that say they stream get this (a
        KV cache put, read back soon, stays buffered)."""
        n = payload.nbytes - payload.nbytes % DIRECT_ALIGN
        if not (
            stream
            and self._direct
            and n >= DIRECT_BYTES
            and offset % DIRECT_ALIGN == 0
            and page_aligned(payload)
        ):
            pwrite_all(fd, [payload], offset)
            return
        try:
            direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # The file system has no O_DIRECT (tmpfs): buffered from now on.
            logger.info("%s: no O_DIRECT here, writes stay buffered", self.root)
            self._direct = False
            pwrite_all(fd, [payload], offset)
            return
        try:
            pwrite_all(direct, [payload[:n]], offset)
        finally:
            os.close(direct)
        if n < payload.nbytes:
            pwrite_all(fd, [payload[n:]], offset + n)

    async def commit(self, staged: Staged) -> ChunkInfo:
        plan: _Plan = staged.plan
        try:
            if plan.flags & STAGE_INPLACE:
                # Committed bytes stay as they are: readers need not wait. The
                # commit writes only the block table (4 bytes per 64 KiB).
                if self._inline(0):
                    self._commit(plan)
                else:
                    await asyncio.to_thread(self._commit, plan)
                self._set(staged.chunk_id, plan.meta)
            else:
                async with self._rewriting(staged.chunk_id):
                    if self._inline(plan.payload.nbytes):
                        self._commit(plan)
                    else:
                        await asyncio.to_thread(self._commit, plan)
                    self._set(staged.chunk_id, plan.meta)
        finally:
            if self._pending.get(staged.chunk_id) == staged.info.version:
                del self._pending[staged.chunk_id]
        if not self.fsync:
            self._unsynced.add(staged.chunk_id)
        return staged.info

    def _commit(self, plan: _Plan) -> None:
        base = plan.base
        if plan.fresh:
            self._commit_new(plan)
            return
        try:
            os.rename(base + PENDING_SUFFIX, base + REDO_SUFFIX)
            if self.fsync:
                fsync_path(os.path.dirname(base), directory=True)
        except OSError as exc:
            unlink(base + PENDING_SUFFIX)
            raise errors.from_oserror(exc) from None
        fault_point(AFTER_STAGE)
        # From here the update is committed: an error leaves the redo for load().
        try:
            if not plan.flags & STAGE_INPLACE:
                fd = os.open(base + DATA_SUFFIX, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    pwrite_all(fd, [plan.payload], plan.offset)
                    if plan.flags & STAGE_FULL:
                        os.ftruncate(fd, plan.meta.info.length)
                    if self.fsync:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
            fault_point(MID_APPLY)
            write_meta(base, plan.meta, sync=self.fsync)
        except OSError as exc:
            raise errors.from_oserror(exc) from None
        fault_point(AFTER_APPLY)
        unlink(base + REDO_SUFFIX)
        if plan.flags & STAGE_FULL:
            unlink(base)  # a format-1 file this replaces

    def _commit_new(self, plan: _Plan) -> None:
        """Commit the first write of a chunk: its bytes are in the data file
        already, and its block table appears by a rename (the commit point), so
        a crash leaves no chunk (load drops a data file without a table) or the
        whole new one. Later updates keep the redo record: a rename over an
        existing table costs more here than the record (ext4 starts writeback
        of a file renamed over another, ~80 us against ~20-60 us)."""
        try:
            write_meta(plan.base, plan.meta, sync=self.fsync, atomic=True)
        except OSError as exc:
            unlink(plan.base + META_SUFFIX + TMP_SUFFIX)
            raise errors.from_oserror(exc) from None
        # Nothing is left to apply: the points a redo passes through come at once.
        fault_point(AFTER_STAGE)
        fault_point(MID_APPLY)
        fault_point(AFTER_APPLY)

    async def abort(self, staged: Staged) -> None:
        if self._pending.get(staged.chunk_id) == staged.info.version:
            del self._pending[staged.chunk_id]
        await asyncio.to_thread(unlink, staged.plan.base + PENDING_SUFFIX)

    async def sync(self) -> int:
        chunks, self._unsynced = self._unsynced, set()
        self._flushing.append(chunks)
        try:
            await self._fsync_chunks(chunks)
        except BaseException:
            self._unsynced |= chunks
            raise
        finally:
            self._flushing.remove(chunks)
        return len(chunks)

    async def sync_chunk(self, chunk_id: bytes) -> None:
        if chunk_id not in self._unsynced and not any(
            chunk_id in s for s in self._flushing
        ):
            return  # already on disk (or written with fsync on)
        # A flush under way may not be done with it yet: fsync it here too.
        self._unsynced.discard(chunk_id)
        try:
            await self._fsync_chunks({chunk_id})
        except BaseException:
            self._unsynced.add(chunk_id)
            raise

    async def _fsync_chunks(self, chunks: set[bytes]) -> None:
        files: list[str] = []
        dirs: set[str] = set()
        for cid in chunks:
            base = self.base(cid)
            files += (base + DATA_SUFFIX, base + META_SUFFIX)
            dirs.add(os.path.dirname(base))
        if dirs:
            dirs.add(self.root)
        # Every fsync must be done before the flush is acknowledged, in no
        # particular order. One worker thread runs a few of them in a row: a
        # thread hop per fsync cost ~3x the CPU (GIL and futex hand-offs, on
        # each of three replicas) for no shorter wall time here (a chunk's four
        # fsyncs, 0.3 ms either way: the first commits the journal, the rest
        # find it done). Large flushes still spread over a few threads so the
        # disk sees several files' writeback at once.
        jobs = [(path, False) for path in files] + [
            (path, True) for path in sorted(dirs)
        ]
        if not jobs:
            return
        groups = max(1, min(_FSYNC_THREADS, len(jobs) // _FSYNC_PER_THREAD))
        await asyncio.gather(
            *(asyncio.to_thread(_fsync_all, jobs[i::groups]) for i in range(groups))
        )

    async def remove_inode(self, inode: int) -> int:
        return await self.remove_inodes([inode])

    async def remove_inodes(self, inodes: Sequence[int]) -> int:
        wanted = set(inodes)
        gone: set[bytes] = set()
        for inode in wanted:
            chunks = self._chunks.pop(inode, {})
            self._forget(chunks)
            gone.update(chunks)
        damaged = [c for c in self._damaged if ids.split_chunk_id(c)[0] in wanted]
        for cid in damaged:
            del self._damaged[cid]
        gone.update(damaged)
        self._unsynced -= gone
        # One thread hop and one fsync of the root for the whole batch.
        await asyncio.to_thread(self._remove_dirs, [self._dir(i) for i in wanted])
        return len(gone)

    async def remove_chunk(self, chunk_id: bytes) -> bool:
        inode, _ = ids.split_chunk_id(chunk_id)
        meta = self._chunks.get(inode, {}).pop(chunk_id, None)
        if meta is not None:
            self._forget({chunk_id: meta})
        existed = meta is not None
        existed = self._damaged.pop(chunk_id, None) is not None or existed
        self._unsynced.discard(chunk_id)
        base = self.base(chunk_id)
        try:
            for suffix in (META_SUFFIX, REDO_SUFFIX, PENDING_SUFFIX, DATA_SUFFIX, ""):
                await asyncio.to_thread(unlink, base + suffix)
        except OSError as exc:
            raise errors.from_oserror(exc) from None
        return existed

    def _remove_dirs(self, paths: list[str]) -> None:
        removed = False
        for path in paths:
            try:
                for entry in os.scandir(path):
                    unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise errors.from_oserror(exc) from None
            # A write racing the removal may recreate a file; it then stays.
            with contextlib.suppress(OSError):
                os.rmdir(path)
            removed = True
        if removed and self.fsync:
            try:
                fsync_path(self.root, directory=True)
            except OSError as exc:
                raise errors.from_oserror(exc) from None


def _syncfs(path: str) -> None:
    """Flush the whole file system holding `path` (syncfs(2); sync(2) where
    libc has no syncfs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_all(jobs: list[tuple[str, bool]]) -> None:
    for path, directory in jobs:
        _fsync_if_exists(path, directory)


def _fsync_if_exists(path: str, directory: bool) -> None:
    """fsync `path`; a file removed meanwhile has nothing left to flush (the
    root directory always exists)."""
    with contextlib.suppress(FileNotFoundError):
        fsync_path(path, directory=directory)
