"""mgmtd's RPC surface: the gRPC server, persistence of the routing state, the
primary lease and the task that expires silent nodes. The decisions themselves
live in `state.py`, the lease in `leases.py`.

Every request that changes the routing version is persisted to the KV store (the
whole `RoutingInfo`, msgpack, at `keys.mgmt_key("routing")`) before it is
answered, so a reply that shows a chain table means the table survives a crash.

Several mgmtd may share one KV store: the one holding the lease is the primary and
serves; the others answer NotPrimary (clients fail over) and take over, from the
persisted state, when the lease lapses. Persisting checks the lease in the same
transaction, so a deposed primary cannot overwrite its successor's routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc.aio
import msgspec
from fastapi import FastAPI

from mgmt_service import admin_http
from mgmt_service.config import MgmtConfig
from mgmt_service.leases import PrimaryLease, check_holder
from mgmt_service.state import MgmtState
from py3fs import caps, errors
from py3fs.app import ServiceResource
from py3fs.kv import keys
from py3fs.kv.base import Database, Transaction
from py3fs.kv.registry import open_database
from py3fs.proto import mgmt_pb2_grpc
from py3fs.proto.messages import (
    MGMT_RPCS,
    CreateChainTableReq,
    DecommissionReq,
    GetRoutingReq,
    HeartbeatReply,
    HeartbeatReq,
    RegisterNodeReq,
    RoutingInfo,
)
from py3fs.rpc import make_servicer, start_server

logger = logging.getLogger(__name__)

ROUTING_KEY = keys.mgmt_key("routing")
_decoder = msgspec.msgpack.Decoder(RoutingInfo)


async def load_routing(db: Database) -> RoutingInfo | None:
    """The persisted routing state, or None on a fresh cluster."""

    def read(tr: Transaction) -> bytes | None:
        return tr.get(ROUTING_KEY)

    raw = await db.arun(read, read_only=True)
    return None if raw is None else _decoder.decode(raw)


class MgmtServer(ServiceResource):
    """One mgmtd: `async with MgmtServer(cfg) as srv:` serves on `srv.address`.

    Leaving the context stops the expiry task, the gRPC server and closes the KV
    database, even when one of those steps fails.
    """

    def __init__(
        self, cfg: MgmtConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not cfg.kv_url:
            raise errors.InvalidArgument("mgmtd needs a KV store (--kv URL)")
        if cfg.heartbeat_timeout <= 0:
            raise errors.InvalidArgument("heartbeat_timeout must be positive")
        self.cfg = cfg
        self.address = ""
        self.http_address = ""  # set by py3fs.app before start
        self._clock = clock
        self._db: Database | None = None
        self._state: MgmtState | None = None
        self._server: grpc.aio.Server | None = None
        self._stack = contextlib.AsyncExitStack()
        # Serializes persists so an older snapshot never overwrites a newer one.
        self._persist_lock = asyncio.Lock()
        self._persisted_version = -1
        self._lease: PrimaryLease | None = None
        self._keys = caps.Keys.load(cfg.secret_file)

    @property
    def is_primary(self) -> bool:
        return self._state is not None and self._lease is not None and self._lease.held

    @property
    def state(self) -> MgmtState:
        """The routing state; raises NotPrimary (retryable) on a standby."""
        if self._state is None or not self.is_primary:
            raise errors.NotPrimary(f"mgmtd {self.cfg.node_id} is a standby")
        return self._state

    async def _start(self) -> None:
        self._db = await asyncio.to_thread(open_database, self.cfg.kv_url)
        self._stack.callback(self._db.close)
        self._lease = PrimaryLease(
            self._db,
            self.cfg.node_id,
            self.cfg.lease_timeout or self.cfg.heartbeat_timeout,
            clock=self._clock,
        )
        self._stack.push_async_callback(self._release_lease)
        # One attempt before serving, so the first mgmtd of a cluster is primary
        # by the time it reports ready.
        await self._lease_round()
        servicer = make_servicer(mgmt_pb2_grpc.MgmtServicer, MGMT_RPCS, self)
        self._server, self.address = await start_server(
            mgmt_pb2_grpc.add_MgmtServicer_to_server,
            servicer,
            self.cfg.host,
            self.cfg.port,
        )
        self._stack.push_async_callback(self._stop_grpc)
        tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        expiry = tasks.create_task(self._expire_loop())
        lease = tasks.create_task(self._lease_loop())
        # Registered after the TaskGroup, so they run first on close and the
        # group's exit only has to await the cancelled tasks.
        self._stack.callback(expiry.cancel)
        self._stack.callback(lease.cancel)

    async def _release_lease(self) -> None:
        if self._lease is not None and self.is_primary:
            try:
                await self._lease.release()
            except errors.Py3fsError as exc:
                logger.warning("releasing the primary lease failed: %s", exc)

    async def _lease_round(self) -> None:
        """Renew (primary) or try to take (standby) the lease, and step up or
        down accordingly."""
        assert self._lease is not None
        try:
            await self._lease.try_acquire()
        except errors.Py3fsError as exc:
            # Keep what we hold until it runs out; the next round tries again.
            logger.warning("primary lease round failed: %s", exc)
        if self._lease.held and self._state is None:
            await self._become_primary()
        elif not self._lease.held and self._state is not None:
            logger.warning("mgmtd %d lost the primary lease", self.cfg.node_id)
            self._state = None

    async def _become_primary(self) -> None:
        assert self._db is not None
        initial = await load_routing(self._db)
        if initial is not None:
            logger.info(
                "loaded routing version %d: %d nodes, %d chains, %d tables",
                initial.version,
                len(initial.nodes),
                len(initial.chains),
                len(initial.tables),
            )
        self._persisted_version = initial.version if initial is not None else -1
        # MgmtState gives every restored node a full timeout from now.
        self._state = MgmtState(
            self.cfg.heartbeat_timeout,
            clock=self._clock,
            initial=initial,
            max_targets_per_node=self.cfg.max_targets_per_node,
            max_nodes=self.cfg.max_nodes,
        )
        logger.info("mgmtd %d is primary", self.cfg.node_id)

    async def _lease_loop(self) -> None:
        assert self._lease is not None
        while True:
            await asyncio.sleep(self._lease.duration / 3)
            await self._lease_round()

    async def _stop_grpc(self) -> None:
        assert self._server is not None
        await self._server.stop(grace=1.0)

    async def aclose(self) -> None:
        await self._stack.aclose()

    def http_app(self) -> FastAPI:
        """The status page, JSON status, /metrics and /healthz (py3fs.app serves it)."""
        return admin_http.make_app(self)

    # ------------------------------------------------------------------ RPCs

    def _verify(
        self,
        req: RegisterNodeReq | HeartbeatReq | CreateChainTableReq | DecommissionReq,
    ) -> None:
        """Every RPC that changes cluster state comes from a service or an
        admin tool holding the cluster secret; GetRouting is open to clients."""
        if self._keys is not None:
            self._keys.verify(req)

    async def register_node(self, req: RegisterNodeReq) -> RoutingInfo:
        self._verify(req)
        info = self.state.register(req)
        await self._persist()
        return info

    async def heartbeat(self, req: HeartbeatReq) -> HeartbeatReply:
        self._verify(req)
        version = self.state.heartbeat(req)
        await self._persist()
        return HeartbeatReply(
            routing_version=version, heartbeat_timeout=self.cfg.heartbeat_timeout
        )

    async def get_routing(self, req: GetRoutingReq) -> RoutingInfo:
        return self.state.routing()

    async def create_chain_table(self, req: CreateChainTableReq) -> RoutingInfo:
        self._verify(req)
        info = self.state.create_chain_table(req.replicas, req.table_id)
        await self._persist()
        return info

    async def decommission(self, req: DecommissionReq) -> RoutingInfo:
        self._verify(req)
        info = self.state.decommission(req.node_id)
        await self._persist()
        return info

    # ------------------------------------------------------------------ internals

    async def _persist(self) -> None:
        """Write the current routing state if its version is not stored yet."""
        async with self._persist_lock:
            # Most heartbeats change nothing: skip building the snapshot then.
            if self.state.version <= self._persisted_version:
                return
            info = self.state.routing()
            raw = msgspec.msgpack.encode(info)

            node_id = self.cfg.node_id

            def write(tr: Transaction) -> None:
                check_holder(tr, node_id)
                tr.set(ROUTING_KEY, raw)

            assert self._db is not None
            await self._db.arun(write)
            self._persisted_version = info.version

    async def _expire_loop(self) -> None:
        interval = self.cfg.expire_interval or self.cfg.heartbeat_timeout / 8
        while True:
            await asyncio.sleep(interval)
            if not self.is_primary:
                continue
            try:
                if self.state.expire():
                    await self._persist()
            except errors.Py3fsError as exc:
                # The KV store may be briefly unavailable; the next round (or the
                # next change) persists the state again.
                logger.warning("persisting routing state failed: %s", exc)
