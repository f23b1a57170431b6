"""The node's storage targets and the state the request paths share.

`StorageContext` owns the chunk store of every target on this node, the current
routing view (refreshed from mgmtd), per-chunk locks and the data client used to
reach chain neighbours. Write, read and remove paths take it as their only input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterable
from typing import Any

from py3fs import errors, wire
from py3fs.dataplane import DataClient
from py3fs.mgmt_client import MgmtClient
from py3fs.proto.messages import ChainInfo, LocalState, TargetReport, TargetState
from py3fs.routing import RoutingView
from storage_service.chunk_store import StoreStats
from storage_service.config import StorageConfig
from storage_service.file_chunk_store import FileChunkStore

logger = logging.getLogger(__name__)


def target_ids(node_id: int, count: int) -> list[int]:
    """Target ids of a node: node*100+1 .. node*100+count."""
    return [node_id * 100 + i for i in range(1, count + 1)]


class KeyedLocks:
    """An asyncio.Lock per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold_all(self, keys: Iterable[Hashable]) -> AsyncIterator[None]:
        """Hold several keys, taken in sorted order so two holders never deadlock."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):  # type: ignore[type-var]
                await stack.enter_async_context(self.hold(key))
            yield


class StorageContext:
    def __init__(
        self, cfg: StorageConfig, mgmt: MgmtClient, client: DataClient
    ) -> None:
        self.cfg = cfg
        self.mgmt = mgmt
        self.client = client
        self.stores: dict[int, FileChunkStore] = {
            tid: FileChunkStore(
                os.path.join(cfg.data_dir, f"target-{tid}"), fsync=cfg.fsync
            )
            for tid in target_ids(cfg.node_id, cfg.targets)
        }
        self.routing: RoutingView | None = None
        self.locks = KeyedLocks()
        self._refresh_lock = asyncio.Lock()
        self._chain_of_target: dict[int, int] = {}
        # The lease: monotonic time until which mgmtd's view of us is trusted (half
        # its heartbeat timeout after a heartbeat was sent). 0: none yet.
        self.lease_until = 0.0
        # target -> chain version at which its resync completed (SYNC_DONE)
        self.sync_done: dict[int, int] = {}
        # Called with every new routing view (resync jobs start from here).
        self.listeners: list[Callable[[RoutingView], None]] = []
        # Set to send a heartbeat at once (a target became up to date).
        self.beat_now = asyncio.Event()
        self._spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] | None
        self._spawn = None

    async def open(self) -> None:
        await asyncio.gather(*(s.load() for s in self.stores.values()))
        total = sum(len(s.list_chunks()) for s in self.stores.values())
        logger.info("opened %d targets holding %d chunks", len(self.stores), total)

    async def flush(self, target_ids: list[int]) -> int:
        """Flush the named targets of this node (others are ignored); returns how
        many chunks were flushed."""
        stores = [self.stores[t] for t in set(target_ids) if t in self.stores]
        return sum(await asyncio.gather(*(s.sync() for s in stores)))

    def store(self, target_id: int) -> FileChunkStore:
        try:
            return self.stores[target_id]
        except KeyError:
            raise errors.TargetNotServing(
                f"target {target_id} is not on node {self.cfg.node_id}"
            ) from None

    # -- background work

    def set_spawner(
        self, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    ) -> None:
        self._spawn = spawn

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in the server's task group; its failure is logged, never
        allowed to tear the group (and the server) down."""
        assert self._spawn is not None, "server task group not started"

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                logger.exception("background task failed")

        return self._spawn(guarded())

    # -- lease and local states

    def lease_ok(self) -> bool:
        return time.monotonic() < self.lease_until

    def local_state(self, target_id: int) -> str:
        """What we tell mgmtd about a target: up to date while it serves or once
        its resync finished at the current chain version; online otherwise."""
        if self.routing is None or target_id not in self.routing.targets:
            return LocalState.ONLINE
        state = self.routing.targets[target_id].state
        if state == TargetState.SERVING:
            return LocalState.UPTODATE
        chain = self.chain_of(target_id)
        if (
            state == TargetState.SYNCING
            and chain is not None
            and self.sync_done.get(target_id) == chain.version
        ):
            return LocalState.UPTODATE
        return LocalState.ONLINE

    # -- routing

    def set_routing(self, routing: RoutingView) -> None:
        old = self.routing.version if self.routing else 0
        if self.routing is not None and routing.version < self.routing.version:
            return
        self.routing = routing
        self._chain_of_target = {
            t: c.chain_id for c in routing.info.chains for t in c.targets
        }
        if routing.version != old:
            logger.info("routing version %d -> %d", old, routing.version)
            for listener in self.listeners:
                listener(routing)

    async def refresh_routing(self, want_chain: tuple[int, int] | None = None) -> None:
        """Pull routing from mgmtd; concurrent callers share one pull. With
        `want_chain` (chain id, version), skip the pull if that is already known."""
        async with self._refresh_lock:
            if want_chain and self._chain_version(want_chain[0]) >= want_chain[1]:
                return
            self.set_routing(await self.mgmt.routing())

    def _chain_version(self, chain_id: int) -> int:
        chain = self.routing.chains.get(chain_id) if self.routing else None
        return chain.version if chain else 0

    async def check_chain(self, chain_id: int, chain_ver: int) -> RoutingView:
        """The routing view, once `chain_ver` is this chain's current version.

        A request carrying a newer version than ours means mgmtd moved on: pull
        routing first. Raises ChainVersionMismatch (retryable) otherwise.
        """
        if self._chain_version(chain_id) < chain_ver:
            try:
                await self.refresh_routing((chain_id, chain_ver))
            except errors.Py3fsError as exc:
                logger.warning("routing refresh failed: %s", exc)
        if self.routing is None:
            raise errors.TargetNotServing("no routing from mgmtd yet")
        if not self.lease_ok():
            # mgmtd may already have given our place in the chain to another
            # target: serving now could make two heads (split brain).
            raise errors.TargetNotServing(
                f"node {self.cfg.node_id} has no lease: mgmtd not reachable"
            )
        mine = self._chain_version(chain_id)
        if mine != chain_ver:
            raise errors.ChainVersionMismatch(
                f"chain {chain_id}: request version {chain_ver}, current {mine}"
            )
        return self.routing

    def chain_of(self, target_id: int) -> ChainInfo | None:
        if self.routing is None or target_id not in self._chain_of_target:
            return None
        return self.routing.chains.get(self._chain_of_target[target_id])

    # -- stats

    async def _stats(self) -> list[tuple[int, StoreStats]]:
        stats = await asyncio.gather(*(s.stats() for s in self.stores.values()))
        return list(zip(self.stores, stats, strict=True))

    async def target_stats(self) -> list[wire.TargetStat]:
        return [
            wire.TargetStat(
                target_id=tid,
                used_bytes=st.used_bytes,
                chunk_count=st.chunk_count,
                free_bytes=st.free_bytes,
                total_bytes=st.total_bytes,
            )
            for tid, st in await self._stats()
        ]

    async def reports(self) -> list[TargetReport]:
        host = socket.gethostname()
        return [
            TargetReport(
                target_id=tid,
                used_bytes=st.used_bytes,
                free_bytes=st.free_bytes,
                total_bytes=st.total_bytes,
                chunk_count=st.chunk_count,
                local_state=self.local_state(tid),
                device=f"{host}:{st.device}",
            )
            for tid, st in await self._stats()
        ]
