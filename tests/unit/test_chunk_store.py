"""The chunk engine: copy-on-write updates, checksums, removal, listing."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from py3fs import errors, ids
from py3fs.wire import crc32c
from storage_service.chunk_store import HEADER_SIZE, FileChunkStore

CS = 1 << 20  # chunk size for these tests: 1 MiB


@pytest.fixture
async def store(tmp_path: Path) -> FileChunkStore:
    s = FileChunkStore(str(tmp_path / "target-101"), fsync=False)
    await s.load()
    return s


async def put(store: FileChunkStore, cid: bytes, offset: int, data: bytes, ver: int):
    return await store.write(
        cid,
        offset,
        data,
        version=ver,
        chunk_size=CS,
        chain_ver=1,
        data_crc=crc32c(data),
    )


def exists(path: str) -> bool:
    return os.path.exists(path)


def poke(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


async def content(store: FileChunkStore, cid: bytes) -> bytes:
    _, view = await store.read(cid, 0, CS)
    return bytes(view)


async def test_write_read_roundtrip(store: FileChunkStore) -> None:
    cid = ids.chunk_id(7, 0)
    info = await put(store, cid, 0, b"hello world", 1)
    assert (info.version, info.length, info.crc) == (1, 11, crc32c(b"hello world"))
    assert store.get(cid) == info
    got, view = await store.read(cid, 6, 100)
    assert bytes(view) == b"world"
    assert got.version == 1
    _, view = await store.read(cid, 11, 10)
    assert view.nbytes == 0
    _, view = await store.read(cid, 2, 3, verify=False)
    assert bytes(view) == b"llo"


async def test_partial_overwrite_and_gap_zero_fill(store: FileChunkStore) -> None:
    cid = ids.chunk_id(7, 1)
    await put(store, cid, 0, b"a" * 10, 1)
    await put(store, cid, 4, b"BB", 2)
    assert await content(store, cid) == b"aaaaBBaaaa"
    info = await put(store, cid, 16, b"zz", 3)
    assert await content(store, cid) == b"aaaaBBaaaa" + b"\0" * 6 + b"zz"
    assert info.length == 18
    assert info.crc == crc32c(b"aaaaBBaaaa" + b"\0" * 6 + b"zz")
    # A write at offset 0 shorter than the chunk keeps the tail.
    await put(store, cid, 0, b"xy", 4)
    assert (await content(store, cid))[:4] == b"xyaa"


async def test_full_replace_shrinks(store: FileChunkStore) -> None:
    cid = ids.chunk_id(7, 2)
    await put(store, cid, 0, b"0123456789", 1)
    info = await store.write(
        cid, 0, b"ab", version=5, chunk_size=CS, chain_ver=2, full_replace=True
    )
    assert (info.version, info.length, info.chain_ver) == (5, 2, 2)
    assert await content(store, cid) == b"ab"


async def test_stage_is_invisible_until_commit(store: FileChunkStore) -> None:
    cid = ids.chunk_id(8, 0)
    await put(store, cid, 0, b"old", 1)
    staged = await store.stage(cid, 0, b"new", version=2, chunk_size=CS, chain_ver=1)
    assert store.pending_version(cid) == 2
    assert await content(store, cid) == b"old"
    assert exists(staged.tmp_path)
    await store.abort(staged)
    assert store.pending_version(cid) == 0
    assert not exists(staged.tmp_path)
    assert await content(store, cid) == b"old"
    staged = await store.stage(cid, 0, b"new", version=2, chunk_size=CS, chain_ver=1)
    await store.commit(staged)
    assert await content(store, cid) == b"new"
    assert store.get(cid).version == 2  # type: ignore[union-attr]


async def test_too_large_and_bad_payload_crc(store: FileChunkStore) -> None:
    cid = ids.chunk_id(9, 0)
    with pytest.raises(errors.ChunkTooLarge):
        await store.write(cid, CS - 1, b"ab", version=1, chunk_size=CS, chain_ver=1)
    with pytest.raises(errors.ChunkTooLarge):
        await store.write(cid, 0, b"a", version=1, chunk_size=128 << 20, chain_ver=1)
    with pytest.raises(errors.ChecksumMismatch):
        await store.write(
            cid, 0, b"abc", version=1, chunk_size=CS, chain_ver=1, data_crc=1
        )
    assert store.get(cid) is None
    with pytest.raises(errors.ChunkNotFound):
        await store.read(cid, 0, 10)


async def test_corruption_detected(store: FileChunkStore) -> None:
    cid = ids.chunk_id(10, 0)
    await put(store, cid, 0, b"x" * 1000, 1)
    path = store.path(cid)
    poke(path, HEADER_SIZE + 500, b"y")
    with pytest.raises(errors.ChecksumMismatch):
        await store.read(cid, 0, 10)
    _, view = await store.read(cid, 0, 3, verify=False)  # unverified reads still work
    assert bytes(view) == b"xxx"
    # A partial update must not build on corrupt data.
    with pytest.raises(errors.ChecksumMismatch):
        await put(store, cid, 10, b"z", 2)
    poke(path, 8, b"\xff")  # header: the version field
    with pytest.raises(errors.ChecksumMismatch):
        await store.read(cid, 0, 10, verify=False)


async def test_truncated_file_detected(store: FileChunkStore) -> None:
    cid = ids.chunk_id(10, 1)
    await put(store, cid, 0, b"x" * 1000, 1)
    os.truncate(store.path(cid), HEADER_SIZE + 10)
    with pytest.raises(errors.ChecksumMismatch):
        await store.read(cid, 0, 10)


async def test_enospc_keeps_old_data(
    store: FileChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = ids.chunk_id(11, 0)
    await put(store, cid, 0, b"precious", 1)
    real_writev = os.writev

    def full_disk(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(errors.NoSpace):
        await put(store, cid, 0, b"replacement", 2)
    with pytest.raises(errors.NoSpace):
        await put(store, ids.chunk_id(11, 1), 0, b"new chunk", 1)
    monkeypatch.setattr(os, "writev", real_writev)
    assert await content(store, cid) == b"precious"
    assert store.get(cid).version == 1  # type: ignore[union-attr]
    assert store.pending_version(cid) == 0
    leftovers = [n for n in os.listdir(os.path.dirname(store.path(cid))) if "tmp" in n]
    assert leftovers == []


async def test_remove_inode_and_list(store: FileChunkStore) -> None:
    for inode in (20, 21):
        for index in range(3):
            await put(store, ids.chunk_id(inode, index), 0, b"d" * (index + 1), 1)
    listed = store.list_chunks()
    assert [cid for cid, _ in listed] == sorted(
        ids.chunk_id(i, j) for i in (20, 21) for j in range(3)
    )
    assert [info.length for _, info in store.list_chunks(21)] == [1, 2, 3]
    stats = await store.stats()
    assert (stats.chunk_count, stats.used_bytes) == (6, 12)
    assert stats.total_bytes >= stats.free_bytes > 0
    assert await store.remove_inode(20) == 3
    assert await store.remove_inode(20) == 0
    assert [ids.split_chunk_id(c)[0] for c, _ in store.list_chunks()] == [21] * 3
    with pytest.raises(errors.ChunkNotFound):
        await store.read(ids.chunk_id(20, 0), 0, 1)


async def test_reload_drops_pending_and_keeps_committed(tmp_path: Path) -> None:
    root = str(tmp_path / "target-102")
    store = FileChunkStore(root, fsync=True)
    await store.load()
    cid = ids.chunk_id(30, 5)
    await put(store, cid, 0, b"committed", 3)
    staged = await store.stage(
        cid, 0, b"pending!!", version=4, chunk_size=CS, chain_ver=1
    )
    # Simulate a crash: a new store over the same directory.
    again = FileChunkStore(root, fsync=True)
    await again.load()
    assert again.get(cid) == store.get(cid)
    assert again.pending_version(cid) == 0
    assert not exists(staged.tmp_path)
    assert await content(again, cid) == b"committed"
