"""The mount's read cache of file blocks, for small random reads.

A 4 KiB random read through FUSE costs a round trip to a storage node, whose
chunk engine reads and verifies the whole 64 KiB CRC block around it anyway.
The mount asks for that whole block instead and keeps it here: a later small
read in the same block is answered from memory, without storage (JuiceFS and
mfsmount keep such a cache too). Reads larger than a block bypass it: the
kernel's page cache and read-ahead serve sequential readers.

Consistency is the page cache's (close-to-open): an inode's blocks are dropped
when this mount writes, truncates or appends to it, when USRBIO changes its
length, and at an open that finds it changed since the last open here (the
same test that decides keep_cache). A fetch that an invalidation overtakes is
not kept (`generation`). Handles opened with O_DIRECT bypass the cache.

Bounded in bytes, least recently used out first. A large read's blocks are
kept as views of the buffer it was read into (no copy on the sequential path);
a block is copied into a buffer of its own at its first hit, so a block that
stays cached does not hold the rest of that buffer (which leaves with its
other blocks, at about the same time, as they were kept together).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

BLOCK = 64 * 1024  # the chunk engine's CRC block (storage_service.chunk_format)
_GENERATIONS_MAX = 1 << 16  # inodes with an invalidation remembered
_Entry = tuple[int, memoryview]


class BlockCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        # (inode, block index) -> (generation at fetch, the block's bytes; short
        # at the end of the file)
        self._blocks: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        # inode -> its generation, a new number at every invalidation (never
        # reused); an inode without one is at `_floor`, the number taken when
        # the table was last cleared
        self._numbers = itertools.count(1)
        self._gens: dict[int, int] = {}
        self._floor = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity >= BLOCK

    def generation(self, ino: int) -> int:
        return self._gens.get(ino, self._floor)

    def _block(
        self, ino: int, index: int, current: int, need: int
    ) -> memoryview | None:
        """Block `index` of `ino` if current and at least `need` bytes long,
        made the most recently used (and given a buffer of its own)."""
        key = (ino, index)
        entry = self._blocks.get(key)
        if entry is None or entry[0] != current or entry[1].nbytes < need:
            # Missing, stale, or the file grew past what it held when fetched.
            return None
        data = entry[1]
        if len(data.obj) != data.nbytes:  # type: ignore[arg-type]
            data = memoryview(bytearray(data))
            self._blocks[key] = (current, data)
        self._blocks.move_to_end(key)
        return data

    def get(self, ino: int, offset: int, n: int) -> memoryview | None:
        """Bytes [offset, offset+n) of `ino` (within one block) if a current
        block holds them all."""
        start = offset % BLOCK
        current = self._gens.get(ino, self._floor)
        data = self._block(ino, offset // BLOCK, current, start + n)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        return data[start : start + n]

    def get_block(self, ino: int, index: int, need: int) -> memoryview | None:
        """All of block `index` of `ino` if current and at least `need` bytes
        long (`get` of a whole block)."""
        data = self._block(ino, index, self._gens.get(ino, self._floor), need)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        return data

    def get_range(self, ino: int, offset: int, n: int) -> bytearray | None:
        """`get` of a range over several blocks: all of them current, or None."""
        current = self._gens.get(ino, self._floor)
        parts = []
        pos, end = offset, offset + n
        while pos < end:
            index, start = divmod(pos, BLOCK)
            take = min(BLOCK - start, end - pos)
            entry = self._blocks.get((ino, index))
            if entry is None or entry[0] != current or entry[1].nbytes < start + take:
                self.misses += 1
                return None
            parts.append((index, start, take))
            pos += take
        out = bytearray(n)
        at = 0
        for index, start, take in parts:
            data = self._block(ino, index, current, start + take)
            assert data is not None
            out[at : at + take] = data[start : start + take]
            at += take
        self.hits += 1
        return out

    def put_range(
        self, ino: int, gen: int, offset: int, data: bytearray, length: int
    ) -> None:
        """`put` every whole block in `data` (read from `offset` of a file of
        `length` bytes: its last block is whole at the end of the file), as
        views of `data`, which must not change after."""
        if gen != self._gens.get(ino, self._floor):
            return  # an invalidation came meanwhile
        view = memoryview(data)
        end = offset + len(data)
        index = -(-offset // BLOCK)
        while True:
            start = index * BLOCK
            stop = min(start + BLOCK, length)
            if stop > end or start >= stop:
                return
            self.put(ino, index, gen, view[start - offset : stop - offset])
            index += 1

    def put(self, ino: int, index: int, gen: int, data: memoryview) -> None:
        """Keep block `index` of `ino` as fetched at generation `gen` (ignored
        when an invalidation came meanwhile); `data` must not change after."""
        if gen != self._gens.get(ino, self._floor) or data.nbytes > self.capacity:
            return
        key = (ino, index)
        old = self._blocks.pop(key, None)
        if old is not None:
            self.size -= old[1].nbytes
        self._blocks[key] = (gen, data)
        self.size += data.nbytes
        while self.size > self.capacity:
            _, (_, dropped) = self._blocks.popitem(last=False)
            self.size -= dropped.nbytes

    def invalidate(self, ino: int) -> None:
        """Forget what is held of `ino`: its blocks stop matching its
        generation (they leave as they age out) and fetches under way are not
        kept."""
        if len(self._gens) >= _GENERATIONS_MAX and ino not in self._gens:
            # The table is full: start over (every block and fetch under way
            # is older than the new floor, so none of them counts any more).
            self._blocks.clear()
            self._gens.clear()
            self.size = 0
            self._floor = next(self._numbers)
        self._gens[ino] = next(self._numbers)
