"""The etcd KV backend: optimistic serializable transactions over etcd v3 (Raft).

A transaction reads at one snapshot revision (the first read pins it, later reads
pass it), buffers its writes, and commits them with one etcd `txn` whose compares
check that nothing it read has changed since:

- each key read with `get` must still have the mod_revision it had then (0 when
  absent). Equality, not `mod_revision <= snapshot`: a deleted key reads as
  mod_revision 0 and would pass the latter;
- each range read is guarded by *range-version keys*: every write to key k also
  rewrites the bucket keys of k's first 0, 4, 12 and 20 bytes, and a range read
  compares (`mod_revision < snapshot + 1`) the deepest bucket whose prefix covers
  the whole range. A `clear_range` cannot name the buckets of keys it never saw,
  so it rewrites a clear marker of its covering prefix, which readers of every
  bucket under that prefix compare too. Inserts and deletes inside a range read
  therefore abort the reader (phantoms), at the price of some false conflicts
  between readers and writers that share a bucket.

Etcd keys: user key k is stored as b"d" + k (so the empty key and keys full of
0xff work, and no user range can cover the bucket keys b"r"+prefix or the clear
markers b"x"+prefix). Bucket and marker keys are only ever rewritten, never
deleted, which is what makes the `<` compare on them sound.

Limits: one commit must stay within etcd's `--max-txn-ops` (compares and writes,
bucket writes included) and `--max-request-bytes`, else KVTooLarge. MVCC history
grows with every commit: run etcd with auto-compaction; a transaction whose
snapshot was compacted away fails with the retryable KVConflict.

Commit outcome: a connection that breaks after the txn was sent raises the
retryable KVUnavailable although etcd may have applied it; `Database.run` then
re-runs the transaction function, which must be idempotent (py3fs's meta records
each request in the same transaction).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from typing import Any

from py3fs import errors
from py3fs.kv.base import Database, Transaction, strinc
from py3fs.kv.etcd_http import EtcdHttp, b64, unb64

DATA = b"d"
BUCKET = b"r"
CLEARED = b"x"
# Bucket prefix lengths in bytes: all keys, 4-byte tags (keys.py), tag + 8-byte id
# (a directory's entries, an inode's sessions), and one level deeper.
LEVELS = (0, 4, 12, 20)
PAGE = 1000  # keys per range request


def covering_prefix(begin: bytes, end: bytes) -> bytes:
    """The longest bucket prefix P (length in LEVELS) with every key of
    [begin, end) starting with P."""
    for level in reversed(LEVELS):
        if len(begin) < level:
            continue
        prefix = begin[:level]
        try:
            if end <= strinc(prefix):
                return prefix
        except ValueError:  # all 0xff: every key >= prefix starts with it
            return prefix
    return b""


def _write_guards(key: bytes) -> list[bytes]:
    return [BUCKET + key[:level] for level in LEVELS if level <= len(key)]


def _read_guards(prefix: bytes) -> list[bytes]:
    markers = [CLEARED + prefix[:level] for level in LEVELS if level <= len(prefix)]
    return [BUCKET + prefix, *markers]


class EtcdTransaction(Transaction):
    def __init__(self, http: EtcdHttp, read_only: bool, page: int = PAGE) -> None:
        self._http = http
        self._read_only = read_only
        self._page = page
        self._revision: int | None = None
        self._key_reads: dict[bytes, int] = {}  # user key -> mod_revision seen
        self._guards: set[bytes] = set()  # bucket/marker keys to compare
        self._writes: dict[bytes, bytes | None] = {}  # None: cleared
        self._clears: list[tuple[bytes, bytes]] = []
        self._done = False

    @property
    def revision(self) -> int | None:
        """The snapshot revision, once the first read has pinned it."""
        return self._revision

    # ------------------------------------------------------------ reads

    def _range(
        self, begin: bytes, end: bytes | None, limit: int, reverse: bool
    ) -> dict[str, Any]:
        req: dict[str, Any] = {"key": b64(DATA + begin)}
        if end is not None:
            req["range_end"] = b64(DATA + end)
        if limit > 0:
            req["limit"] = limit
        if reverse:
            req["sort_order"] = "DESCEND"
            req["sort_target"] = "KEY"
        if self._revision is not None:
            req["revision"] = self._revision
        reply: dict[str, Any] = self._http.call("/v3/kv/range", req, resend=True)
        if self._revision is None:
            self._revision = int(reply["header"]["revision"])
        return reply

    def _check_open(self) -> None:
        if self._done:
            raise errors.KVError("transaction already finished")

    def _cleared(self, key: bytes) -> bool:
        return any(b <= key < e for b, e in self._clears)

    def get(self, key: bytes) -> bytes | None:
        self._check_open()
        if key in self._writes:
            return self._writes[key]
        if self._cleared(key):
            return None
        kvs = self._range(key, None, 0, False).get("kvs", [])
        value = unb64(kvs[0].get("value")) if kvs else None
        if not self._read_only:
            self._key_reads.setdefault(
                key, int(kvs[0].get("mod_revision", 0)) if kvs else 0
            )
        return value

    def _scan(
        self, begin: bytes, end: bytes, reverse: bool, want: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """Committed pairs of [begin, end) at the snapshot, a page at a time."""
        while begin < end:
            # Reverse ranges are sorted by etcd after reading the whole range, so
            # asking for small pages would only repeat that work.
            limit = want if reverse else (want or self._page)
            reply = self._range(begin, end, limit, reverse)
            kvs = reply.get("kvs", [])
            for kv in kvs:
                yield unb64(kv["key"])[len(DATA) :], unb64(kv.get("value"))
            if not reply.get("more") or not kvs:
                return
            last = unb64(kvs[-1]["key"])[len(DATA) :]
            if reverse:
                end = last
            else:
                begin = last + b"\x00"

    def get_range(
        self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        self._check_open()
        if begin >= end:
            return []
        if not self._read_only:
            self._guards.update(_read_guards(covering_prefix(begin, end)))
        local = sorted(
            (k, v)
            for k, v in self._writes.items()
            if v is not None and begin <= k < end
        )
        if reverse:
            local.reverse()
        # Local writes may hide committed keys, so ask for a few more than `limit`.
        hidden = sum(1 for k in self._writes if begin <= k < end) + bool(self._clears)
        want = limit + hidden if limit > 0 else 0
        committed = (
            (k, v)
            for k, v in self._scan(begin, end, reverse, want)
            if k not in self._writes and not self._cleared(k)
        )
        merged = heapq.merge(local, committed, key=lambda kv: kv[0], reverse=reverse)
        out = []
        for pair in merged:
            out.append(pair)
            if limit > 0 and len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------ writes

    def _check_write(self) -> None:
        self._check_open()
        if self._read_only:
            raise errors.KVError("write in a read-only transaction")

    def set(self, key: bytes, value: bytes) -> None:
        self._check_write()
        self._writes[key] = bytes(value)

    def clear(self, key: bytes) -> None:
        self._check_write()
        self._writes[key] = None

    def clear_range(self, begin: bytes, end: bytes) -> None:
        self._check_write()
        if begin >= end:
            return
        for key in [k for k in self._writes if begin <= k < end]:
            del self._writes[key]
        self._clears.append((begin, end))

    # ------------------------------------------------------------ commit

    def _merged_clears(self) -> list[tuple[bytes, bytes]]:
        merged: list[tuple[bytes, bytes]] = []
        for b, e in sorted(self._clears):
            if merged and b <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((b, e))
        return merged

    def _ops(self) -> list[dict[str, Any]]:
        """The txn's write operations. Etcd refuses a put inside a delete range of
        the same txn, so delete ranges are split around the keys set after them."""
        clears = self._merged_clears()
        puts = sorted(k for k, v in self._writes.items() if v is not None)
        ops: list[dict[str, Any]] = []
        guards: set[bytes] = set()
        for b, e in clears:
            lo = b
            i = bisect.bisect_left(puts, b)
            while i < len(puts) and puts[i] < e:
                if lo < puts[i]:
                    ops.append(_delete(lo, puts[i]))
                lo = puts[i] + b"\x00"
                i += 1
            if lo < e:
                ops.append(_delete(lo, e))
            prefix = covering_prefix(b, e)
            guards.update(_write_guards(prefix))
            guards.add(CLEARED + prefix)
        for key, value in self._writes.items():
            guards.update(_write_guards(key))
            if value is not None:
                ops.append(_put(DATA + key, value))
            elif not any(b <= key < e for b, e in clears):
                ops.append({"request_delete_range": {"key": b64(DATA + key)}})
        ops.extend(_put(g, b"") for g in sorted(guards))
        return ops

    def _compares(self) -> list[dict[str, Any]]:
        if self._revision is None:
            return []
        compares: list[dict[str, Any]] = [
            {
                "key": b64(DATA + key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": mod,
            }
            for key, mod in self._key_reads.items()
        ]
        compares.extend(
            {
                "key": b64(guard),
                "target": "MOD",
                "result": "LESS",
                "mod_revision": self._revision + 1,
            }
            for guard in sorted(self._guards)
        )
        return compares

    def commit(self) -> None:
        """Apply the buffered writes in one etcd txn. Raises KVConflict when
        something read changed since the snapshot, KVTooLarge over etcd's limits,
        KVUnavailable when etcd cannot be reached (the outcome is then unknown)."""
        if self._done:
            return
        self._done = True
        if not self._writes and not self._clears:
            return  # reads of one snapshot are already consistent
        request = {"compare": self._compares(), "success": self._ops()}
        reply = self._http.call("/v3/kv/txn", request, resend=False)
        if not reply.get("succeeded", False):
            raise errors.KVConflict("etcd: a key or range read has changed")

    def cancel(self) -> None:
        self._done = True


def _put(key: bytes, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def _delete(begin: bytes, end: bytes) -> dict[str, Any]:
    return {
        "request_delete_range": {"key": b64(DATA + begin), "range_end": b64(DATA + end)}
    }


class EtcdDatabase(Database):
    """An etcd cluster given as 'host:port,host:port,...' (any members)."""

    def __init__(self, endpoints: str, timeout: float = 5.0, page: int = PAGE) -> None:
        self.endpoints = endpoints
        self._http = EtcdHttp(endpoints, timeout)
        self._page = page

    def create_transaction(self, read_only: bool = False) -> Transaction:
        return EtcdTransaction(self._http, read_only, self._page)

    def close(self) -> None:
        self._http.close()
