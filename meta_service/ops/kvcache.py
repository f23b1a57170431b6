"""KVCache page index operations, each one transaction with the files it covers.

A store is a directory `<path>/` with `pages/` (one file per page, named by the
key's hex) and `.staging/` (files being written). A page is written by:

1. `stage`: create fresh empty files in `.staging/` (one transaction per batch);
2. the client writes each page's bytes into its staging file (chunk I/O, no meta);
3. `put`: in one transaction per batch, move each staging file into `pages/`,
   set its length and insert its index entry, LRU entry and the store counters.

A crash before step 3 leaves staging files and no index entry: `evict` with a
`staging_ttl` unlinks staging files older than that (their chunks go to meta's
GC queue). A crash after step 3 leaves a complete page. Eviction and removal
drop the index entry, the dentry and the inode link in one transaction, so the
index and the files always agree; the chunks then go through meta's GC.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from meta_service import dentries, inodes, kvindex
from meta_service.kvindex import BYTES, PageEntry
from meta_service.ops import lookup, mkdir
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import R, W, X
from meta_service.ops.open_close import make_layout
from meta_service.ops.unlink import drop_link
from py3fs import errors
from py3fs.faults import fault_point
from py3fs.kv.base import Transaction
from py3fs.proto.messages import (
    Inode,
    InodeType,
    KvCountReply,
    KvKeysReq,
    KvLookupReply,
    KvLookupReq,
    KvPageLoc,
    KvPutReply,
    KvPutReq,
    KvStageReply,
    KvStageReq,
    KvStoreInfo,
    KvStoreReq,
    KvStoreStats,
    MetaReq,
    MkdirReq,
)

PAGES_DIR = "pages"
STAGING_DIR = ".staging"
MAX_BATCH = 1024
NewId = Callable[[], int]


def default_path(store: str) -> str:
    return f"/kvcache/{store}"


def _check_store_name(store: str) -> None:
    lookup.validate_name(store)


def _holder(req: KvKeysReq | KvLookupReq) -> str:
    return f"{req.client_id}/{req.holder}"


def store_for(tr: Transaction, store: str, who: MetaReq, want: int) -> KvStoreInfo:
    """Store `store`, after checking that `who` has `want` (R to look pages
    up, W to add or remove them) and search permission on its directory: a
    store is shared exactly as its directory is. NotFound without the store."""
    info = kvindex.get_store(tr, store)
    top = inodes.load(tr, info.dir_inode)
    if top is not None:
        lookup.check_access(top, who, want | X)
    return info


def check_batch(n: int) -> None:
    if n > MAX_BATCH:
        raise errors.InvalidArgument(f"at most {MAX_BATCH} pages per request")


def store_ids_needed(req: KvStoreReq) -> int:
    path = req.path or default_path(req.store)
    return mkdir.ids_needed(MkdirReq(path=path, parents=True)) + 2


def open_store(
    tr: Transaction, ctx: OpContext, req: KvStoreReq, new_id: NewId
) -> KvStoreInfo:
    """The store's record, creating the store and its directories when missing.
    A nonzero capacity updates an existing store's; a different nonzero page
    size is InvalidArgument."""
    _check_store_name(req.store)
    info = kvindex.load_store(tr, req.store)
    if info is not None:
        change = bool(req.capacity_bytes) and req.capacity_bytes != info.capacity_bytes
        store_for(tr, req.store, req, W if change else R)
        if req.page_bytes and info.page_bytes and req.page_bytes != info.page_bytes:
            raise errors.InvalidArgument(
                f"store {req.store!r} has {info.page_bytes}-byte pages, "
                f"not {req.page_bytes}"
            )
        if change:
            info = msgspec.structs.replace(info, capacity_bytes=req.capacity_bytes)
            kvindex.save_store(tr, info)
        return info
    path = req.path or default_path(req.store)
    mk = MkdirReq(path=path, mode=0o755, parents=True, uid=req.uid, gid=req.gid)
    top = mkdir.mkdir(tr, ctx, mk, new_id)
    pages = mkdir.new_directory(tr, ctx, top, PAGES_DIR, 0o755, req, new_id())
    staging = mkdir.new_directory(tr, ctx, top, STAGING_DIR, 0o755, req, new_id())
    info = KvStoreInfo(
        store=req.store,
        path=path,
        dir_inode=top.inode,
        pages_inode=pages.inode,
        staging_inode=staging.inode,
        page_bytes=req.page_bytes,
        capacity_bytes=req.capacity_bytes,
        chunk_size=req.chunk_size,
        stripe=req.stripe,
    )
    kvindex.save_store(tr, info)
    return info


def stats(tr: Transaction, req: KvStoreReq) -> KvStoreStats:
    info = store_for(tr, req.store, req, R)
    return KvStoreStats(
        pages=kvindex.read_count(tr, req.store, kvindex.PAGES),
        used_bytes=kvindex.read_count(tr, req.store, BYTES),
        capacity_bytes=info.capacity_bytes,
        page_bytes=info.page_bytes,
    )


def stage(
    tr: Transaction, ctx: OpContext, req: KvStageReq, new_id: NewId
) -> KvStageReply:
    """`req.count` new empty files in the store's staging directory, with their
    layouts, for the client to write pages into."""
    check_batch(req.count)
    info = store_for(tr, req.store, req, W)
    now_ns = ctx.now_ns()
    files = []
    for _ in range(req.count):
        node = Inode(
            inode=new_id(),
            type=InodeType.FILE,
            mode=0o644,
            uid=req.uid,
            gid=req.gid,
            nlink=1,
            atime=now_ns,
            mtime=now_ns,
            ctime=now_ns,
            layout=make_layout(ctx, info.chunk_size, info.stripe),
        )
        inodes.store(tr, node)
        dentries.put(
            tr,
            info.staging_inode,
            kvindex.staging_name(node.inode),
            node.inode,
            node.type,
        )
        inodes.count(tr, InodeType.FILE, +1)
        files.append(node)
    return KvStageReply(files=files)


def drop_file(
    tr: Transaction, ctx: OpContext, parent: int, name: str, ino: int
) -> None:
    dentries.remove(tr, parent, name)
    node = inodes.load(tr, ino)
    if node is not None:
        drop_link(tr, ctx, node)


def put(tr: Transaction, ctx: OpContext, req: KvPutReq) -> KvPutReply:
    """Move written staging files into place and index them. A key already
    indexed keeps its page (the staging file is dropped); a retry of a put that
    already happened finds its own inode indexed and reports it added. NotFound
    when a staging file is gone (removed as stale: write the page again)."""
    check_batch(len(req.pages))
    info = store_for(tr, req.store, req, W)
    now = ctx.clock()
    added = []
    for page in req.pages:
        kvindex.check_key(page.key)
        sname = kvindex.staging_name(page.inode)
        staged = dentries.get(tr, info.staging_inode, sname)
        if staged is not None and staged.inode != page.inode:
            raise errors.InvalidArgument(f"staging file {sname} is another inode")
        old = kvindex.load_page(tr, req.store, page.key)
        if old is not None:
            if staged is not None:
                drop_file(tr, ctx, info.staging_inode, sname, page.inode)
            added.append(old.inode == page.inode)
            continue
        if staged is None:
            raise errors.NotFound(
                f"staging file {sname} of store {req.store!r} is gone"
            )
        node = inodes.get(tr, page.inode)
        ns = int(now * 1e9)
        node = msgspec.structs.replace(node, length=page.length, mtime=ns, ctime=ns)
        inodes.store(tr, node)
        dentries.remove(tr, info.staging_inode, sname)
        dentries.put(
            tr,
            info.pages_inode,
            kvindex.page_name(page.key),
            page.inode,
            InodeType.FILE,
        )
        # Moved into pages/ but not yet indexed: must never be seen committed.
        fault_point("meta.kv_put.moved")
        entry = PageEntry(inode=page.inode, length=page.length, atime=now, ctime=now)
        kvindex.put_page(tr, req.store, page.key, entry)
        kvindex.count(tr, req.store, +1, page.length)
        added.append(True)
    return KvPutReply(added=added)


def page_lookup(tr: Transaction, ctx: OpContext, req: KvLookupReq) -> KvLookupReply:
    """Where the pages of `req.keys` are. With `prefix`, stops at the first
    missing key. `touch` moves found pages to the LRU's recent end; `lease_ttl`
    protects them from eviction while the caller reads them."""
    check_batch(len(req.keys))
    store_for(tr, req.store, req, R)
    now = ctx.clock()
    holder = _holder(req)
    found: list[KvPageLoc] = []
    prefix_len = 0
    missing = False
    for i, key in enumerate(req.keys):
        entry = kvindex.load_page(tr, req.store, key)
        node = None if entry is None else inodes.load(tr, entry.inode)
        if (
            entry is None
            or node is None
            or (req.ttl > 0 and entry.atime < now - req.ttl)
        ):
            missing = True
            if req.prefix:
                break
            continue
        if not missing:
            prefix_len += 1
        found.append(
            KvPageLoc(
                index=i, inode=entry.inode, length=entry.length, layout=node.layout
            )
        )
        new = entry
        if req.touch:
            new = msgspec.structs.replace(new, atime=now)
        if req.lease_ttl > 0:
            new = kvindex.with_lease(new, holder, now + req.lease_ttl, now)
        if new is not entry:
            kvindex.put_page(tr, req.store, key, new, entry)
    return KvLookupReply(pages=found, prefix_len=prefix_len)


def touch(tr: Transaction, ctx: OpContext, req: KvKeysReq) -> KvCountReply:
    """Mark pages as just used; returns how many exist."""
    store_for(tr, req.store, req, R)
    now = ctx.clock()
    n = 0
    for key in req.keys:
        entry = kvindex.load_page(tr, req.store, key)
        if entry is not None:
            kvindex.put_page(
                tr, req.store, key, msgspec.structs.replace(entry, atime=now), entry
            )
            n += 1
    return KvCountReply(count=n)


def lease(tr: Transaction, ctx: OpContext, req: KvKeysReq) -> KvCountReply:
    """Lease existing pages to (client, holder) for `ttl` seconds, or release
    that holder's lease when ttl <= 0. Returns how many pages exist."""
    check_batch(len(req.keys))
    store_for(tr, req.store, req, R)
    now = ctx.clock()
    holder = _holder(req)
    n = 0
    for key in req.keys:
        entry = kvindex.load_page(tr, req.store, key)
        if entry is None:
            continue
        new = kvindex.with_lease(
            entry, holder, now + req.ttl if req.ttl > 0 else 0.0, now
        )
        kvindex.put_page(tr, req.store, key, new, entry)
        n += 1
    return KvCountReply(count=n)
