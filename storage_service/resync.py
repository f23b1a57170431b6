"""Recovery of replicas: resync of a returning target, repair of a corrupt chunk.

Resync (3FS's recovery): when routing shows that the successor of one of our
serving targets is `syncing`, we are its predecessor and stream it our chunks.
Each pass lists the successor's chunks, then, under our chunk lock (so no write
of that chunk is in flight through us), sends every chunk whose version or
checksum differs as a full replace (SYNC_CHUNK) and removes the ones we do not
have. New writes keep flowing to the syncing target meanwhile (the write path
forwards them as full replaces). Passes repeat until one transfers nothing; then
SYNC_DONE lets the target report itself up to date, and mgmtd makes it serving.
A chain version change (another failure) cancels the job; the next routing
starts a new one if there is still a target to sync.

Repair: a target that finds a chunk failing its checksum fetches the chunk from
a serving peer (the tail first: it has the newest committed version) and
replaces its copy, under its chunk lock.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from py3fs import errors, metrics, wire
from py3fs.proto.messages import TargetState
from py3fs.routing import RoutingView
from storage_service.chunk_format import content_digest
from storage_service.chunk_store import MAX_CHUNK_SIZE
from storage_service.targets import StorageContext

logger = logging.getLogger(__name__)

_MAX_PASSES = 4
_RETRY_DELAY = 0.2  # s between failed attempts


class Resync:
    def __init__(self, ctx: StorageContext) -> None:
        self.ctx = ctx
        # (chain id, syncing target) -> (chain version, job)
        self._jobs: dict[tuple[int, int], tuple[int, asyncio.Task[None]]] = {}
        self._repairs: set[tuple[int, bytes]] = set()
        ctx.listeners.append(self.on_routing)

    def cancel_all(self) -> None:
        for _, task in self._jobs.values():
            task.cancel()
        self._jobs.clear()

    # ------------------------------------------------------------ predecessor

    def on_routing(self, routing: RoutingView) -> None:
        """Start (or restart, at a new chain version) a job for every syncing
        successor of one of our serving targets."""
        wanted: set[tuple[int, int]] = set()
        for target_id in self.ctx.stores:
            chain = self.ctx.chain_of(target_id)
            info = routing.targets.get(target_id)
            if chain is None or info is None or info.state != TargetState.SERVING:
                continue
            succ = routing.successor(chain.chain_id, target_id)
            if succ is None or routing.targets[succ].state != TargetState.SYNCING:
                continue
            key = (chain.chain_id, succ)
            wanted.add(key)
            job = self._jobs.get(key)
            if job is not None and job[0] == chain.version and not job[1].done():
                continue
            if job is not None:
                job[1].cancel()
            task = self.ctx.spawn(
                self._sync_loop(chain.chain_id, chain.version, target_id, succ)
            )
            self._jobs[key] = (chain.version, task)
        for key in list(self._jobs):
            if key not in wanted:
                self._jobs.pop(key)[1].cancel()

    async def _sync_loop(
        self, chain_id: int, chain_ver: int, local: int, remote: int
    ) -> None:
        delay = _RETRY_DELAY
        while True:
            try:
                await self._sync(chain_id, chain_ver, local, remote)
                return
            except errors.Py3fsError as exc:
                routing = self.ctx.routing
                if routing is None or routing.chain(chain_id).version != chain_ver:
                    return  # a newer routing started its own job if still needed
                logger.warning(
                    "resync of target %d from %d failed: %s; retrying in %.1fs",
                    remote,
                    local,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            # A source chunk that stays corrupt (no peer to repair it from) must
            # not turn this into a busy loop; the target stays out of reads.
            delay = min(delay * 2, 30.0)

    async def _sync(
        self, chain_id: int, chain_ver: int, local: int, remote: int
    ) -> None:
        ctx = self.ctx
        store = ctx.store(local)
        started = time.monotonic()
        logger.info(
            "resync of target %d from target %d (chain %d version %d) started",
            remote,
            local,
            chain_id,
            chain_ver,
        )
        sent = moved = removed = 0
        for _ in range(_MAX_PASSES):
            routing = self._current(chain_id, chain_ver)
            address = routing.target_address(remote)
            body, _ = await ctx.client.call(
                address, wire.MsgType.LIST_CHUNKS, wire.ListChunksReq(remote)
            )
            assert isinstance(body, wire.ListChunksReply)
            theirs = {m.chunk_id: m for m in body.chunks}
            ids = sorted({cid for cid, _ in store.list_chunks()} | set(theirs))
            transferred = 0
            for cid in ids:
                self._current(chain_id, chain_ver)
                async with ctx.locks.hold((local, cid)):
                    info = store.get(cid)
                    meta = theirs.get(cid)
                    req = wire.SyncChunkReq(
                        chain_id=chain_id,
                        chain_ver=chain_ver,
                        target_id=remote,
                        chunk_id=cid,
                    )
                    if info is None:
                        if meta is None:
                            continue
                        req = msgspec.structs.replace(req, remove=True)
                        await ctx.client.call(address, wire.MsgType.SYNC_CHUNK, req)
                        removed += 1
                        transferred += 1
                        continue
                    if meta is not None and (
                        meta.committed_ver,
                        meta.crc,
                        meta.length,
                    ) == (info.version, info.crc, info.length):
                        continue
                    try:
                        _, data = await store.read(cid, 0, info.length, verify=True)
                    except errors.ChecksumMismatch:
                        self.schedule_repair(local, cid)
                        raise
                    # The digest stands for the content; the receiver checks
                    # the payload itself against its CRC32C.
                    crc = await asyncio.to_thread(wire.crc32c, data)
                    req = msgspec.structs.replace(
                        req,
                        version=info.version,
                        crc=crc,
                        chunk_chain_ver=info.chain_ver,
                    )
                    await ctx.client.call(
                        address,
                        wire.MsgType.SYNC_CHUNK,
                        req,
                        [data],
                        timeout=ctx.cfg.forward_timeout,
                    )
                    moved += 1
                    sent += data.nbytes
                    transferred += 1
                    metrics.RESYNC_CHUNKS.labels(remote).inc()
            if not transferred:
                break
        await ctx.client.call(
            address,
            wire.MsgType.SYNC_DONE,
            wire.SyncDoneReq(chain_id=chain_id, chain_ver=chain_ver, target_id=remote),
        )
        took = max(time.monotonic() - started, 1e-6)
        logger.info(
            "resync of target %d done: %d chunks (%d bytes) sent, %d removed in "
            "%.2fs (%.1f MB/s)",
            remote,
            moved,
            sent,
            removed,
            took,
            sent / took / 1e6,
        )

    def _current(self, chain_id: int, chain_ver: int) -> RoutingView:
        routing = self.ctx.routing
        if routing is None or routing.chain(chain_id).version != chain_ver:
            raise errors.ChainVersionMismatch(
                f"chain {chain_id} moved past version {chain_ver}"
            )
        return routing

    # ------------------------------------------------------------ syncing target

    async def sync_chunk(
        self, req: wire.SyncChunkReq, payload: memoryview
    ) -> wire.SyncChunkReply:
        """Apply one chunk from our predecessor (we are the syncing target)."""
        self._check_syncing(
            await self.ctx.check_chain(req.chain_id, req.chain_ver), req.target_id
        )
        store = self.ctx.store(req.target_id)
        async with self.ctx.locks.hold((req.target_id, req.chunk_id)):
            if req.remove:
                await store.remove_chunk(req.chunk_id)
                return wire.SyncChunkReply(version=0)
            info = await store.write(
                req.chunk_id,
                0,
                payload,
                version=req.version,
                chunk_size=MAX_CHUNK_SIZE,
                chain_ver=req.chunk_chain_ver,
                full_replace=True,
                data_crc=req.crc,
            )
        return wire.SyncChunkReply(version=info.version)

    async def sync_done(self, req: wire.SyncDoneReq) -> wire.SyncDoneReply:
        self._check_syncing(
            await self.ctx.check_chain(req.chain_id, req.chain_ver), req.target_id
        )
        self.ctx.store(req.target_id)
        self.ctx.sync_done[req.target_id] = req.chain_ver
        logger.info(
            "target %d is up to date (chain version %d)", req.target_id, req.chain_ver
        )
        self.ctx.beat_now.set()
        return wire.SyncDoneReply()

    @staticmethod
    def _check_syncing(routing: RoutingView, target_id: int) -> None:
        info = routing.targets.get(target_id)
        if info is None or info.state != TargetState.SYNCING:
            raise errors.TargetNotServing(f"target {target_id} is not syncing")

    # ------------------------------------------------------------ repair

    def schedule_repair(self, target_id: int, chunk_id: bytes) -> None:
        """Replace our copy of a corrupt chunk with a peer's, in the background."""
        key = (target_id, chunk_id)
        if key in self._repairs:
            return
        self._repairs.add(key)
        self.ctx.spawn(self._repair(key))

    async def _repair(self, key: tuple[int, bytes]) -> None:
        target_id, chunk_id = key
        try:
            for attempt in range(30):
                try:
                    if await self._repair_once(target_id, chunk_id):
                        return
                except errors.Py3fsError as exc:
                    logger.warning(
                        "repair of chunk %s on target %d: %s",
                        chunk_id.hex(),
                        target_id,
                        exc,
                    )
                await asyncio.sleep(_RETRY_DELAY * min(attempt + 1, 5))
        finally:
            self._repairs.discard(key)

    async def _repair_once(self, target_id: int, chunk_id: bytes) -> bool:
        ctx = self.ctx
        chain = ctx.chain_of(target_id)
        routing = ctx.routing
        if chain is None or routing is None:
            return False
        peers = [t for t in routing.serving_targets(chain.chain_id) if t != target_id]
        if not peers:
            logger.warning("chunk %s: no replica to repair from", chunk_id.hex())
            return False
        peer = peers[-1]
        store = ctx.store(target_id)
        # Our lock keeps writes that pass through us from interleaving; the peer's
        # committed version is then the one we must hold.
        async with ctx.locks.hold((target_id, chunk_id)):
            io = wire.ReadIO(
                peer, chunk_id, 0, MAX_CHUNK_SIZE, chain.chain_id, chain.version
            )
            body, data = await ctx.client.call(
                routing.target_address(peer),
                wire.MsgType.READ,
                wire.ReadReq([io]),
                timeout=ctx.cfg.forward_timeout,
            )
            assert isinstance(body, wire.ReadReply)
            result = body.results[0]
            if result.code:
                raise errors.error_from_code(result.code, result.message)
            got = memoryview(data or b"")
            # What arrived must be what the peer holds (its chunk digest), not
            # merely what we received.
            if await asyncio.to_thread(content_digest, got) != result.crc:
                raise errors.ChecksumMismatch(
                    f"repair copy of chunk {chunk_id.hex()} from target {peer} "
                    "does not match the peer's checksum"
                )
            await store.write(
                chunk_id,
                0,
                got,
                version=result.chunk_ver,
                chunk_size=MAX_CHUNK_SIZE,
                chain_ver=chain.version,
                full_replace=True,
            )
        logger.info(
            "repaired chunk %s on target %d from target %d (version %d)",
            chunk_id.hex(),
            target_id,
            peer,
            result.chunk_ver,
        )
        return True
