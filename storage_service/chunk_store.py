"""The chunk engine of one storage target: chunk files, versions, checksums.

A target is a directory; each chunk is one file `<inode hex>/<chunk file name>` so an
inode's chunks list and remove as one directory. A file is a 32-byte header (magic,
format, committed version, length, CRC32C of the data, chain version, CRC32C of the
header) followed by the chunk data.

Updates are copy-on-write in two steps that match CRAQ: `stage` writes the complete
new content to `<name>.tmp` (the pending version), `commit` renames it over the chunk
(the committed version). A crash leaves the old or the new file, never a torn one;
leftover `.tmp` files are uncommitted pending versions and are dropped on open.
All disk I/O runs in worker threads; metadata is cached in memory.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from py3fs import errors, ids
from py3fs.faults import fault_point
from py3fs.wire import crc32c

logger = logging.getLogger(__name__)

MAGIC: Final = b"P3CK"
FORMAT: Final = 1
# magic, format u16, flags u16, version u64, length u32, data crc u32,
# chain version u32, header crc u32 (over the preceding 28 bytes)
HEADER = struct.Struct("<4sHHQIIII")
HEADER_SIZE: Final = HEADER.size
MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024
TMP_SUFFIX: Final = ".tmp"


@dataclass(frozen=True)
class ChunkInfo:
    """A committed chunk: version, data length, CRC32C of the data, chain version."""

    version: int
    length: int
    crc: int
    chain_ver: int


@dataclass(frozen=True)
class Staged:
    """A pending version written to disk but not yet committed."""

    chunk_id: bytes
    tmp_path: str
    path: str
    info: ChunkInfo


@dataclass(frozen=True)
class StoreStats:
    used_bytes: int
    chunk_count: int
    free_bytes: int
    total_bytes: int
    device: int = 0  # st_dev of the filesystem holding the target


def pack_header(info: ChunkInfo) -> bytes:
    head = HEADER.pack(
        MAGIC, FORMAT, 0, info.version, info.length, info.crc, info.chain_ver, 0
    )
    return head[:-4] + struct.pack("<I", crc32c(head[:-4]))


def unpack_header(raw: bytes | bytearray | memoryview) -> ChunkInfo:
    """Parse a chunk header; raises ChecksumMismatch if it is damaged."""
    if len(raw) < HEADER_SIZE:
        raise errors.ChecksumMismatch("chunk header truncated")
    magic, fmt, _flags, ver, length, crc, chain_ver, hcrc = HEADER.unpack(
        raw[:HEADER_SIZE]
    )
    if magic != MAGIC or fmt != FORMAT or crc32c(raw[: HEADER_SIZE - 4]) != hcrc:
        raise errors.ChecksumMismatch("chunk header damaged")
    return ChunkInfo(ver, length, crc, chain_ver)


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
        Raises ChunkNotFound, or ChecksumMismatch when `verify` finds corruption."""

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
    ) -> Staged:
        """Write the new content (committed data with `data` applied at `offset`, a
        gap zero-filled; or just `data` on `full_replace`) as a pending version.
        Raises ChunkTooLarge, ChecksumMismatch (data vs `data_crc`, or the old data
        is corrupt), NoSpace; on error nothing committed is touched."""

    @abc.abstractmethod
    async def commit(self, staged: Staged) -> ChunkInfo:
        """Make a staged version the committed one (atomic rename)."""

    @abc.abstractmethod
    async def abort(self, staged: Staged) -> None:
        """Drop a staged version."""

    @abc.abstractmethod
    async def remove_inode(self, inode: int) -> int:
        """Delete every chunk of `inode`; returns how many existed."""

    @abc.abstractmethod
    async def remove_chunk(self, chunk_id: bytes) -> bool:
        """Delete one chunk (resync); returns whether it existed."""

    @abc.abstractmethod
    async def stats(self) -> StoreStats: ...

    async def write(
        self, chunk_id: bytes, offset: int, data: Any, **kw: Any
    ) -> ChunkInfo:
        """Stage and commit in one step (tests, resync)."""
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


def _write_all(fd: int, parts: Sequence[Any]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        while n and views:
            if n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileChunkStore(ChunkStore):
    """One file per chunk under `root`. Call `open()` (or `await load()`) first."""

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._chunks: dict[int, dict[bytes, ChunkInfo]] = {}
        self._device = 0  # st_dev of root, read once by load()
        self._pending: dict[bytes, int] = {}

    # -- layout

    def _dir(self, inode: int) -> str:
        return os.path.join(self.root, f"{inode:016x}")

    def path(self, chunk_id: bytes) -> str:
        inode, _ = ids.split_chunk_id(chunk_id)
        return os.path.join(self._dir(inode), ids.chunk_file_name(chunk_id))

    # -- loading

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        """Scan the directory: cache every chunk's header, drop stale pending files."""
        # Chunk data is other users' file contents: only the storage service's
        # user may list or read it (directories 0700, files 0600), also for a
        # directory an older version created wider.
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._device = os.stat(self.root).st_dev
        self._chunks.clear()
        for sub in os.scandir(self.root):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(TMP_SUFFIX):
                    os.unlink(entry.path)
                    continue
                try:
                    cid = ids.parse_chunk_file_name(entry.name)
                except ValueError:
                    logger.warning("ignoring stray file %s", entry.path)
                    continue
                try:
                    with open(entry.path, "rb") as fh:
                        info = unpack_header(fh.read(HEADER_SIZE))
                except errors.ChecksumMismatch:
                    # Keep it listed so it is visible; reads will report corruption.
                    size = entry.stat().st_size
                    info = ChunkInfo(0, max(size - HEADER_SIZE, 0), 0, 0)
                    logger.warning("chunk %s has a damaged header", entry.path)
                self._set(cid, info)

    def _set(self, chunk_id: bytes, info: ChunkInfo) -> None:
        inode, _ = ids.split_chunk_id(chunk_id)
        self._chunks.setdefault(inode, {})[chunk_id] = info

    # -- metadata

    def get(self, chunk_id: bytes) -> ChunkInfo | None:
        inode, _ = ids.split_chunk_id(chunk_id)
        return self._chunks.get(inode, {}).get(chunk_id)

    def pending_version(self, chunk_id: bytes) -> int:
        return self._pending.get(chunk_id, 0)

    def list_chunks(self, inode: int = 0) -> list[tuple[bytes, ChunkInfo]]:
        if inode:
            items = list(self._chunks.get(inode, {}).items())
        else:
            items = [kv for chunks in self._chunks.values() for kv in chunks.items()]
        return sorted(items)

    async def stats(self) -> StoreStats:
        used = count = 0
        for chunks in self._chunks.values():
            count += len(chunks)
            used += sum(info.length for info in chunks.values())
        st = await asyncio.to_thread(os.statvfs, self.root)
        return StoreStats(
            used,
            count,
            st.f_bavail * st.f_frsize,
            st.f_blocks * st.f_frsize,
            self._device,
        )

    # -- reads

    async def read(
        self, chunk_id: bytes, offset: int, length: int, verify: bool = True
    ) -> tuple[ChunkInfo, memoryview]:
        return await asyncio.to_thread(self._read, chunk_id, offset, length, verify)

    def _read(
        self, chunk_id: bytes, offset: int, length: int, verify: bool
    ) -> tuple[ChunkInfo, memoryview]:
        try:
            fd = os.open(self.path(chunk_id), os.O_RDONLY)
        except FileNotFoundError:
            raise errors.ChunkNotFound(f"chunk {chunk_id.hex()} not found") from None
        except OSError as exc:
            raise errors.from_oserror(exc) from None
        try:
            # One fd pins one version: a concurrent commit renames a new inode in.
            size = max(os.fstat(fd).st_size - HEADER_SIZE, 0)
            head = bytearray(HEADER_SIZE)
            start = min(max(offset, 0), size)
            end = min(start + max(length, 0), size)
            if verify:
                # The CRC covers the whole chunk, so verifying reads all of it.
                data = bytearray(size)
                got = os.preadv(fd, [head, data], 0)
            else:
                data = bytearray(end - start)
                got = os.preadv(fd, [head], 0)
                got += os.preadv(fd, [data], HEADER_SIZE + start)
        except OSError as exc:
            raise errors.from_oserror(exc) from None
        finally:
            os.close(fd)
        info = unpack_header(head)
        if info.length != size or got != HEADER_SIZE + len(data):
            raise errors.ChecksumMismatch(
                f"chunk {chunk_id.hex()}: header says {info.length} bytes, file {size}"
            )
        if not verify:
            return info, memoryview(data)
        if crc32c(data) != info.crc:
            raise errors.ChecksumMismatch(f"chunk {chunk_id.hex()}: data checksum")
        return info, memoryview(data)[start:end]

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
    ) -> Staged:
        n = memoryview(data).nbytes
        if chunk_size > MAX_CHUNK_SIZE or chunk_size <= 0:
            raise errors.ChunkTooLarge(
                f"chunk size {chunk_size} not in 1..{MAX_CHUNK_SIZE}"
            )
        if offset < 0 or offset + n > chunk_size:
            raise errors.ChunkTooLarge(
                f"write [{offset}, {offset + n}) outside chunk size {chunk_size}"
            )
        self._pending[chunk_id] = version
        try:
            return await asyncio.to_thread(
                self._stage,
                chunk_id,
                offset,
                data,
                version,
                chain_ver,
                full_replace,
                data_crc,
            )
        except BaseException:
            self._pending.pop(chunk_id, None)
            raise

    def _stage(
        self,
        chunk_id: bytes,
        offset: int,
        data: Any,
        version: int,
        chain_ver: int,
        full_replace: bool,
        data_crc: int | None,
    ) -> Staged:
        payload = memoryview(data).cast("B")
        n = payload.nbytes
        if data_crc is not None and crc32c(payload) != data_crc:
            raise errors.ChecksumMismatch("write payload checksum mismatch")
        path = self.path(chunk_id)
        old = self.get(chunk_id)
        old_len = old.length if old else 0
        parts: list[Any]
        if full_replace or (offset == 0 and n >= old_len):
            new_len = n
            crc = data_crc if data_crc is not None else crc32c(payload)
            parts = [payload]
        else:
            new_len = max(old_len, offset + n)
            buf = bytearray(new_len)  # zero-filled: a gap past the old end reads as 0
            if old_len:
                _, old_data = self._read(chunk_id, 0, old_len, verify=True)
                buf[: old_data.nbytes] = old_data
            buf[offset : offset + n] = payload
            crc = crc32c(buf)
            parts = [buf]
        info = ChunkInfo(version, new_len, crc, chain_ver)
        tmp = path + TMP_SUFFIX
        try:
            chunk_dir = os.path.dirname(path)
            if not os.path.isdir(chunk_dir):
                os.makedirs(chunk_dir, mode=0o700, exist_ok=True)
                if self.fsync:
                    # The new directory's entry must survive a crash too.
                    _fsync_dir(self.root)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, [pack_header(info), *parts])
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise errors.from_oserror(exc) from None
        return Staged(chunk_id, tmp, path, info)

    async def commit(self, staged: Staged) -> ChunkInfo:
        try:
            await asyncio.to_thread(self._commit, staged)
        finally:
            if self._pending.get(staged.chunk_id) == staged.info.version:
                del self._pending[staged.chunk_id]
        self._set(staged.chunk_id, staged.info)
        return staged.info

    def _commit(self, staged: Staged) -> None:
        try:
            os.replace(staged.tmp_path, staged.path)
            # Readers opening the chunk now get the new version, while the
            # cached ChunkInfo (what QUERY_CHUNK answers) still says the old one.
            fault_point("storage.chunk_commit.renamed")
            if self.fsync:
                _fsync_dir(os.path.dirname(staged.path))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(staged.tmp_path)
            raise errors.from_oserror(exc) from None

    async def abort(self, staged: Staged) -> None:
        if self._pending.get(staged.chunk_id) == staged.info.version:
            del self._pending[staged.chunk_id]
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, staged.tmp_path)

    async def remove_inode(self, inode: int) -> int:
        removed = len(self._chunks.pop(inode, {}))
        await asyncio.to_thread(self._remove_dir, self._dir(inode))
        return removed

    async def remove_chunk(self, chunk_id: bytes) -> bool:
        inode, _ = ids.split_chunk_id(chunk_id)
        existed = self._chunks.get(inode, {}).pop(chunk_id, None) is not None
        try:
            await asyncio.to_thread(os.unlink, self.path(chunk_id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise errors.from_oserror(exc) from None
        return existed

    def _remove_dir(self, path: str) -> None:
        try:
            for entry in os.scandir(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            # A write racing the removal may recreate a file; it then stays.
            with contextlib.suppress(OSError):
                os.rmdir(path)
            if self.fsync:
                _fsync_dir(self.root)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise errors.from_oserror(exc) from None
