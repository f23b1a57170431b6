"""The mount's block cache (fuse_mount.block_cache): hits only for current
blocks that hold the whole range, fetches overtaken by an invalidation are not
kept, bounded in bytes with the least recently used block out first."""

from __future__ import annotations

from fuse_mount import block_cache
from fuse_mount.block_cache import BLOCK, BlockCache


def block(fill: int, n: int = BLOCK) -> memoryview:
    return memoryview(bytearray([fill]) * n)


def test_hit_returns_the_range_of_the_block() -> None:
    cache = BlockCache(4 * BLOCK)
    assert cache.get(7, BLOCK + 10, 100) is None
    data = memoryview(bytearray(range(256)) * (BLOCK // 256))
    cache.put(7, 1, cache.generation(7), data)
    assert cache.get(7, BLOCK + 10, 100) == data[10:110]
    assert cache.get(8, BLOCK + 10, 100) is None  # another inode
    assert cache.get(7, 10, 100) is None  # another block
    assert (cache.hits, cache.misses) == (1, 3)


def test_a_short_block_misses_past_its_end() -> None:
    """A block fetched at the end of the file holds fewer bytes; once the file
    grew, a read past them must go to storage."""
    cache = BlockCache(4 * BLOCK)
    cache.put(1, 0, cache.generation(1), block(1, 1000))
    assert cache.get(1, 0, 1000) == block(1, 1000)
    assert cache.get(1, 900, 101) is None
    assert cache.get(1, 4096, 10) is None


def test_invalidate_drops_blocks_and_fetches_under_way() -> None:
    cache = BlockCache(4 * BLOCK)
    cache.put(1, 0, cache.generation(1), block(1))
    cache.put(2, 0, cache.generation(2), block(2))
    before = cache.generation(1)  # a fetch starts
    cache.invalidate(1)  # a write lands meanwhile
    cache.put(1, 1, before, block(9))  # the fetch ends: not kept
    assert cache.get(1, 0, 10) is None
    assert cache.get(1, BLOCK, 10) is None
    assert cache.get(2, 0, 10) == block(2, 10)  # other inodes keep theirs
    cache.put(1, 0, cache.generation(1), block(3))
    assert cache.get(1, 0, 10) == block(3, 10)


def test_bounded_least_recently_used_out_first() -> None:
    cache = BlockCache(3 * BLOCK)
    for i in range(3):
        cache.put(1, i, cache.generation(1), block(i))
    assert cache.get(1, 0, 1) == block(0, 1)  # block 0 is now the newest
    cache.put(1, 3, cache.generation(1), block(3))
    assert cache.size == 3 * BLOCK
    assert cache.get(1, BLOCK, 1) is None  # block 1 was the oldest
    assert cache.get(1, 0, 1) == block(0, 1)
    assert cache.get(1, 3 * BLOCK, 1) == block(3, 1)
    cache.put(1, 3, cache.generation(1), block(4))  # replacing keeps the count
    assert cache.size == 3 * BLOCK
    assert cache.get(1, 3 * BLOCK, 1) == block(4, 1)


def test_off_below_one_block() -> None:
    cache = BlockCache(BLOCK - 1)
    assert not cache.enabled
    cache.put(1, 0, cache.generation(1), block(1))
    assert cache.get(1, 0, 1) is None
    assert cache.size == 0


def test_a_full_generation_table_starts_over(monkeypatch) -> None:
    """Forgetting the generations must not revive a stale block or a fetch
    that started before: everything older than the clear stops counting."""
    monkeypatch.setattr(block_cache, "_GENERATIONS_MAX", 4)
    cache = BlockCache(8 * BLOCK)
    early = cache.generation(100)  # a fetch of inode 100 starts
    cache.put(1, 0, cache.generation(1), block(1))
    for ino in range(10, 14):
        cache.invalidate(ino)
    cache.invalidate(99)  # the table is full: cleared
    assert cache.get(1, 0, 1) is None
    cache.put(100, 0, early, block(5))  # began before the clear: not kept
    assert cache.get(100, 0, 1) is None
    cache.put(100, 0, cache.generation(100), block(6))
    assert cache.get(100, 0, 1) == block(6, 1)


def test_ranges_over_blocks_keep_and_serve_whole_blocks() -> None:
    """A large read keeps the whole blocks it covers (and the short last block
    at the end of the file), and is served from them only when all are held."""
    cache = BlockCache(16 * BLOCK)
    length = 3 * BLOCK + 500
    data = bytearray(range(256)) * (length // 256) + bytearray(length % 256)
    # [BLOCK/2, end of file): block 0 is partial, blocks 1-2 whole, 3 short.
    cache.put_range(5, cache.generation(5), BLOCK // 2, data[BLOCK // 2 :], length)
    assert cache.get(5, 0, 10) is None
    assert cache.get(5, BLOCK, 10) == data[BLOCK : BLOCK + 10]
    assert cache.get(5, 3 * BLOCK, 500) == data[3 * BLOCK :]
    # A hit gives the block a buffer of its own: the read's buffer can go.
    held = cache.get(5, BLOCK, 10)
    assert held is not None
    assert len(held.obj) == BLOCK  # type: ignore[arg-type]
    assert cache.get_range(5, BLOCK + 7, 2 * BLOCK + 400) == data[BLOCK + 7 : -93]
    assert cache.get_range(5, BLOCK - 1, 2) is None  # block 0 missing
    stale = cache.generation(5)
    cache.invalidate(5)
    assert cache.get_range(5, BLOCK, 2 * BLOCK) is None
    cache.put_range(5, stale, 0, data, length)  # overtaken: nothing kept
    assert cache.size == 2 * BLOCK + 500
    assert cache.get(5, 0, 1) is None
