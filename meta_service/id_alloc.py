"""Inode id allocation in batches.

Each process reserves ranges of ids from the counter at keys.id_alloc_key() in a
small transaction of its own, then hands them out from memory, so creating files
does not make every create conflict on one key. Ids lost with a crashed process
are simply never used (64-bit space). A reservation must never run inside another
transaction on the same thread (sqlite would nest), so callers `take` ids before
starting the transaction of the op that needs them.
"""

from __future__ import annotations

import threading

from py3fs import errors, ids
from py3fs.kv import keys
from py3fs.kv.base import Database, Transaction, decode_counter, encode_counter


class IdAllocator:
    """Thread-safe: ops run in worker threads."""

    def __init__(self, db: Database, batch: int = 1000) -> None:
        self._db = db
        self._batch = max(1, batch)
        self._lock = threading.Lock()
        self._next = 0
        self._end = 0  # exclusive end of the reserved range

    def _reserve(self, tr: Transaction, n: int) -> int:
        start = max(decode_counter(tr.get(keys.id_alloc_key())), ids.ROOT_INODE + 1)
        tr.set(keys.id_alloc_key(), encode_counter(start + n))
        return start

    def take(self, n: int) -> list[int]:
        """`n` fresh ids; may reserve a new range (blocking KV transaction).
        Where the database may not wait (`Database.waits`), KVUnavailable
        instead of waiting for another thread's reservation."""
        if not self._lock.acquire(blocking=self._db.waits()):
            raise errors.KVUnavailable("another thread is reserving inode ids")
        try:
            if self._end - self._next < n:
                size = max(self._batch, n)
                start = self._db.run(lambda tr: self._reserve(tr, size))
                # The rest of the old range is dropped: ids need not be dense.
                self._next, self._end = start, start + size
            out = list(range(self._next, self._next + n))
            self._next += n
            return out
        finally:
            self._lock.release()
