"""The storage server: data-plane RPC surface, registration and heartbeats.

`async with StorageServer(cfg) as srv` opens the targets, listens on the data
port, registers with mgmtd (retrying while mgmtd is not up yet) and heartbeats
until closed. Requests are decoded here and handed to the read/write paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from py3fs import caps, errors, ids, metrics, wire
from py3fs.app import ServiceResource
from py3fs.dataplane import DataClient, DataServer, ServerConn
from py3fs.mgmt_client import MgmtClient
from py3fs.proto.messages import HeartbeatReq, RegisterNodeReq
from py3fs.retry import RetryPolicy
from storage_service.config import StorageConfig
from storage_service.local_read import read_fd
from storage_service.read_path import ReadPath
from storage_service.resync import Resync
from storage_service.targets import StorageContext
from storage_service.write_path import WritePath

logger = logging.getLogger(__name__)
M = wire.MsgType
_READ_BYTES = metrics.STORAGE_BYTES.labels("read")  # once: labels() costs per call
_LOCAL_BYTES = metrics.STORAGE_BYTES.labels("read_local")


def _check_read_caps(keys: caps.Keys, body: wire.ReadReq) -> None:
    """Every io of a READ needs a capability for its inode covering its chunk.
    Each capability's signature is checked once, however many ios it covers."""
    by_inode: dict[int, list[caps.Capability]] = {}
    for raw in body.caps:
        try:
            cap = keys.open(raw)
        except errors.PermissionDenied:
            continue  # a forged one counts as none
        by_inode.setdefault(cap.inode, []).append(cap)
    for io in body.ios:
        inode, index = ids.split_chunk_id(io.chunk_id)
        held = by_inode.get(inode)
        if not held:
            keys.check(b"", inode, write=False)
            continue
        refusal: errors.Py3fsError | None = None
        for cap in held:
            try:
                keys.allows(cap, inode, False, index)
                break
            except (errors.PermissionDenied, errors.CapabilityExpired) as exc:
                # Expired wins: the client then asks meta for a fresh one.
                if refusal is None or isinstance(exc, errors.CapabilityExpired):
                    refusal = exc
        else:
            assert refusal is not None
            raise refusal


class StorageServer(ServiceResource):
    def __init__(self, cfg: StorageConfig) -> None:
        self.cfg = cfg
        # Checks are on when the cluster has a secret (py3fs.caps).
        self.keys = caps.Keys.load(cfg.secret_file)
        self.mgmt = MgmtClient(cfg.mgmt, keys=self.keys)
        self.client = DataClient(keys=self.keys)
        self.ctx = StorageContext(cfg, self.mgmt, self.client)
        self.resync = Resync(self.ctx)
        self.writes = WritePath(self.ctx, self.resync)
        self.reads = ReadPath(self.ctx, self.resync)
        self.address = ""
        self.http_address = ""  # set by py3fs.app before start
        self._data: DataServer | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._heartbeats: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        await self.ctx.open()
        cfg = self.cfg
        self._data = DataServer(
            self._handle,
            cfg.host,
            cfg.port,
            max_connections=cfg.max_connections,
            idle_timeout=cfg.idle_timeout,
            payload_timeout=cfg.payload_timeout,
            payload_budget=cfg.payload_budget_bytes,
        )
        await self._data.__aenter__()
        self.address = self._data.address
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self.ctx.set_spawner(self._tasks.create_task)
        await self._register()
        # The first heartbeat starts the lease; until then we do not serve.
        with contextlib.suppress(errors.Py3fsError):
            await self._heartbeat()
        self._heartbeats = self._tasks.create_task(self._heartbeat_loop())

    async def aclose(self) -> None:
        """Stop heartbeats, close the listener and connections; always releases all."""
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            if self._heartbeats is not None:
                self._heartbeats.cancel()
            self.resync.cancel_all()
            with contextlib.suppress(Exception):
                await tasks.__aexit__(None, None, None)
        if self._data is not None:
            data, self._data = self._data, None
            await data.aclose()
        await self.client.aclose()
        await self.mgmt.aclose()

    # -- mgmtd

    async def _register(self) -> None:
        req = RegisterNodeReq(
            node_id=self.cfg.node_id,
            role="storage",
            address=self.address,
            targets=list(self.ctx.stores),
            pid=os.getpid(),
            http=self.http_address,
        )

        async def register(n: int) -> None:
            self.ctx.set_routing(await self.mgmt.register(req))

        def waiting(exc: BaseException, n: int) -> None:
            logger.info("mgmtd not reachable yet: %s", exc)

        # mgmtd may start after us (a whole cluster booting at once).
        policy = RetryPolicy(
            initial=0.2, maximum=0.2, timeout=self.cfg.register_timeout
        )
        await policy.acall(register, what="register", on_retry=waiting)
        logger.info("registered node %d at %s", self.cfg.node_id, self.address)

    async def _heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.heartbeat_interval):
                    await self.ctx.beat_now.wait()
            self.ctx.beat_now.clear()
            try:
                await self._heartbeat()
            except errors.UnknownNode:
                logger.warning("mgmtd does not know this node; registering again")
                with contextlib.suppress(errors.Py3fsError):
                    await self._register()
            except errors.Py3fsError as exc:
                lapsed = (
                    "; lease lapsed, not serving" if not self.ctx.lease_ok() else ""
                )
                logger.warning("heartbeat failed: %s%s", exc, lapsed)

    async def _heartbeat(self) -> None:
        """One heartbeat; on success the lease runs to half of mgmtd's timeout
        after the moment it was sent (mgmtd cannot have declared us dead before)."""
        sent = time.monotonic()
        req = HeartbeatReq(
            node_id=self.cfg.node_id,
            role="storage",
            address=self.address,
            targets=await self.ctx.reports(),
            pid=os.getpid(),
        )
        for report in req.targets:
            metrics.STORAGE_CHUNKS.labels(report.target_id).set(report.chunk_count)
            metrics.STORAGE_USED.labels(report.target_id).set(report.used_bytes)
        reply = await self.mgmt.heartbeat(req)
        known = self.ctx.routing.version if self.ctx.routing else 0
        if reply.routing_version > known:
            await self.ctx.refresh_routing()
        if reply.heartbeat_timeout > 0:
            if not self.ctx.lease_ok():
                logger.info("lease from mgmtd (re)gained: serving")
            self.ctx.lease_until = sent + reply.heartbeat_timeout / 2

    # -- data plane

    def _authorize(self, body: wire.Body) -> None:
        """Refuse what the sender may not do: client reads and writes need a
        capability from meta for the chunk's inode; forwards, repairs, resync,
        removes and chunk inspection need a node signature (py3fs.caps)."""
        keys = self.keys
        if keys is None:
            return
        if isinstance(body, wire.WriteReq):
            if body.update_ver == 0 and not body.repair:
                inode, index = ids.split_chunk_id(body.chunk_id)
                keys.check(body.cap, inode, write=True, chunk=index)
            else:
                keys.verify(body)
        elif isinstance(body, wire.ReadReq):
            if body.auth:
                keys.verify(body)
                return
            _check_read_caps(keys, body)
        elif isinstance(
            body,
            wire.RemoveReq
            | wire.SyncChunkReq
            | wire.SyncDoneReq
            | wire.QueryChunkReq
            | wire.ListChunksReq
            | wire.TargetStatsReq,
        ):
            # Chunk inspection too: which inodes a target holds, with their
            # lengths and checksums, is for services and admin tools only.
            keys.verify(body)

    async def _read_fd(self, body: wire.ReadFdReq, conn: ServerConn) -> None:
        """A same-host read: the data file instead of the bytes (local_read)."""
        if not conn.local:
            raise errors.InvalidArgument("READ_FD is served only over the Unix socket")
        self._authorize(wire.ReadReq([body.io], caps=[body.cap] if body.cap else []))
        reply, fd = await read_fd(self.reads, body)
        if fd < 0:
            await conn.reply(M.READ_FD_REPLY, reply)
            return
        try:
            await conn.reply_fd(M.READ_FD_REPLY, reply, fd)
        finally:
            os.close(fd)
        _LOCAL_BYTES.inc(reply.length)

    async def _handle(self, frame: wire.Frame, conn: ServerConn) -> None:
        body = frame.body
        if isinstance(body, wire.WriteReq):
            # Refused before its payload is allocated or received.
            self._authorize(body)
            payload = await conn.read_payload()
            await conn.reply(M.WRITE_REPLY, await self.writes.write(body, payload))
            metrics.STORAGE_BYTES.labels("write").inc(len(payload))
        elif isinstance(body, wire.ReadReq):
            self._authorize(body)
            reply, views = await self.reads.read(body)
            await conn.reply(M.READ_REPLY, reply, views)
            _READ_BYTES.inc(sum(len(v) for v in views))
        elif isinstance(body, wire.ReadFdReq):
            await self._read_fd(body, conn)
        elif isinstance(body, wire.RemoveReq):
            self._authorize(body)
            await conn.reply(M.REMOVE_REPLY, await self.writes.remove(body))
        elif isinstance(body, wire.QueryChunkReq):
            self._authorize(body)
            await conn.reply(M.QUERY_CHUNK_REPLY, self.reads.query(body))
        elif isinstance(body, wire.ListChunksReq):
            self._authorize(body)
            await conn.reply(M.LIST_CHUNKS_REPLY, self.reads.list_chunks(body))
        elif isinstance(body, wire.SyncChunkReq):
            self._authorize(body)
            payload = await conn.read_payload()
            reply = await self.resync.sync_chunk(body, payload)
            await conn.reply(M.SYNC_CHUNK_REPLY, reply)
            metrics.STORAGE_BYTES.labels("resync").inc(len(payload))
        elif isinstance(body, wire.SyncDoneReq):
            self._authorize(body)
            await conn.reply(M.SYNC_DONE_REPLY, await self.resync.sync_done(body))
        elif isinstance(body, wire.FlushReq):
            flushed = await self.ctx.flush(body.target_ids)
            await conn.reply(M.FLUSH_REPLY, wire.FlushReply(chunks=flushed))
        elif isinstance(body, wire.TargetStatsReq):
            self._authorize(body)
            stats = await self.ctx.target_stats()
            await conn.reply(M.TARGET_STATS_REPLY, wire.TargetStatsReply(stats))
        elif frame.type == M.PING:
            await conn.reply(M.PONG, wire.Ping())
        else:
            raise errors.UnknownMessage(f"storage does not serve {frame.type.name}")
