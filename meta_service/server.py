"""The meta RPC surface: `MetaService` (py3fs/proto/services.py) served over
`py3fs.msgrpc`; each op is one MetaStore call, on the event loop where the
store is SQLite and its lock is free, else in a worker thread (`_run`).

`MetaServer` is an async resource: entering it opens the KV store, creates the
root if missing, starts the RPC server, registers with mgmtd and starts the
heartbeat and GC tasks; `aclose` stops all of them and releases the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

import msgspec

from meta_service import trash
from meta_service.config import MetaConfig
from meta_service.gc import GcWorker
from meta_service.id_alloc import IdAllocator
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import R, W, check_access
from meta_service.recovery import SessionReaper
from meta_service.store import MetaStore
from py3fs import caps, errors, faults
from py3fs.app import ServiceResource
from py3fs.auth import Authenticator
from py3fs.dataplane import DataClient
from py3fs.kv.base import Database
from py3fs.kv.registry import open_database
from py3fs.kv.sqlite import SqliteDatabase
from py3fs.mgmt_client import MgmtClient
from py3fs.msgrpc import MsgServer, ServerLimits
from py3fs.proto.messages import (
    CapReply,
    CapReq,
    HeartbeatReq,
    Inode,
    InodeReq,
    InodeType,
    KvStageReq,
    MetaReq,
    Msg,
    OpenReply,
    OpenReq,
    RegisterNodeReq,
    StatFsReply,
    TrashDirReply,
    WhoAmIReply,
)
from py3fs.proto.services import MetaService
from py3fs.routing import RoutingView

logger = logging.getLogger(__name__)


class MetaServer(ServiceResource):
    def __init__(self, cfg: MetaConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.address = ""
        self.http_address = ""  # set by py3fs.app before start
        self.routing: RoutingView | None = None
        self._clock = clock
        self._db: Database | None = None
        self._store: MetaStore | None = None
        self._rpc: MsgServer | None = None
        self._mgmt: MgmtClient | None = None
        self._keys = caps.Keys.load(cfg.secret_file)
        self._data = DataClient(keys=self._keys)  # GC's removes are signed
        self._registered = False
        self._tasks: asyncio.TaskGroup | None = None
        self._running: list[asyncio.Task[None]] = []

    @property
    def store(self) -> MetaStore:
        assert self._store is not None, "server not started"
        return self._store

    async def _start(self) -> None:
        cfg = self.cfg
        self._db = db = await asyncio.to_thread(open_database, cfg.kv)
        ctx = OpContext(
            routing=lambda: self.routing, chunk_size=cfg.chunk_size, clock=self._clock
        )
        self._store = MetaStore(db, ctx, IdAllocator(db, cfg.id_batch))
        await asyncio.to_thread(self._store.ensure_root)
        limits = ServerLimits(
            max_connections=cfg.rpc_max_connections,
            idle_timeout=cfg.rpc_idle_timeout,
            max_request=cfg.rpc_max_request,
        )
        impl = _Authenticated(self, Authenticator(db))
        self._rpc = MsgServer(MetaService, impl, limits)
        self.address = await self._rpc.start(cfg.host, cfg.port)
        self._mgmt = MgmtClient(cfg.mgmt, keys=self._keys)
        try:
            await self._register()
        except errors.Py3fsError as exc:
            # Namespace ops work without mgmtd; the heartbeat loop keeps trying.
            logger.warning("cannot register with mgmtd yet: %s", exc)
        gc = GcWorker(
            db,
            lambda: self.routing,
            self._data,
            client_id=f"meta-{cfg.node_id}",
            interval=cfg.gc_interval,
            poll=cfg.gc_poll,
            batch=cfg.gc_batch,
            retry_interval=cfg.gc_retry_interval,
            idempotency_ttl=cfg.idempotency_ttl,
            clock=self._clock,
        )
        reaper = SessionReaper(
            db,
            lambda: self.routing,
            self._data,
            interval=cfg.session_scan_interval,
            clock=self._clock,
        )
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._running = [
            self._tasks.create_task(self._heartbeat_loop()),
            self._tasks.create_task(gc.run()),
            self._tasks.create_task(reaper.run()),
            self._tasks.create_task(
                trash.expire_loop(self._store, cfg.trash_interval, self._clock)
            ),
        ]

    async def aclose(self) -> None:
        """Stop serving and release everything, even if a step fails."""
        try:
            if self._rpc is not None:
                await self._rpc.aclose()
        finally:
            for task in self._running:
                task.cancel()
            if self._tasks is not None:
                with contextlib.suppress(Exception):
                    await self._tasks.__aexit__(None, None, None)
                self._tasks = None
            if self._mgmt is not None:
                await self._mgmt.aclose()
            await self._data.aclose()
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------ mgmtd

    async def _register(self) -> None:
        assert self._mgmt is not None
        req = RegisterNodeReq(
            node_id=self.cfg.node_id,
            role="meta",
            address=self.address,
            pid=os.getpid(),
            http=self.http_address,
        )
        self.routing = await self._mgmt.register(req)
        self._registered = True
        logger.info("registered with mgmtd (routing version %d)", self.routing.version)

    async def refresh_routing(self) -> None:
        assert self._mgmt is not None
        self.routing = await self._mgmt.routing()

    async def _heartbeat_loop(self) -> None:
        assert self._mgmt is not None
        req = HeartbeatReq(
            node_id=self.cfg.node_id, role="meta", address=self.address, pid=os.getpid()
        )
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            try:
                if not self._registered:
                    await self._register()
                    continue
                reply = await self._mgmt.heartbeat(req)
                if (
                    self.routing is None
                    or reply.routing_version != self.routing.version
                ):
                    await self.refresh_routing()
            except errors.UnknownNode:
                self._registered = False
            except errors.Py3fsError as exc:
                logger.warning("heartbeat to mgmtd failed: %s", exc)

    # ------------------------------------------------------------ RPCs

    def __getattr__(self, name: str) -> Callable[[Msg], Awaitable[Msg]]:
        """Every RPC not defined below is one MetaStore call (`_run`)."""
        if name not in _PASS_THROUGH:
            raise AttributeError(name)
        op = getattr(self.store, name)
        inline = name in _INLINE

        async def call(req: Msg) -> Msg:
            return await self._run(op, req, inline)

        return call

    async def _run(
        self, op: Callable[[Msg], Msg], req: Msg, inline: bool = True
    ) -> Msg:
        """`op(req)`, a MetaStore call: with `inline`, on the loop itself
        where the store is SQLite, else (and when that would wait for a lock)
        in a worker thread.

        A SQLite transaction of a namespace op takes ~100-200 µs of CPU; a
        worker thread adds two hand-offs (a futex wake, then the loop's
        wake-up and a GIL transfer) that cost as much again on a loaded host,
        and each may wait for a CPU. On the loop the transaction never waits:
        `SqliteDatabase.nowait` makes it fail at once with nothing written
        when another thread or process holds the write lock, and then it runs
        the ordinary way, waiting and retrying in a thread. Fault points may
        sleep, so with any switched on everything goes to threads."""
        db = self._db
        if inline and isinstance(db, SqliteDatabase) and not faults.any_enabled():
            try:
                with db.nowait():
                    return op(req)
            except errors.Py3fsError as exc:
                if not exc.retryable:
                    raise
        return await asyncio.to_thread(op, req)

    async def _with_routing_retry(self, name: str, req: Msg) -> Msg:
        """Ops that place a new file: our routing may predate the chain table, so
        on NoChainTable refresh once and retry. If mgmtd is unreachable the client
        still sees NoChainTable (retryable), not an error that blames this meta."""
        op = getattr(self.store, name)
        inline = name in _INLINE
        try:
            result: Msg = await self._run(op, req, inline)
        except errors.NoChainTable:
            try:
                await self.refresh_routing()
            except errors.Py3fsError as exc:
                logger.warning("cannot refresh routing: %s", exc)
            result = await self._run(op, req, inline)
        return result

    async def open(self, req: OpenReq) -> Msg:
        reply = await self._with_routing_retry("open", req)
        assert isinstance(reply, OpenReply)
        node = reply.inode
        if self._keys is None or node.type != InodeType.FILE:
            return reply
        # The checks Capability makes (a write capability also reads, so it
        # needs both bits); an opener without them asks Capability, and fails.
        write = bool(reply.session_id)
        try:
            check_access(node, req, R | W if write else R)
        except errors.PermissionDenied:
            return reply
        ttl = caps.DEFAULT_TTL
        cap = self._keys.issue(node.inode, write, ttl)
        return msgspec.structs.replace(reply, cap=cap, cap_ttl=ttl)

    async def kv_page_stage(self, req: KvStageReq) -> Msg:
        return await self._with_routing_retry("kv_page_stage", req)

    async def capability(self, req: CapReq) -> CapReply:
        """A capability for the inode's chunks after the permission check an
        open would make (read; write as well when asked)."""
        node = await self._run(
            self.store.stat_inode,  # type: ignore[arg-type]
            InodeReq(inode=req.inode, uid=req.uid, gid=req.gid, groups=req.groups),
        )
        assert isinstance(node, Inode)
        if node.type != InodeType.FILE:
            raise errors.InvalidArgument(f"inode {req.inode} is not a file")
        check_access(node, req, R | W if req.write else R)
        if (
            req.first_chunk < 0
            or req.end_chunk < 0
            or 0 < req.end_chunk <= req.first_chunk
        ):
            raise errors.InvalidArgument(
                f"bad chunk range [{req.first_chunk}, {req.end_chunk})"
            )
        if self._keys is None:
            return CapReply(cap=b"", ttl=caps.DEFAULT_TTL)
        ttl = caps.DEFAULT_TTL
        cap = self._keys.issue(
            req.inode, req.write, ttl, req.first_chunk, req.end_chunk
        )
        return CapReply(cap=cap, ttl=ttl)

    async def whoami(self, req: MetaReq) -> WhoAmIReply:
        return WhoAmIReply(uid=req.uid, gid=req.gid, groups=list(req.groups))

    async def trash_dir(self, req: MetaReq) -> TrashDirReply:
        path = await asyncio.to_thread(trash.user_dir, self.store, req)
        return TrashDirReply(path=path)

    async def stat_fs(self, req: MetaReq) -> StatFsReply:
        with contextlib.suppress(errors.Py3fsError):
            await self.refresh_routing()  # capacity numbers come from fresh reports
        return await asyncio.to_thread(self.store.stat_fs, req)


class _Authenticated:
    """The handlers of `server`, each first replacing the identity a request
    claims with the one its token proves (py3fs.auth)."""

    def __init__(self, server: MetaServer, auth: Authenticator) -> None:
        self._server = server
        self._auth = auth

    def __getattr__(self, name: str) -> Callable[[Msg], Awaitable[Msg]]:
        handler = getattr(self._server, name)
        auth = self._auth

        async def call(req: Msg) -> Msg:
            if isinstance(req, MetaReq):
                user = auth.user(req.token)
                if user is not None and not user.act_for_others:
                    req = msgspec.structs.replace(
                        req, uid=user.uid, gid=user.gid, groups=list(user.groups)
                    )
            result: Msg = await handler(req)
            return result

        return call


# Namespace ops: each a transaction of a few keys, ~100-200 µs, run on the loop
# (`_run`). The others (a directory page of up to thousands of entries, KV
# cache batches of up to 1,024 pages) may hold it for milliseconds: threads.
_INLINE = frozenset(
    {
        "stat",
        "stat_inode",
        "readlink",
        "mkdir",
        "mknod",
        "symlink",
        "link",
        "unlink",
        "rmdir",
        "rename",
        "set_attr",
        "open",
        "close",
        "sync",
        "append",
        "renew",
    }
)
_PASS_THROUGH = frozenset(r.name for r in MetaService.rpcs()) - {
    name for name, value in vars(MetaServer).items() if callable(value)
}
