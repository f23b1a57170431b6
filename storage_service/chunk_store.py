"""The chunk store interface and its in-memory twin.

`ChunkStore` is what the storage write, read and resync paths use; it has two
implementations with the same behaviour: `FileChunkStore` (in
`storage_service.file_chunk_store`: the on-disk engine of format 2, see
`storage_service.chunk_format`) and `MemChunkStore` here, which keeps chunks in
memory but goes through the same steps (stage, mark committed, apply, forget)
and the same fault points, so that a crash at any of them (`crash()`) can be
tested without disks, and a model test runs against both.

An update is staged as the pending version (committed data untouched: a read
during it returns committed data), then committed: marked for redo, applied to
the data and the block table, forgotten. A crash before the mark leaves the old
version, after it the new one (the redo is replayed on recovery): never a torn
write.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from py3fs import errors, ids
from py3fs.faults import fault_point
from storage_service.chunk_format import (
    BLOCK_SIZE,
    MAX_CHUNK_SIZE,
    ChunkInfo,
    ChunkMeta,
    check_payload,
    covering,
    make_meta,
    plan_update,
    verify_blocks,
)

__all__ = [
    "MAX_CHUNK_SIZE",
    "ChunkInfo",
    "ChunkStore",
    "MemChunkStore",
    "Staged",
    "StoreStats",
]

# Crash points of an update, in order (3FS-style FaultInjection names).
STAGE_WRITTEN = "storage.chunk_stage.after_write"
AFTER_STAGE = "storage.chunk_commit.after_stage"
MID_APPLY = "storage.chunk_commit.mid_apply"
AFTER_APPLY = "storage.chunk_commit.after_apply"


@dataclass(frozen=True)
class Staged:
    """A pending version: staged, not committed yet. `plan` is the store's own."""

    chunk_id: bytes
    info: ChunkInfo
    plan: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class StoreStats:
    used_bytes: int
    chunk_count: int
    free_bytes: int
    total_bytes: int
    device: int = 0  # st_dev of the filesystem holding the target


def check_write(chunk_size: int, offset: int, n: int) -> None:
    """Raise ChunkTooLarge unless [offset, offset + n) fits the chunk size."""
    if chunk_size > MAX_CHUNK_SIZE or chunk_size <= 0:
        raise errors.ChunkTooLarge(
            f"chunk size {chunk_size} not in 1..{MAX_CHUNK_SIZE}"
        )
    if offset < 0 or offset + n > chunk_size:
        raise errors.ChunkTooLarge(
            f"write [{offset}, {offset + n}) outside chunk size {chunk_size}"
        )


def read_window(length: int, offset: int, want: int) -> tuple[int, int]:
    """The bytes [start, end) of a chunk of `length` that a read returns."""
    start = min(max(offset, 0), length)
    return start, min(start + max(want, 0), length)


class ChunkStore(abc.ABC):
    """A target's chunks. Callers serialize updates of one chunk (the write path
    holds a per-chunk lock); reads may run concurrently with updates and see either
    the old or the new committed version. Cancelling an awaiting call leaves the
    store consistent: a stage that never commits is a leftover `.tmp` at worst."""

    @abc.abstractmethod
    def get(self, chunk_id: bytes) -> ChunkInfo | None:
        """The committed metadata of a chunk, or None if it does not exist."""

    @abc.abstractmethod
    def pending_version(self, chunk_id: bytes) -> int:
        """The version staged but not committed yet, or 0."""

    @abc.abstractmethod
    def list_chunks(self, inode: int = 0) -> list[tuple[bytes, ChunkInfo]]:
        """Every committed chunk (of `inode`, or all when 0), sorted by chunk id."""

    @abc.abstractmethod
    async def read(
        self, chunk_id: bytes, offset: int, length: int, verify: bool = True
    ) -> tuple[ChunkInfo, memoryview]:
        """Up to `length` bytes at `offset` of the committed data (short at the end).
        Reads and verifies only the blocks the range covers, so it allocates at
        most the range plus one block on either side. Raises ChunkNotFound, or
        ChecksumMismatch (naming the block) when `verify` finds corruption."""

    @abc.abstractmethod
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
        """Write the new content (committed data with `data` applied at `offset`, a
        gap zero-filled; or just `data` on `full_replace`) as a pending version.
        Raises ChunkTooLarge, ChecksumMismatch (data vs `data_crc`, or the old data
        is corrupt), NoSpace; on error nothing committed is touched. `stream`:
        the writer will not read these bytes back soon (WriteReq.stream)."""

    @abc.abstractmethod
    async def commit(self, staged: Staged) -> ChunkInfo:
        """Make a staged version the committed one: wholly, even across a crash
        once this has started writing (the redo is replayed)."""

    @abc.abstractmethod
    async def abort(self, staged: Staged) -> None:
        """Drop a staged version."""

    @abc.abstractmethod
    async def remove_inode(self, inode: int) -> int:
        """Delete every chunk of `inode`; returns how many existed."""

    async def remove_inodes(self, inodes: Sequence[int]) -> int:
        """Delete every chunk of each of `inodes` (GC's batches); returns how
        many existed. Stores override it to pay per batch what they would pay
        per inode (a thread hop, a directory fsync)."""
        total = 0
        for inode in inodes:
            total += await self.remove_inode(inode)
        return total

    @abc.abstractmethod
    async def remove_chunk(self, chunk_id: bytes) -> bool:
        """Delete one chunk (resync); returns whether it existed."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats: ...

    async def sync(self) -> int:
        """Flush every update committed so far to stable storage (a client's
        fsync/close); returns how many chunks it flushed."""
        return 0

    async def sync_chunk(self, chunk_id: bytes) -> None:
        """Flush the committed updates of one chunk to stable storage (a write
        that carries `sync`: the last write of a file being closed)."""
        return None

    async def write(
        self, chunk_id: bytes, offset: int, data: Any, **kw: Any
    ) -> ChunkInfo:
        """Stage and commit in one step (tests, resync, repair)."""
        staged = await self.stage(chunk_id, offset, data, **kw)
        try:
            return await self.commit(staged)
        except BaseException:
            await self.abort(staged)
            raise

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> ChunkStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class MemChunkStore(ChunkStore):
    """Chunks in memory, with the file store's steps, checks and fault points.

    `durable` is what a disk would hold: committed chunks and marked (redo)
    updates; `crash()` throws away the rest (pending versions) and replays the
    marks, as `FileChunkStore.load()` does after a restart. `corrupt()` flips a
    byte, as a bad disk would."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytearray] = {}
        self._meta: dict[bytes, ChunkMeta] = {}
        self._pending: dict[bytes, int] = {}
        self._redo: dict[bytes, Staged] = {}

    def get(self, chunk_id: bytes) -> ChunkInfo | None:
        meta = self._meta.get(chunk_id)
        return meta.info if meta else None

    def pending_version(self, chunk_id: bytes) -> int:
        return self._pending.get(chunk_id, 0)

    def list_chunks(self, inode: int = 0) -> list[tuple[bytes, ChunkInfo]]:
        return sorted(
            (cid, meta.info)
            for cid, meta in self._meta.items()
            if not inode or ids.split_chunk_id(cid)[0] == inode
        )

    async def stats(self) -> StoreStats:
        used = sum(m.info.length for m in self._meta.values())
        return StoreStats(used, len(self._meta), 1 << 40, 1 << 40)

    def _block(self, chunk_id: bytes, block: int) -> memoryview:
        meta = self._meta[chunk_id]
        start = block * BLOCK_SIZE
        end = min(start + BLOCK_SIZE, meta.info.length)
        view = memoryview(self._data[chunk_id])[start:end]
        verify_blocks(meta.crcs, block, view, meta.info.length, chunk_id.hex())
        return view

    async def read(
        self, chunk_id: bytes, offset: int, length: int, verify: bool = True
    ) -> tuple[ChunkInfo, memoryview]:
        meta = self._meta.get(chunk_id)
        if meta is None:
            raise errors.ChunkNotFound(f"chunk {chunk_id.hex()} not found")
        start, end = read_window(meta.info.length, offset, length)
        if verify:
            for block in covering(start, end):
                self._block(chunk_id, block)
        return meta.info, memoryview(bytes(self._data[chunk_id][start:end]))

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
        pieces = check_payload(payload, offset, data_crc)
        length, crcs = plan_update(
            self._meta.get(chunk_id),
            offset,
            payload,
            full_replace,
            lambda block: self._block(chunk_id, block),
            pieces,
        )
        meta = make_meta(version, length, chain_ver, crcs)
        self._pending[chunk_id] = version
        fault_point(STAGE_WRITTEN)
        return Staged(chunk_id, meta.info, (meta, offset, bytes(payload), full_replace))

    async def commit(self, staged: Staged) -> ChunkInfo:
        if self._pending.get(staged.chunk_id) == staged.info.version:
            del self._pending[staged.chunk_id]
        self._redo[staged.chunk_id] = staged
        fault_point(AFTER_STAGE)
        self._apply(staged)
        return staged.info

    def _apply(self, staged: Staged) -> None:
        meta, offset, payload, full = staged.plan
        buf = self._data.setdefault(staged.chunk_id, bytearray())
        if full:
            buf[:] = payload
        else:
            if len(buf) < offset:
                buf.extend(bytes(offset - len(buf)))
            buf[offset : offset + len(payload)] = payload
        fault_point(MID_APPLY)
        self._meta[staged.chunk_id] = meta
        fault_point(AFTER_APPLY)
        del self._redo[staged.chunk_id]

    async def abort(self, staged: Staged) -> None:
        if self._pending.get(staged.chunk_id) == staged.info.version:
            del self._pending[staged.chunk_id]

    def crash(self) -> None:
        """Lose what a process crash loses; replay marked commits."""
        self._pending.clear()
        for staged in list(self._redo.values()):
            self._apply(staged)

    def corrupt(self, chunk_id: bytes, pos: int) -> None:
        self._data[chunk_id][pos] ^= 0xFF

    async def remove_inode(self, inode: int) -> int:
        gone = [cid for cid, _ in self.list_chunks(inode)]
        for cid in gone:
            await self.remove_chunk(cid)
        return len(gone)

    async def remove_chunk(self, chunk_id: bytes) -> bool:
        self._data.pop(chunk_id, None)
        self._redo.pop(chunk_id, None)
        return self._meta.pop(chunk_id, None) is not None
