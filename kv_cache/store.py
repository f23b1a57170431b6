"""`KVCacheStore`: KV-cache pages as py3fs files, indexed in meta.

All state lives in meta (the page index, LRU order, leases, counters) and on
storage (page bytes), so any number of processes on any hosts can share a store
by name. Page I/O goes straight to storage into or out of the caller's buffers;
meta sees one transaction per batch of pages (see meta_service/ops/kvcache.py
for how a page is staged, written and published atomically).

    async with Client.from_cluster() as fs:
        store = await KVCacheStore(fs, "deepseek", page_bytes, capacity).open()
        n = await store.batch_exists(keys)          # cached prefix, in pages
        ok = await store.get(keys[:n], buffers)     # zero-copy into buffers
        await store.put(keys[n:], more_buffers)
        async with store.lease(keys[:n]):           # not evicted while held
            ...

Buffers are anything with the buffer protocol (bytearray, memoryview, numpy
arrays) or contiguous CPU torch tensors (viewed as bytes, never copied).
Errors from meta or storage propagate as `py3fs.errors.Py3fsError`; a cancelled
call may leave staging files behind, which `gc()` removes after `staging_ttl`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from client import Client
from kv_cache.buffers import byte_view
from py3fs import errors, metrics
from py3fs.faults import fault_point
from py3fs.proto.messages import (
    KvEntry,
    KvEvictReply,
    KvEvictReq,
    KvKeysReq,
    KvListReq,
    KvLookupReply,
    KvLookupReq,
    KvPageLoc,
    KvPageNew,
    KvPutReq,
    KvStageReq,
    KvStoreInfo,
    KvStoreReq,
    KvStoreStats,
)

logger = logging.getLogger(__name__)
# A new store's chunk size, unless given: its page size rounded up to whole
# checksum blocks, up to the largest chunk storage takes.
_BLOCK = 64 << 10
_MAX_CHUNK = 64 << 20


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


class KVCacheStore:
    """A named store of fixed-size pages with LRU/TTL eviction.

    `capacity_bytes` (0: unlimited) with the watermarks: after a `put` leaves
    the store above `high_watermark * capacity`, least recently used unleased
    pages are evicted down to `low_watermark * capacity`. `ttl` (seconds, None:
    never) makes pages idle that long count as missing, and `gc()` remove them.
    A `get` leases its pages while it reads them (released after, or expired
    after `read_lease` seconds) so a concurrent eviction cannot remove them
    mid-read. The release goes out as the get returns and is not waited for
    (a meta round trip per batch, on a get's critical path for nothing); this
    handle's own later puts, removals, evictions and leases wait for it, so
    they see the pages unleased as before, and so does leaving `async with
    store` (before closing the client; else the lease simply runs out)."""

    def __init__(
        self,
        client: Client,
        name: str,
        page_bytes: int,
        capacity_bytes: int = 0,
        high_watermark: float = 0.95,
        low_watermark: float = 0.85,
        ttl: float | None = None,
        *,
        path: str = "",
        chunk_size: int = 0,
        stripe: int = 0,
        read_lease: float = 10.0,
        batch: int = 64,
        staging_ttl: float = 600.0,
    ) -> None:
        if not 0 < low_watermark <= high_watermark <= 1:
            raise errors.InvalidArgument(
                "need 0 < low_watermark <= high_watermark <= 1"
            )
        self.client = client
        self.name = name
        self.page_bytes = page_bytes
        self.capacity_bytes = capacity_bytes
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.ttl = ttl
        self.read_lease = read_lease
        self.batch = batch
        self.staging_ttl = staging_ttl
        self._path = path
        self._chunk_size = chunk_size
        self._stripe = stripe
        self.info: KvStoreInfo | None = None
        # Read leases being released (`get`), awaited by `_settle`.
        self._releases: set[asyncio.Task[None]] = set()
        self._metrics = dict.fromkeys(
            (
                "hits",
                "misses",
                "bytes_read",
                "bytes_written",
                "pages_written",
                "pages_deduplicated",
                "evictions",
                "evicted_bytes",
                "staging_removed",
            ),
            0,
        )

    # ------------------------------------------------------------ plumbing

    async def open(self) -> KVCacheStore:
        """Create the store in meta, or join the existing one of this name
        (its page size must match; a nonzero capacity replaces the stored one)."""
        chunk_size = self._chunk_size
        if not chunk_size and 0 < self.page_bytes <= _MAX_CHUNK:
            # One chunk per page: a put is one write down one chain per page
            # and a get one read. At the cluster's 4 MiB a 4.3 MiB MLA page
            # was a 4 MiB chunk and a 0.3 MiB one: two requests, two files
            # and two block tables per replica, for every page.
            chunk_size = -(-self.page_bytes // _BLOCK) * _BLOCK
        req = KvStoreReq(
            store=self.name,
            path=self._path,
            page_bytes=self.page_bytes,
            capacity_bytes=self.capacity_bytes,
            chunk_size=chunk_size,
            stripe=self._stripe,
        )
        self.info = await self.client.meta.kv_store_open(req)
        self.capacity_bytes = self.info.capacity_bytes
        self.page_bytes = self.info.page_bytes
        return self

    async def __aenter__(self) -> KVCacheStore:
        return await self.open() if self.info is None else self

    async def __aexit__(self, *exc: object) -> None:
        """The client belongs to the caller; only read leases being released
        are waited for."""
        await self._settle()

    async def _settle(self) -> None:
        """Wait until the read leases of finished gets are released."""
        pending = [t for t in self._releases if not t.done()]
        if pending:
            await asyncio.wait(pending)

    @property
    def path(self) -> str:
        assert self.info is not None, "store not opened"
        return self.info.path

    def _ttl(self) -> float:
        return self.ttl or 0.0

    async def _lookup(self, keys: Sequence[bytes], **kw: Any) -> KvLookupReply:
        req = KvLookupReq(store=self.name, keys=list(keys), ttl=self._ttl(), **kw)
        return await self.client.meta.kv_page_lookup(req)

    # ------------------------------------------------------------ reads

    async def batch_exists(self, keys: Sequence[bytes]) -> int:
        """How many leading `keys` are cached (the cached prefix, in pages)."""
        total = 0
        for r in _batches(len(keys), self.batch):
            reply = await self._lookup([keys[i] for i in r], prefix=True)
            total += reply.prefix_len
            if reply.prefix_len < len(r):
                break
        return total

    async def exists(self, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key is cached."""
        out = [False] * len(keys)
        for r in _batches(len(keys), self.batch):
            reply = await self._lookup([keys[i] for i in r])
            for p in reply.pages:
                out[r.start + p.index] = True
        return out

    async def get(self, keys: Sequence[bytes], buffers: Sequence[Any]) -> list[bool]:
        """Read the pages of `keys` into `buffers` (one per key, at least the
        page's size; bytes past the page are left alone). Returns per key
        whether it was found and read. Found pages count as just used."""
        if len(keys) != len(buffers):
            raise errors.InvalidArgument("one buffer per key")
        views = [byte_view(b) for b in buffers]
        out = [False] * len(keys)
        # A holder of this call's own, so a concurrent get of the same page by
        # this client keeps its lease when this one releases.
        holder = f"read-{uuid.uuid4().hex}"
        for r in _batches(len(keys), self.batch):
            reply = await self._lookup(
                [keys[i] for i in r],
                touch=True,
                lease_ttl=self.read_lease,
                holder=holder,
            )
            try:
                reads = [self._read(views[r.start + p.index], p) for p in reply.pages]
                await asyncio.gather(*reads)
            finally:
                if reply.pages:
                    task = asyncio.ensure_future(
                        self._release(
                            [keys[r.start + p.index] for p in reply.pages], holder
                        )
                    )
                    self._releases.add(task)
                    task.add_done_callback(self._releases.discard)
            for p in reply.pages:
                out[r.start + p.index] = True
        hits = sum(out)
        self._metrics["hits"] += hits
        self._metrics["misses"] += len(keys) - hits
        metrics.KVCACHE_LOOKUPS.labels("hit").inc(hits)
        metrics.KVCACHE_LOOKUPS.labels("miss").inc(len(keys) - hits)
        return out

    async def _read(self, view: memoryview, page: KvPageLoc) -> None:
        if page.length > view.nbytes:
            raise errors.InvalidArgument(
                f"buffer of {view.nbytes} bytes for a {page.length}-byte page"
            )
        if page.length:
            assert page.layout is not None
            await self.client.files.read(
                page.inode,
                page.layout,
                0,
                view[: page.length],
                length=page.length,
                session=True,  # a leased page is not collected under us
            )
        self._metrics["bytes_read"] += page.length

    # ------------------------------------------------------------ writes

    async def put(self, keys: Sequence[bytes], buffers: Sequence[Any]) -> list[bool]:
        """Store one page per key from `buffers` (each exactly `page_bytes` when
        the store has a page size). Keys already cached are not written again.
        Returns per key whether it is now cached (always True unless an error
        is raised). May evict (see the class docstring)."""
        if len(keys) != len(buffers):
            raise errors.InvalidArgument("one buffer per key")
        await self._settle()
        views = [byte_view(b) for b in buffers]
        for v in views:
            if self.page_bytes and v.nbytes != self.page_bytes:
                raise errors.InvalidArgument(
                    f"a {v.nbytes}-byte page in a store of {self.page_bytes}-byte pages"
                )
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = list(first.values())
        present = await self.exists([keys[i] for i in todo])
        new = [i for i, p in zip(todo, present, strict=True) if not p]
        self._metrics["pages_deduplicated"] += len(keys) - len(new)
        for r in _batches(len(new), self.batch):
            await self._put_batch([keys[new[j]] for j in r], [views[new[j]] for j in r])
        await self.enforce_capacity()
        return [True] * len(keys)

    async def _put_batch(self, keys: list[bytes], views: list[memoryview]) -> None:
        staged = await self.client.meta.kv_page_stage(
            KvStageReq(store=self.name, count=len(keys))
        )
        files = staged.files
        fault_point("kvcache.put.staged")

        async def write(i: int) -> None:
            f, v = files[i], views[i]
            if v.nbytes:
                assert f.layout is not None
                await self.client.files.write(f.inode, f.layout, 0, v)

        await asyncio.gather(*(write(i) for i in range(len(keys))))
        fault_point("kvcache.put.written")  # bytes on storage, not published
        pages = [
            KvPageNew(key=k, inode=f.inode, length=v.nbytes)
            for k, f, v in zip(keys, files, views, strict=True)
        ]
        reply = await self.client.meta.kv_page_put(
            KvPutReq(store=self.name, pages=pages)
        )
        written = sum(v.nbytes for v, a in zip(views, reply.added, strict=True) if a)
        self._metrics["pages_written"] += sum(reply.added)
        self._metrics["pages_deduplicated"] += len(keys) - sum(reply.added)
        self._metrics["bytes_written"] += written

    async def remove(self, keys: Sequence[bytes]) -> int:
        """Remove pages (leased ones stay); returns how many were removed."""
        await self._settle()
        n = 0
        for r in _batches(len(keys), self.batch):
            req = KvKeysReq(store=self.name, keys=[keys[i] for i in r])
            n += (await self.client.meta.kv_page_remove(req)).count
        return n

    async def touch(self, keys: Sequence[bytes]) -> int:
        """Mark pages as just used; returns how many exist."""
        n = 0
        for r in _batches(len(keys), self.batch):
            req = KvKeysReq(store=self.name, keys=[keys[i] for i in r])
            n += (await self.client.meta.kv_page_touch(req)).count
        return n

    # ------------------------------------------------------------ leases

    async def _lease(self, keys: Sequence[bytes], ttl: float, holder: str) -> int:
        n = 0
        for r in _batches(len(keys), self.batch):
            req = KvKeysReq(
                store=self.name, keys=[keys[i] for i in r], ttl=ttl, holder=holder
            )
            n += (await self.client.meta.kv_page_lease(req)).count
        return n

    async def _release(self, keys: list[bytes], holder: str) -> None:
        try:
            await self._lease(keys, 0.0, holder)
        except errors.Py3fsError as exc:
            # The lease runs out by itself after `read_lease` seconds.
            logger.warning("releasing read lease failed: %s", exc)

    @asynccontextmanager
    async def lease(
        self, keys: Sequence[bytes], ttl: float = 60.0
    ) -> AsyncIterator[int]:
        """Hold the pages of `keys` against eviction and removal for the block
        (at most `ttl` seconds, so a dead holder cannot pin them forever).
        Yields how many of the keys exist."""
        holder = uuid.uuid4().hex
        await self._settle()
        n = await self._lease(keys, ttl, holder)
        try:
            yield n
        finally:
            await self._lease(keys, 0.0, holder)

    # ------------------------------------------------------------ capacity

    async def stats(self) -> KvStoreStats:
        req = KvStoreReq(store=self.name)
        return await self.client.meta.kv_store_stats(req)

    async def _evict(self, target: int, ttl: float, staging_ttl: float) -> KvEvictReply:
        await self._settle()
        evicted = nbytes = staged = 0
        while True:
            req = KvEvictReq(
                store=self.name,
                target_bytes=target,
                ttl=ttl,
                staging_ttl=staging_ttl,
                limit=self.batch,
            )
            r = await self.client.meta.kv_page_evict(req)
            evicted += r.evicted
            nbytes += r.evicted_bytes
            staged += r.staging_removed
            more_staging = staging_ttl > 0 and r.staging_removed >= self.batch
            if not (r.more or more_staging):
                break
        self._metrics["evictions"] += evicted
        self._metrics["evicted_bytes"] += nbytes
        self._metrics["staging_removed"] += staged
        return KvEvictReply(
            evicted=evicted, evicted_bytes=nbytes, staging_removed=staged
        )

    async def evict(self, target_bytes: int) -> int:
        """Evict least recently used unleased pages until the store holds at most
        `target_bytes` (or only leased pages are left); returns pages evicted."""
        return (await self._evict(target_bytes, 0.0, 0.0)).evicted

    async def enforce_capacity(self) -> int:
        """Evict down to the low watermark when above the high one."""
        if not self.capacity_bytes:
            return 0
        await self._settle()
        used = (await self.stats()).used_bytes
        if used <= self.high_watermark * self.capacity_bytes:
            return 0
        return await self.evict(int(self.low_watermark * self.capacity_bytes))

    async def gc(self) -> dict[str, int]:
        """Remove pages idle longer than `ttl`, stale staging files (older than
        `staging_ttl`: left by writers that died before publishing) and, above
        the high watermark, LRU pages; in batches of `batch` per transaction."""
        r = await self._evict(-1, self._ttl(), self.staging_ttl)
        by_capacity = await self.enforce_capacity()
        return {
            "expired": r.evicted,
            "staging_removed": r.staging_removed,
            "evicted": by_capacity,
        }

    # ------------------------------------------------------------ inspection

    async def list_pages(self) -> AsyncIterator[KvEntry]:
        """Every index entry in key order."""
        after = b""
        while True:
            req = KvListReq(store=self.name, start_after=after, limit=1000)
            reply = await self.client.meta.kv_page_list(req)
            for e in reply.entries:
                yield e
            if not reply.more or not reply.entries:
                return
            after = reply.entries[-1].key

    @property
    def metrics(self) -> dict[str, int]:
        """Counters of this handle: hits, misses, bytes read/written, pages
        written/deduplicated, evictions, evicted bytes, staging files removed."""
        return dict(self._metrics)
