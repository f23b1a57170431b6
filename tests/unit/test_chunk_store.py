"""The chunk engine: block checksums, staged updates, crash recovery, removal,
listing; behaviour tests run on the file store and its in-memory twin."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from py3fs import buffers, errors, faults, ids
from py3fs.wire import crc32c
from storage_service import chunk_format as fmt
from storage_service import file_chunk_store
from storage_service.chunk_store import (
    AFTER_APPLY,
    AFTER_STAGE,
    MID_APPLY,
    STAGE_WRITTEN,
    ChunkStore,
    MemChunkStore,
)
from storage_service.file_chunk_store import FileChunkStore

CS = 1 << 20  # chunk size for these tests: 1 MiB
B = fmt.BLOCK_SIZE


@pytest.fixture(params=["file", "mem"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkStore:
    if request.param == "mem":
        return MemChunkStore()
    s = FileChunkStore(str(tmp_path / "target-101"), fsync=False)
    await s.load()
    return s


@pytest.fixture
async def fstore(tmp_path: Path) -> FileChunkStore:
    s = FileChunkStore(str(tmp_path / "target-101"), fsync=False)
    await s.load()
    return s


async def put(store: ChunkStore, cid: bytes, offset: int, data: bytes, ver: int):
    return await store.write(
        cid,
        offset,
        data,
        version=ver,
        chunk_size=CS,
        chain_ver=1,
        data_crc=crc32c(data),
    )


def size(path: str) -> int:
    return os.path.getsize(path)


def exists(path: str) -> bool:
    return os.path.exists(path)


def write_v1(path: str, info: fmt.ChunkInfo, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(fmt.pack_v1(info) + data)


def poke(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


async def content(store: ChunkStore, cid: bytes) -> bytes:
    _, view = await store.read(cid, 0, CS)
    return bytes(view)


async def test_write_read_roundtrip(store: ChunkStore) -> None:
    cid = ids.chunk_id(7, 0)
    info = await put(store, cid, 0, b"hello world", 1)
    assert (info.version, info.length) == (1, 11)
    assert info.crc == fmt.digest(11, fmt.block_crcs(b"hello world"))
    assert store.get(cid) == info
    got, view = await store.read(cid, 6, 100)
    assert bytes(view) == b"world"
    assert got.version == 1
    _, view = await store.read(cid, 11, 10)
    assert view.nbytes == 0
    _, view = await store.read(cid, 2, 3, verify=False)
    assert bytes(view) == b"llo"


async def test_partial_overwrite_and_gap_zero_fill(store: ChunkStore) -> None:
    cid = ids.chunk_id(7, 1)
    await put(store, cid, 0, b"a" * 10, 1)
    await put(store, cid, 4, b"BB", 2)
    assert await content(store, cid) == b"aaaaBBaaaa"
    info = await put(store, cid, 16, b"zz", 3)
    want = b"aaaaBBaaaa" + b"\0" * 6 + b"zz"
    assert await content(store, cid) == want
    assert info.length == 18
    assert info.crc == fmt.digest(18, fmt.block_crcs(want))
    # A write at offset 0 shorter than the chunk keeps the tail.
    await put(store, cid, 0, b"xy", 4)
    assert (await content(store, cid))[:4] == b"xyaa"


async def test_multi_block_writes_match_a_fresh_checksum(store: ChunkStore) -> None:
    cid = ids.chunk_id(7, 3)
    model = bytearray()
    steps = [(0, 3 * B + 100), (B - 7, 20), (5 * B + 3, B), (2 * B, 2 * B), (1, 1)]
    for ver, (off, n) in enumerate(steps, 1):
        data = os.urandom(n)
        info = await put(store, cid, off, data, ver)
        if len(model) < off:
            model.extend(bytes(off - len(model)))
        model[off : off + n] = data
        assert info.crc == fmt.digest(len(model), fmt.block_crcs(model))
        assert await content(store, cid) == model
        _, view = await store.read(cid, B - 3, B + 9)
        assert bytes(view) == model[B - 3 : 2 * B + 6]


async def test_full_replace_shrinks(store: ChunkStore) -> None:
    cid = ids.chunk_id(7, 2)
    await put(store, cid, 0, b"0123456789" * 20000, 1)
    info = await store.write(
        cid, 0, b"ab", version=5, chunk_size=CS, chain_ver=2, full_replace=True
    )
    assert (info.version, info.length, info.chain_ver) == (5, 2, 2)
    assert await content(store, cid) == b"ab"
    await put(store, cid, 10, b"c", 6)  # the old tail does not come back
    assert await content(store, cid) == b"ab" + bytes(8) + b"c"


async def test_stage_is_invisible_until_commit(store: ChunkStore) -> None:
    cid = ids.chunk_id(8, 0)
    await put(store, cid, 0, b"old", 1)
    for offset in (0, 3):  # an overwrite and an append
        staged = await store.stage(
            cid, offset, b"new", version=2, chunk_size=CS, chain_ver=1
        )
        assert store.pending_version(cid) == 2
        assert await content(store, cid) == b"old"
        await store.abort(staged)
        assert store.pending_version(cid) == 0
        assert await content(store, cid) == b"old"
    staged = await store.stage(cid, 0, b"new", version=2, chunk_size=CS, chain_ver=1)
    await store.commit(staged)
    assert await content(store, cid) == b"new"
    assert store.get(cid).version == 2  # type: ignore[union-attr]
    # An aborted append leaves no bytes behind: a later gap reads as zeros.
    staged = await store.stage(cid, 3, b"junk", version=3, chunk_size=CS, chain_ver=1)
    await store.abort(staged)
    await put(store, cid, 9, b"!", 3)
    assert await content(store, cid) == b"new" + bytes(6) + b"!"


async def test_too_large_and_bad_payload_crc(store: ChunkStore) -> None:
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


async def test_corrupt_block_detected_others_readable(fstore: FileChunkStore) -> None:
    cid = ids.chunk_id(10, 0)
    data = os.urandom(3 * B)
    await put(fstore, cid, 0, data, 1)
    poke(fstore.data_path(cid), B + 500, b"\x00" if data[B + 500] else b"\x01")
    with pytest.raises(errors.ChecksumMismatch, match="block 1"):
        await fstore.read(cid, B + 10, 10)
    # Blocks 0 and 2 are intact and still read; unverified reads still work.
    assert bytes((await fstore.read(cid, 0, B))[1]) == data[:B]
    assert bytes((await fstore.read(cid, 2 * B, B))[1]) == data[2 * B :]
    _, view = await fstore.read(cid, B, 3, verify=False)
    assert bytes(view) == data[B : B + 3]
    # A partial update must not build on corrupt data (block 1 is touched).
    with pytest.raises(errors.ChecksumMismatch):
        await put(fstore, cid, B + 1, b"z", 2)
    # A full replace (what repair sends) heals it.
    await fstore.write(
        cid, 0, data, version=3, chunk_size=CS, chain_ver=1, full_replace=True
    )
    assert await content(fstore, cid) == data


async def test_mem_twin_detects_corruption() -> None:
    store = MemChunkStore()
    cid = ids.chunk_id(10, 2)
    await put(store, cid, 0, b"x" * (2 * B), 1)
    store.corrupt(cid, B + 1)
    with pytest.raises(errors.ChecksumMismatch, match="block 1"):
        await store.read(cid, B, 10)
    assert bytes((await store.read(cid, 0, 10))[1]) == b"x" * 10


async def test_damaged_meta_and_short_data_detected(tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    store = FileChunkStore(root)
    await store.load()
    cid, cid2 = ids.chunk_id(10, 1), ids.chunk_id(10, 3)
    await put(store, cid, 0, b"x" * 1000, 1)
    await put(store, cid2, 0, b"y" * 1000, 1)
    os.truncate(store.data_path(cid), 10)
    with pytest.raises(errors.ChecksumMismatch):
        await store.read(cid, 0, 10)
    poke(store.meta_path(cid2), 8, b"\xff")  # the version field
    again = FileChunkStore(root)
    await again.load()
    assert [c for c, _ in again.list_chunks()] == [cid, cid2]
    with pytest.raises(errors.ChecksumMismatch, match="damaged"):
        await again.read(cid2, 0, 10)
    with pytest.raises(errors.ChecksumMismatch):
        await put(again, cid2, 0, b"z", 2)
    await again.write(
        cid2, 0, b"fixed", version=2, chunk_size=CS, chain_ver=1, full_replace=True
    )
    assert await content(again, cid2) == b"fixed"


async def test_append_writes_only_new_bytes(fstore: FileChunkStore) -> None:
    cid = ids.chunk_id(12, 0)
    await put(fstore, cid, 0, b"a" * B, 1)
    ino = os.stat(fstore.data_path(cid)).st_ino
    await put(fstore, cid, B, b"b" * 100, 2)
    # Same data file (no copy of the chunk), and no staged copy of the payload.
    assert os.stat(fstore.data_path(cid)).st_ino == ino
    assert size(fstore.data_path(cid)) == B + 100
    staged = await fstore.stage(
        cid, B + 100, b"c" * 1000, version=3, chunk_size=CS, chain_ver=1
    )
    pending = fstore.base(cid) + fmt.PENDING_SUFFIX
    assert size(pending) < 200
    await fstore.commit(staged)
    # An overwrite stages only its bytes, not the chunk.
    staged = await fstore.stage(
        cid, 10, b"d" * 10, version=4, chunk_size=CS, chain_ver=1
    )
    assert size(pending) < 200
    await fstore.commit(staged)
    assert await content(fstore, cid) == (
        b"a" * 10 + b"d" * 10 + b"a" * (B - 20) + b"b" * 100 + b"c" * 1000
    )


def _spy_opens(monkeypatch: pytest.MonkeyPatch, fail_direct: bool = False) -> list[int]:
    """Record the flags of every os.open (a direct one fails with EINVAL, as
    on a file system without O_DIRECT, when `fail_direct`)."""
    flags: list[int] = []
    real = os.open

    def spy(path: str, flag: int, *args: int, **kwargs: int) -> int:
        flags.append(flag)
        if fail_direct and flag & os.O_DIRECT:
            raise OSError(errno.EINVAL, "no O_DIRECT here", path)
        return real(path, flag, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    return flags


@pytest.mark.parametrize("fail_direct", [False, True])
async def test_large_aligned_appends_bypass_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_direct: bool
) -> None:
    """A streamed append of at least DIRECT_BYTES at a page offset, from a
    page-aligned buffer (a server's receive buffer), is written with O_DIRECT,
    its unaligned tail buffered; where O_DIRECT is refused the store writes
    buffered, and so it does for a writer that does not stream. Either way
    the chunk reads back the same, also after a reload."""
    store = FileChunkStore(str(tmp_path / "target-101"), fsync=False)
    await store.load()
    cid = ids.chunk_id(13, 0)
    size = 4 * CS
    first = buffers.aligned(2 * CS + 100)
    first[:] = os.urandom(len(first))
    second = buffers.aligned(CS)
    second[:] = os.urandom(len(second))
    opens = _spy_opens(monkeypatch, fail_direct)
    for offset, data, ver in ((0, first, 1), (3 * CS, second, 2)):
        await store.write(
            cid,
            offset,
            memoryview(data),
            version=ver,
            chunk_size=size,
            chain_ver=1,
            data_crc=crc32c(data),
            stream=True,
        )
    # Not streamed: buffered, however large.
    other = ids.chunk_id(13, 1)
    await store.write(
        other, 0, memoryview(second), version=1, chunk_size=size, chain_ver=1
    )
    # A small or unaligned payload stays buffered.
    await store.write(
        cid,
        4 * CS - 10,
        b"x" * 10,
        version=3,
        chunk_size=size,
        chain_ver=1,
        stream=True,
    )
    direct = [f for f in opens if f & os.O_DIRECT]
    assert len(direct) == (1 if fail_direct else 2)
    assert store._direct is not fail_direct
    want = bytes(first) + bytes(CS - 100) + bytes(second[:-10]) + b"x" * 10
    _, got = await store.read(cid, 0, size)
    assert bytes(got) == want
    monkeypatch.undo()
    again = FileChunkStore(store.root)
    await again.load()
    _, got = await again.read(cid, 0, size, verify=True)
    assert bytes(got) == want
    _, got = await again.read(other, 0, size, verify=True)
    assert bytes(got) == bytes(second)


async def test_enospc_keeps_old_data(
    fstore: FileChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = ids.chunk_id(11, 0)
    await put(fstore, cid, 0, b"precious", 1)

    def full_disk(fd: int, buffers: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full_disk)
    with pytest.raises(errors.NoSpace):
        await put(fstore, cid, 0, b"replacement", 2)
    with pytest.raises(errors.NoSpace):
        await put(fstore, cid, 8, b"more", 2)
    with pytest.raises(errors.NoSpace):
        await put(fstore, ids.chunk_id(11, 1), 0, b"new chunk", 1)
    monkeypatch.undo()
    assert await content(fstore, cid) == b"precious"
    assert fstore.get(cid).version == 1  # type: ignore[union-attr]
    assert fstore.pending_version(cid) == 0
    leftovers = [
        n
        for n in os.listdir(os.path.dirname(fstore.data_path(cid)))
        if n.endswith((fmt.PENDING_SUFFIX, fmt.REDO_SUFFIX))
    ]
    assert leftovers == []


async def test_remove_inode_and_list(store: ChunkStore) -> None:
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
    assert await store.remove_chunk(ids.chunk_id(21, 0))
    assert not await store.remove_chunk(ids.chunk_id(21, 0))
    await put(store, ids.chunk_id(21, 1), 0, b"e" * 10, 2)  # 2 bytes -> 10
    stats = await store.stats()
    assert (stats.chunk_count, stats.used_bytes) == (2, 13)
    await put(store, ids.chunk_id(22, 0), 0, b"e", 1)
    assert await store.remove_inodes([21, 22, 23]) == 3
    assert store.list_chunks() == []


async def test_reload_drops_pending_and_keeps_committed(tmp_path: Path) -> None:
    root = str(tmp_path / "target-102")
    store = FileChunkStore(root, fsync=True)
    await store.load()
    cid = ids.chunk_id(30, 5)
    await put(store, cid, 0, b"committed", 3)
    await store.stage(cid, 0, b"pending!!", version=4, chunk_size=CS, chain_ver=1)
    await store.stage(
        ids.chunk_id(30, 6), 0, b"new", version=1, chunk_size=CS, chain_ver=1
    )
    # Simulate a crash: a new store over the same directory.
    again = FileChunkStore(root, fsync=True)
    await again.load()
    assert again.get(cid) == store.get(cid)
    assert again.pending_version(cid) == 0
    assert await content(again, cid) == b"committed"
    assert sorted(os.listdir(os.path.dirname(again.base(cid)))) == [
        os.path.basename(again.base(cid)) + s for s in (".d", ".m")
    ]


@pytest.mark.parametrize("point", [STAGE_WRITTEN, AFTER_STAGE, MID_APPLY, AFTER_APPLY])
@pytest.mark.parametrize("offset", [0, 5, 2 * B])  # full, overwrite, append
async def test_crash_points_leave_old_or_new(
    tmp_path: Path, point: str, offset: int
) -> None:
    """An error at a fault point stands for a crash there: a new store over the
    directory (the restart) sees the whole old or the whole new write."""
    root = str(tmp_path / "t")
    store = FileChunkStore(root)
    await store.load()
    mem = MemChunkStore()
    cid = ids.chunk_id(40, 0)
    old = os.urandom(B + 50)
    new = os.urandom(B)
    await put(store, cid, 0, old, 1)
    await put(mem, cid, 0, old, 1)
    expect = bytearray(old)
    if len(expect) < offset:
        expect.extend(bytes(offset - len(expect)))
    expect[offset : offset + len(new)] = new
    committed = point != STAGE_WRITTEN
    for s in (store, mem):
        with faults.enabled(point, "error"), pytest.raises(errors.InjectedFault):
            await put(s, cid, offset, new, 2)
    again = FileChunkStore(root)
    await again.load()
    mem.crash()
    for s in (again, mem):
        assert await content(s, cid) == (bytes(expect) if committed else old)
        assert s.get(cid).version == (2 if committed else 1)  # type: ignore[union-attr]
        assert s.pending_version(cid) == 0


@pytest.mark.parametrize("point", [STAGE_WRITTEN, AFTER_STAGE, MID_APPLY, AFTER_APPLY])
async def test_crash_in_first_write_leaves_no_chunk_or_all_of_it(
    tmp_path: Path, point: str
) -> None:
    """The first write of a chunk stages no record (its table appears by a
    rename): a crash before that leaves no chunk and no files, after it the
    whole write."""
    root = str(tmp_path / "t")
    store = FileChunkStore(root)
    await store.load()
    cid = ids.chunk_id(41, 0)
    data = os.urandom(B + 7)
    staged = await store.stage(
        cid, 0, data, version=1, chunk_size=CS, chain_ver=1, data_crc=crc32c(data)
    )
    assert not exists(store.base(cid) + fmt.PENDING_SUFFIX)
    await store.abort(staged)
    with faults.enabled(point, "error"), pytest.raises(errors.InjectedFault):
        await put(store, cid, 0, data, 1)
    again = FileChunkStore(root)
    await again.load()
    if point == STAGE_WRITTEN:
        assert again.get(cid) is None
        assert os.listdir(os.path.dirname(again.base(cid))) == []
    else:
        assert await content(again, cid) == data
        assert again.get(cid).version == 1  # type: ignore[union-attr]


async def test_reads_format_1_chunks(tmp_path: Path) -> None:
    root = tmp_path / "t"
    cid = ids.chunk_id(50, 1)
    bad = ids.chunk_id(50, 2)
    data = os.urandom(3 * B + 5)
    store = FileChunkStore(str(root))
    for c in (cid, bad):
        write_v1(store.base(c), fmt.ChunkInfo(7, len(data), crc32c(data), 3), data)
    poke(store.base(bad), 40, b"\x00" if data[8] else b"\x01")
    await store.load()
    assert store.get(cid).version == 7  # type: ignore[union-attr]
    assert await content(store, cid) == data
    assert not exists(store.base(cid))  # converted to format 2
    with pytest.raises(errors.ChecksumMismatch):
        await store.read(bad, 0, 10)
    # Metadata of another format is refused by name.
    raw = bytearray(fmt.pack_meta(fmt.make_meta(1, 0, 1, fmt.block_crcs(b""))))
    raw[4] = 9
    with pytest.raises(errors.ChecksumMismatch, match="format 9"):
        fmt.unpack_meta(raw)


async def test_sync_flushes_committed_chunks(fstore: FileChunkStore) -> None:
    await put(fstore, ids.chunk_id(60, 0), 0, b"a", 1)
    await put(fstore, ids.chunk_id(60, 1), 0, b"b", 1)
    assert await fstore.sync() == 2
    assert await fstore.sync() == 0


async def test_load_flushes_what_a_dead_process_left(
    fstore: FileChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted store cannot know which acknowledged updates the old
    process left unsynced: load() flushes the target's file system, so a sync
    write that finds its update already applied may report it on disk."""
    cid = ids.chunk_id(61, 0)
    await put(fstore, cid, 0, b"ab", 1)
    flushed: list[str] = []
    real = file_chunk_store._syncfs

    def syncfs(path: str) -> None:
        flushed.append(path)
        real(path)

    monkeypatch.setattr(file_chunk_store, "_syncfs", syncfs)
    again = FileChunkStore(fstore.root)
    await again.load()
    assert flushed == [fstore.root]
    assert await content(again, cid) == b"ab"
