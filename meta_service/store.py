"""The namespace as a synchronous API over a Database: each call reserves the
inode ids it may need, then runs its op in one retried transaction, wrapped in
the idempotency record of its request. The RPC server calls these from worker
threads; unit tests call them directly."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from meta_service import idempotency, inodes
from meta_service.id_alloc import IdAllocator
from meta_service.ops import (
    kvcache,
    kvevict,
    link,
    listdir,
    lookup,
    mkdir,
    open_close,
    rename,
    statfs,
    unlink,
)
from meta_service.ops import setattr as setattr_op
from meta_service.ops.context import OpContext
from py3fs import ids
from py3fs.faults import fault_point
from py3fs.kv.base import Database, Transaction
from py3fs.proto.messages import (
    AppendReply,
    AppendReq,
    Changed,
    CloseReq,
    Empty,
    Inode,
    InodeReq,
    InodeType,
    KvCountReply,
    KvEvictReply,
    KvEvictReq,
    KvKeysReq,
    KvListReply,
    KvListReq,
    KvLookupReply,
    KvLookupReq,
    KvPutReply,
    KvPutReq,
    KvStageReply,
    KvStageReq,
    KvStoreInfo,
    KvStoreReq,
    KvStoreStats,
    LinkReq,
    ListDirReply,
    ListDirReq,
    MetaReq,
    MkdirReq,
    MknodReq,
    Msg,
    OpenReply,
    OpenReq,
    PathReq,
    ReadlinkReply,
    RenameReq,
    RenewReq,
    SetAttrReq,
    StatFsReply,
    SymlinkReq,
    SyncReq,
)
from py3fs.proto.services import MetaService as META
from py3fs.proto.services import Rpc

R = TypeVar("R", bound=Msg)
NewId = Callable[[], int]


class MetaStore:
    def __init__(
        self, db: Database, ctx: OpContext, alloc: IdAllocator | None = None
    ) -> None:
        self.db = db
        self.ctx = ctx
        self.alloc = alloc or IdAllocator(db)

    def ensure_root(self) -> Inode:
        """Create the root directory (inode 1, 0o755, owned by root) if missing."""

        def fn(tr: Transaction) -> Inode:
            node = inodes.load(tr, ids.ROOT_INODE)
            if node is None:
                now = self.ctx.now_ns()
                node = Inode(
                    inode=ids.ROOT_INODE,
                    type=InodeType.DIRECTORY,
                    mode=0o755,
                    uid=0,
                    gid=0,
                    nlink=2,
                    atime=now,
                    mtime=now,
                    ctime=now,
                    parent=ids.ROOT_INODE,
                )
                inodes.store(tr, node)
                inodes.count(tr, InodeType.DIRECTORY, +1)
            return node

        return self.db.run(fn)

    def _read(self, fn: Callable[[Transaction], R]) -> R:
        return self.db.run(fn, read_only=True)

    def _mutate(
        self,
        rpc: Rpc[Any, R],
        req: MetaReq,
        fn: Callable[[Transaction, NewId], R],
        n_ids: int = 0,
    ) -> R:
        # Ids are reserved before the transaction: a reservation is a transaction
        # of its own and must not nest. A retried attempt reuses the same ids.
        reserved = self.alloc.take(n_ids) if n_ids else []

        def txn(tr: Transaction) -> R:
            new_id = iter(reserved).__next__
            return idempotency.once(
                tr, rpc.title, req, rpc.reply, self.ctx.clock(), lambda: fn(tr, new_id)
            )

        try:
            return self.db.run(txn)
        except idempotency.Replayed as done:
            return done.reply  # type: ignore[return-value]

    # ------------------------------------------------------------ reads

    def stat(self, req: PathReq) -> Inode:
        return self._read(lambda tr: lookup.stat(tr, req))

    def stat_inode(self, req: InodeReq) -> Inode:
        return self._read(lambda tr: lookup.stat_inode(tr, req))

    def list_dir(self, req: ListDirReq) -> ListDirReply:
        return self._read(lambda tr: listdir.list_dir(tr, self.ctx, req))

    def readlink(self, req: PathReq) -> ReadlinkReply:
        return self._read(lambda tr: link.readlink(tr, self.ctx, req))

    def stat_fs(self, req: MetaReq) -> StatFsReply:
        return self._read(lambda tr: statfs.stat_fs(tr, self.ctx, req))

    # ------------------------------------------------------------ mutations

    def mkdir(self, req: MkdirReq) -> Inode:
        return self._mutate(
            META.mkdir,
            req,
            lambda tr, new_id: mkdir.mkdir(tr, self.ctx, req, new_id),
            mkdir.ids_needed(req),
        )

    def open(self, req: OpenReq) -> OpenReply:
        creates = 1 if req.flags & os.O_CREAT else 0
        return self._mutate(
            META.open,
            req,
            lambda tr, new_id: open_close.open_file(tr, self.ctx, req, new_id),
            creates,
        )

    def close(self, req: CloseReq) -> Inode:
        return self._mutate(
            META.close, req, lambda tr, _: open_close.close(tr, self.ctx, req)
        )

    def sync(self, req: SyncReq) -> Inode:
        return self._mutate(
            META.sync, req, lambda tr, _: open_close.sync(tr, self.ctx, req)
        )

    def append(self, req: AppendReq) -> AppendReply:
        return self._mutate(
            META.append, req, lambda tr, _: open_close.append(tr, self.ctx, req)
        )

    def renew(self, req: RenewReq) -> Empty:
        return self.db.run(lambda tr: open_close.renew(tr, self.ctx, req))

    def rename(self, req: RenameReq) -> Changed:
        reply = self._mutate(
            META.rename, req, lambda tr, _: rename.rename(tr, self.ctx, req)
        )
        fault_point("meta.rename.committed")  # committed, reply not sent
        return reply

    def unlink(self, req: PathReq) -> Changed:
        return self._mutate(
            META.unlink, req, lambda tr, _: unlink.unlink(tr, self.ctx, req)
        )

    def rmdir(self, req: PathReq) -> Changed:
        return self._mutate(
            META.rmdir, req, lambda tr, _: unlink.rmdir(tr, self.ctx, req)
        )

    def mknod(self, req: MknodReq) -> Inode:
        return self._mutate(
            META.mknod,
            req,
            lambda tr, new_id: mkdir.mknod(tr, self.ctx, req, new_id),
            1,
        )

    def symlink(self, req: SymlinkReq) -> Inode:
        return self._mutate(
            META.symlink,
            req,
            lambda tr, new_id: link.symlink(tr, self.ctx, req, new_id),
            1,
        )

    def link(self, req: LinkReq) -> Inode:
        return self._mutate(META.link, req, lambda tr, _: link.link(tr, self.ctx, req))

    def set_attr(self, req: SetAttrReq) -> Inode:
        return self._mutate(
            META.set_attr, req, lambda tr, _: setattr_op.set_attr(tr, self.ctx, req)
        )

    # ------------------------------------------------------------ KVCache index

    def kv_store_open(self, req: KvStoreReq) -> KvStoreInfo:
        return self._mutate(
            META.kv_store_open,
            req,
            lambda tr, new_id: kvcache.open_store(tr, self.ctx, req, new_id),
            kvcache.store_ids_needed(req),
        )

    def kv_store_stats(self, req: KvStoreReq) -> KvStoreStats:
        return self._read(lambda tr: kvcache.stats(tr, req))

    def kv_page_stage(self, req: KvStageReq) -> KvStageReply:
        reply = self._mutate(
            META.kv_page_stage,
            req,
            lambda tr, new_id: kvcache.stage(tr, self.ctx, req, new_id),
            max(0, min(req.count, kvcache.MAX_BATCH)),
        )
        fault_point("meta.kv_stage.committed")
        return reply

    def kv_page_put(self, req: KvPutReq) -> KvPutReply:
        reply = self._mutate(
            META.kv_page_put, req, lambda tr, _: kvcache.put(tr, self.ctx, req)
        )
        fault_point("meta.kv_put.committed")
        return reply

    def kv_page_lookup(self, req: KvLookupReq) -> KvLookupReply:
        def fn(tr: Transaction) -> KvLookupReply:
            return kvcache.page_lookup(tr, self.ctx, req)

        if req.touch or req.lease_ttl > 0:
            return self.db.run(fn)
        return self._read(fn)

    def kv_page_touch(self, req: KvKeysReq) -> KvCountReply:
        return self.db.run(lambda tr: kvcache.touch(tr, self.ctx, req))

    def kv_page_lease(self, req: KvKeysReq) -> KvCountReply:
        return self.db.run(lambda tr: kvcache.lease(tr, self.ctx, req))

    def kv_page_remove(self, req: KvKeysReq) -> KvCountReply:
        return self._mutate(
            META.kv_page_remove,
            req,
            lambda tr, _: kvevict.remove(tr, self.ctx, req),
        )

    def kv_page_evict(self, req: KvEvictReq) -> KvEvictReply:
        return self._mutate(
            META.kv_page_evict,
            req,
            lambda tr, _: kvevict.evict(tr, self.ctx, req),
        )

    def kv_page_list(self, req: KvListReq) -> KvListReply:
        return self._read(lambda tr: kvevict.list_pages(tr, self.ctx, req))
