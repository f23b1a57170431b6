"""Chunk files below the store: writing them whole, replaying a committed update
a crash interrupted, converting format-1 chunks. Synchronous; the store calls
these from worker threads (see `storage_service.file_chunk_store`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from py3fs import errors
from py3fs.wire import crc32c
from storage_service.chunk_format import (
    BLOCK_SIZE,
    DATA_SUFFIX,
    META_SUFFIX,
    REDO_SUFFIX,
    STAGE_FULL,
    STAGE_INPLACE,
    TMP_SUFFIX,
    V1_HEADER_SIZE,
    ChunkMeta,
    block_crcs,
    covering,
    make_meta,
    pack_meta,
    unpack_stage,
    unpack_v1,
    verify_blocks,
)

logger = logging.getLogger(__name__)


def pwrite_all(fd: int, parts: Sequence[Any], offset: int) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.pwritev(fd, views, offset)
        offset += n
        while n and views:
            if n >= views[0].nbytes:
                n -= views[0].nbytes
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


def fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_meta(base: str, meta: ChunkMeta, *, sync: bool, atomic: bool = False) -> None:
    """Write `<base>.m` (in place: a redo record covers a torn write; or, with
    `atomic`, through a temporary file and a rename)."""
    packed = pack_meta(meta)
    path = base + META_SUFFIX
    target = path + TMP_SUFFIX if atomic else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pwrite_all(fd, [packed], 0)
        os.ftruncate(fd, len(packed))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if atomic:
        os.replace(target, path)
        if sync:
            fsync_path(os.path.dirname(base), directory=True)


def replay(base: str, meta: ChunkMeta | None) -> ChunkMeta | None:
    """Finish a commit that a crash interrupted; returns the table in force."""
    with open(base + REDO_SUFFIX, "rb") as fh:
        raw = fh.read()
    try:
        rec = unpack_stage(raw)
    except errors.ChecksumMismatch as exc:
        # Only a machine crash without fsync can leave this; the write was
        # not flushed, so losing it is within the contract.
        logger.warning("dropping unreadable committed update %s: %s", base, exc)
        unlink(base + REDO_SUFFIX)
        return meta
    if meta is not None and rec.version <= meta.info.version:
        unlink(base + REDO_SUFFIX)
        return meta
    new = rec.meta
    fd = os.open(base + DATA_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if rec.flags & STAGE_INPLACE:
            end = min(rec.offset + rec.payload_len, new.info.length)
            blocks = covering(rec.offset, end)
            if blocks:
                start = blocks[0] * BLOCK_SIZE
                stop = min((blocks[-1] + 1) * BLOCK_SIZE, new.info.length)
                got = os.pread(fd, stop - start, start)
                try:
                    verify_blocks(new.crcs, blocks[0], memoryview(got), stop, base)
                except errors.ChecksumMismatch as exc:
                    logger.warning("dropping unflushed append %s: %s", base, exc)
                    unlink(base + REDO_SUFFIX)
                    return meta
        else:
            payload = memoryview(raw)[rec.payload_at : rec.payload_at + rec.payload_len]
            pwrite_all(fd, [payload], rec.offset)
            if rec.flags & STAGE_FULL:
                os.ftruncate(fd, new.info.length)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_meta(base, new, sync=True)
    unlink(base + REDO_SUFFIX)
    logger.info("replayed committed update %s (version %d)", base, rec.version)
    return new


def convert_v1(base: str) -> ChunkMeta:
    """Rewrite the format-1 chunk at `base` as format 2. Raises ChecksumMismatch
    (leaving it as it is) if its header or data fails the old checksums."""
    with open(base, "rb") as fh:
        raw = fh.read()
    info, length = unpack_v1(raw)
    data = memoryview(raw)[V1_HEADER_SIZE:]
    if data.nbytes != length or crc32c(data) != info.crc:
        raise errors.ChecksumMismatch("format-1 data fails its checksum")
    meta = make_meta(info.version, length, info.chain_ver, block_crcs(data))
    fd = os.open(base + DATA_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pwrite_all(fd, [data], 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    # The table appears last, atomically: until then format 1 is in force.
    write_meta(base, meta, sync=True, atomic=True)
    unlink(base)
    logger.info("converted format-1 chunk %s to format 2", base)
    return meta
