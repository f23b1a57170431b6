"""KVCache removal: explicit removal, LRU/TTL eviction and stale staging files,
each batch one transaction that drops index entries and files together (see
meta_service/ops/kvcache.py for the store layout and the invariant)."""

from __future__ import annotations

from meta_service import dentries, inodes, kvindex
from meta_service.kvindex import BYTES, PageEntry
from meta_service.ops.context import OpContext
from meta_service.ops.kvcache import MAX_BATCH, check_batch, drop_file, store_for
from meta_service.ops.lookup import R, W
from py3fs.kv import keys
from py3fs.kv.base import Transaction
from py3fs.proto.messages import (
    KvCountReply,
    KvEntry,
    KvEvictReply,
    KvEvictReq,
    KvKeysReq,
    KvListReply,
    KvListReq,
    KvStoreInfo,
)


def _remove_page(
    tr: Transaction, ctx: OpContext, info: KvStoreInfo, key: bytes, entry: PageEntry
) -> None:
    kvindex.clear_page(tr, info.store, key, entry)
    drop_file(tr, ctx, info.pages_inode, kvindex.page_name(key), entry.inode)
    kvindex.count(tr, info.store, -1, -entry.length)


def remove(tr: Transaction, ctx: OpContext, req: KvKeysReq) -> KvCountReply:
    """Remove pages (index entry and file together); leased pages stay. Returns
    how many were removed."""
    check_batch(len(req.keys))
    info = store_for(tr, req.store, req, W)
    now = ctx.clock()
    n = 0
    for key in req.keys:
        entry = kvindex.load_page(tr, req.store, key)
        if entry is not None and not entry.leased_until(now):
            _remove_page(tr, ctx, info, key, entry)
            n += 1
    return KvCountReply(count=n)


def evict(tr: Transaction, ctx: OpContext, req: KvEvictReq) -> KvEvictReply:
    """Remove least recently used unleased pages while the store is above
    `target_bytes` or they are older than `ttl`, up to `limit` pages; then
    staging files older than `staging_ttl`."""
    info = store_for(tr, req.store, req, W)
    limit = max(1, min(req.limit, MAX_BATCH))
    now = ctx.clock()
    used = kvindex.read_count(tr, req.store, BYTES)
    cutoff_ms = int((now - req.ttl) * 1000) if req.ttl > 0 else -1
    begin, end = keys.kv_lru_range(req.store)
    evicted = nbytes = 0
    # Leased pages at the old end are skipped; bound the scan so a store full of
    # leases cannot make one transaction read the whole index.
    budget = limit * 8 + 64
    more = False
    done = False
    while not done and budget > 0:
        rows = tr.get_range(begin, end, limit=min(budget, limit * 2 + 16))
        if not rows:
            break
        budget -= len(rows)
        for lru_key, _ in rows:
            atime_ms, key = keys.kv_lru_split(req.store, lru_key)
            over = 0 <= req.target_bytes < used
            if not over and atime_ms >= cutoff_ms:
                done = True  # LRU order: every later page is newer and fits
                break
            if evicted >= limit:
                more = done = True
                break
            entry = kvindex.load_page(tr, req.store, key)
            if entry is None:
                tr.clear(lru_key)  # cannot happen by the invariant; heal anyway
                continue
            if entry.leased_until(now):
                continue
            _remove_page(tr, ctx, info, key, entry)
            used -= entry.length
            evicted += 1
            nbytes += entry.length
        begin = rows[-1][0] + b"\0"
    if not done and budget <= 0:
        more = True
    staged = (
        _remove_stale_staging(tr, ctx, info, req, now, limit)
        if req.staging_ttl > 0
        else 0
    )
    return KvEvictReply(
        evicted=evicted, evicted_bytes=nbytes, staging_removed=staged, more=more
    )


def _remove_stale_staging(
    tr: Transaction,
    ctx: OpContext,
    info: KvStoreInfo,
    req: KvEvictReq,
    now: float,
    limit: int,
) -> int:
    # Staging names are inode ids in hex, so older files tend to come first;
    # one call looks at `limit` of them.
    entries, _ = dentries.listing(tr, info.staging_inode, "", limit)
    removed = 0
    for ent in entries:
        node = inodes.load(tr, ent.inode)
        if node is None or node.ctime < (now - req.staging_ttl) * 1e9:
            drop_file(tr, ctx, info.staging_inode, ent.name, ent.inode)
            removed += 1
    return removed


def list_pages(tr: Transaction, ctx: OpContext, req: KvListReq) -> KvListReply:
    """Index entries in key order after `start_after` (for fsck and tests)."""
    store_for(tr, req.store, req, R)
    begin, end = keys.kv_page_range(req.store)
    if req.start_after:
        begin = keys.kv_page_key(req.store, req.start_after) + b"\0"
    rows = tr.get_range(begin, end, limit=req.limit + 1)
    now = ctx.clock()
    entries = []
    for key, raw in rows[: req.limit]:
        e = kvindex.decode_page(raw)
        entries.append(
            KvEntry(
                key=keys.kv_page_of(req.store, key),
                inode=e.inode,
                length=e.length,
                atime=e.atime,
                leased_until=e.leased_until(now),
            )
        )
    return KvListReply(entries=entries, more=len(rows) > req.limit)
