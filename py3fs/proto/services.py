"""RPC service tables: each RPC is declared once, here.

A table is a class of `Rpc` attributes (number, request type, reply type,
whether it mutates). Everything else derives from it:

- the server dispatch (`py3fs.msgrpc.serve` calls `impl.<name>(req)`),
- the typed client stub: a class that inherits the table and defines
  `_invoke(rpc, req)` gets `stub.mkdir(req) -> Inode` for every RPC,
- idempotency: a mutating RPC carries a request id, and meta records its reply
  under `rpc.title` (see `meta_service.idempotency`).

Numbers travel on the wire and are never reused, like `py3fs.wire.MsgType`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, overload

from py3fs.proto import messages as m

Q = TypeVar("Q", bound=m.Msg)
A = TypeVar("A", bound=m.Msg)


class Rpc(Generic[Q, A]):
    """One RPC of a service table (a descriptor: on a stub instance it is the
    bound call)."""

    def __init__(
        self, number: int, req: type[Q], reply: type[A], *, mutating: bool = False
    ) -> None:
        self.number = number
        self.req = req
        self.reply = reply
        self.mutating = mutating
        self.name = ""  # set by __set_name__: the Python name (list_dir)
        self.title = ""  # the RPC's name in logs and idempotency records (ListDir)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.title = "".join(p.capitalize() for p in name.split("_"))

    @overload
    def __get__(self, obj: None, owner: type) -> Rpc[Q, A]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> Callable[[Q], Awaitable[A]]: ...
    def __get__(self, obj: object | None, owner: type) -> Any:
        if obj is None:
            return self
        invoke = obj._invoke  # type: ignore[attr-defined]

        def call(req: Q) -> Awaitable[A]:
            result: Awaitable[A] = invoke(self, req)
            return result

        return call

    def __repr__(self) -> str:
        return f"Rpc({self.title} #{self.number})"


class Service:
    """Base of service tables."""

    service_name = ""

    @classmethod
    def rpcs(cls) -> list[Rpc[Any, Any]]:
        found: dict[int, Rpc[Any, Any]] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                if isinstance(value, Rpc):
                    other = found.get(value.number)
                    assert other is None or other is value, (
                        f"{cls.__name__}: {value} and {other} share a number"
                    )
                    found[value.number] = value
        return sorted(found.values(), key=lambda r: r.number)


class MetaService(Service):
    """The metadata service (meta_service/server.py serves it over py3fs.msgrpc)."""

    service_name = "meta"

    stat = Rpc(1, m.PathReq, m.Inode)
    stat_inode = Rpc(2, m.InodeReq, m.Inode)
    mkdir = Rpc(3, m.MkdirReq, m.Inode, mutating=True)
    open = Rpc(4, m.OpenReq, m.OpenReply, mutating=True)
    close = Rpc(5, m.CloseReq, m.Inode, mutating=True)
    sync = Rpc(6, m.SyncReq, m.Inode, mutating=True)
    list_dir = Rpc(7, m.ListDirReq, m.ListDirReply)
    rename = Rpc(8, m.RenameReq, m.Changed, mutating=True)
    unlink = Rpc(9, m.PathReq, m.Changed, mutating=True)
    rmdir = Rpc(10, m.PathReq, m.Changed, mutating=True)
    symlink = Rpc(11, m.SymlinkReq, m.Inode, mutating=True)
    readlink = Rpc(12, m.PathReq, m.ReadlinkReply)
    link = Rpc(13, m.LinkReq, m.Inode, mutating=True)
    set_attr = Rpc(14, m.SetAttrReq, m.Inode, mutating=True)
    stat_fs = Rpc(15, m.MetaReq, m.StatFsReply)
    # KVCache page index (meta_service/ops/kvcache.py)
    kv_store_open = Rpc(16, m.KvStoreReq, m.KvStoreInfo, mutating=True)
    kv_store_stats = Rpc(17, m.KvStoreReq, m.KvStoreStats)
    kv_page_stage = Rpc(18, m.KvStageReq, m.KvStageReply, mutating=True)
    kv_page_put = Rpc(19, m.KvPutReq, m.KvPutReply, mutating=True)
    kv_page_lookup = Rpc(20, m.KvLookupReq, m.KvLookupReply)
    kv_page_touch = Rpc(21, m.KvKeysReq, m.KvCountReply)
    kv_page_lease = Rpc(22, m.KvKeysReq, m.KvCountReply)
    kv_page_remove = Rpc(23, m.KvKeysReq, m.KvCountReply, mutating=True)
    kv_page_evict = Rpc(24, m.KvEvictReq, m.KvEvictReply, mutating=True)
    kv_page_list = Rpc(25, m.KvListReq, m.KvListReply)
    mknod = Rpc(26, m.MknodReq, m.Inode, mutating=True)
    renew = Rpc(27, m.RenewReq, m.Empty)
    append = Rpc(28, m.AppendReq, m.AppendReply, mutating=True)
    capability = Rpc(29, m.CapReq, m.CapReply)
    whoami = Rpc(30, m.MetaReq, m.WhoAmIReply)
    trash_dir = Rpc(31, m.MetaReq, m.TrashDirReply, mutating=True)
