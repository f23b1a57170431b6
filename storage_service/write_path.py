"""CRAQ writes and removes on this node's targets: the I/O around the replica
state machine of `chain_replication.replica`, which makes every decision.

The head (a request with `update_ver` 0) locks the chunk, gets the next version
from the state machine, stages the new content while forwarding the update to its
successor, and commits once the successor acks; every other target does the same
with the version it was given, and the tail commits straight away.

If a forward fails or an ack shows the successor holding different content, the
state machine marks the chunk dirty and the head's next update goes down the
chain as a full-chunk replace under a version no one has used. Every target
remembers the reply to each (client, request, chunk) it applied, so a retry at a
new head after a failover is answered, not applied again. A successor that is
`syncing` gets every update as a full replace.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from chain_replication import craq
from chain_replication.replica import ReplicaState
from py3fs import errors, wire
from py3fs.proto.messages import TargetState
from py3fs.routing import RoutingView
from storage_service.chunk_store import MAX_CHUNK_SIZE, ChunkInfo, ChunkStore, Staged
from storage_service.resync import Resync
from storage_service.targets import StorageContext

logger = logging.getLogger(__name__)

_Key = tuple[int, bytes]  # (target id, chunk id)


class _Diverged(Exception):
    def __init__(self, reason: str, ack_ver: int) -> None:
        super().__init__(reason)
        self.ack_ver = ack_ver


def _reply(info: ChunkInfo | None) -> wire.WriteReply:
    if info is None:
        return wire.WriteReply(chunk_ver=0, length=0, crc=0)
    return wire.WriteReply(chunk_ver=info.version, length=info.length, crc=info.crc)


def _validate(req: wire.WriteReq, n: int) -> None:
    if not 0 < req.chunk_size <= MAX_CHUNK_SIZE:
        raise errors.ChunkTooLarge(
            f"chunk size {req.chunk_size} not in 1..{MAX_CHUNK_SIZE}"
        )
    if req.offset < 0 or req.offset + n > req.chunk_size:
        raise errors.ChunkTooLarge(
            f"write [{req.offset}, {req.offset + n}) outside chunk of {req.chunk_size}"
        )


class WritePath:
    def __init__(self, ctx: StorageContext, resync: Resync) -> None:
        self.ctx = ctx
        self.resync = resync
        entries = ctx.cfg.dedup_entries if ctx is not None else 65536
        self.state: ReplicaState[wire.WriteReply] = ReplicaState(entries)

    # -- writes

    async def write(self, req: wire.WriteReq, payload: memoryview) -> wire.WriteReply:
        """Apply `req` on this target and the rest of the chain. `payload` must stay
        valid until this returns (the connection's buffer does: one request at a
        time). Raises ChainVersionMismatch/TargetNotServing (retryable) when routing
        disagrees, the successor's error when forwarding fails."""
        _validate(req, payload.nbytes)
        routing = await self.ctx.check_chain(req.chain_id, req.chain_ver)
        store = self.ctx.store(req.target_id)
        succ = routing.successor(req.chain_id, req.target_id)
        is_head = req.update_ver == 0
        if is_head and routing.head(req.chain_id) != req.target_id:
            raise errors.TargetNotServing(
                f"target {req.target_id} is not the head of chain {req.chain_id}"
            )
        dedup = (req.client_id, req.request_id, req.chunk_id)
        recall = is_head and bool(req.request_id)
        if recall and (hit := self.state.recall(req.target_id, dedup)) is not None:
            return hit
        async with self.ctx.locks.hold((req.target_id, req.chunk_id)):
            if recall and (hit := self.state.recall(req.target_id, dedup)) is not None:
                return hit
            if (
                is_head
                and req.full_replace
                and not payload.nbytes
                and store.get(req.chunk_id) is None
                and not store.pending_version(req.chunk_id)
            ):
                # Truncating a chunk that does not exist: nothing to empty. An
                # inflated length must not make one empty file per chunk slot.
                return wire.WriteReply(chunk_ver=0, length=0, crc=0)
            if is_head:
                reply = await self._head_write(store, routing, req, payload, succ)
            else:
                reply = await self._chain_write(store, routing, req, payload, succ)
            if req.request_id:
                # Remembered on every replica, consulted only as head (above).
                self.state.remember(dedup, reply, reply.chunk_ver)
        return reply

    async def _head_write(
        self,
        store: ChunkStore,
        routing: RoutingView,
        req: wire.WriteReq,
        payload: memoryview,
        succ: int | None,
    ) -> wire.WriteReply:
        key = (req.target_id, req.chunk_id)
        for _attempt in range(3):
            info = store.get(req.chunk_id)
            plan = self.state.head_plan(
                key, info.version if info else 0, succ is not None, req.full_replace
            )
            try:
                reply = await self._apply(
                    store,
                    routing,
                    req,
                    succ,
                    req.offset,
                    payload,
                    req.data_crc,
                    plan.version,
                    req.full_replace,
                    plan.whole,
                )
            except _Diverged as exc:
                logger.warning("chunk %s diverged: %s", req.chunk_id.hex(), exc)
                self.state.head_diverged(key, plan.version, exc.ack_ver)
                continue
            except BaseException:
                self.state.head_failed(key, forwarded=succ is not None)
                raise
            self.state.head_committed(key)
            return reply
        raise errors.ChunkNotCommitted(
            f"chunk {req.chunk_id.hex()}: replicas disagree; retry"
        )

    async def _whole_content(
        self, store: ChunkStore, chunk_id: bytes, offset: int, payload: memoryview
    ) -> bytearray:
        """Our committed data with `payload` applied: a full-replace body."""
        info = store.get(chunk_id)
        old: memoryview | bytes = b""
        if info is not None and info.length:
            _, old = await store.read(chunk_id, 0, info.length, verify=True)
        end = max(len(old), offset + payload.nbytes)
        whole = bytearray(end)
        whole[: len(old)] = old
        whole[offset : offset + payload.nbytes] = payload
        return whole

    async def _chain_write(
        self,
        store: ChunkStore,
        routing: RoutingView,
        req: wire.WriteReq,
        payload: memoryview,
        succ: int | None,
    ) -> wire.WriteReply:
        info = store.get(req.chunk_id)
        me = routing.targets.get(req.target_id)
        action = self.state.replica_plan(
            info.version if info else 0,
            req.update_ver,
            req.full_replace,
            syncing=me is not None and me.state == TargetState.SYNCING,
        ).action
        if action is craq.Action.ALREADY_DONE:
            if req.sync:
                # A retry of a sync write whose first try may have failed
                # before its fsync.
                await store.sync_chunk(req.chunk_id)
            return _reply(info)
        if action is craq.Action.MISSING_UPDATE:
            raise errors.TargetNotServing(
                f"target {req.target_id} chunk {req.chunk_id.hex()} at version "
                f"{info.version if info else 0} missed updates before {req.update_ver}"
            )
        try:
            return await self._apply(
                store,
                routing,
                req,
                succ,
                req.offset,
                payload,
                req.data_crc,
                req.update_ver,
                req.full_replace,
                req.repair,
            )
        except _Diverged as exc:
            # Only the head can pick a fresh version; make it retry.
            raise errors.ChunkNotCommitted(
                f"chunk {req.chunk_id.hex()} diverged below target "
                f"{req.target_id}: {exc}"
            ) from None

    async def _apply(
        self,
        store: ChunkStore,
        routing: RoutingView,
        req: wire.WriteReq,
        succ: int | None,
        offset: int,
        data: memoryview,
        crc: int,
        version: int,
        full: bool,
        repair: bool = False,
    ) -> wire.WriteReply:
        """Stage locally while the successor applies; commit when both are done."""
        if repair:
            self.state.will_rebuild((req.target_id, req.chunk_id), version)
        if succ is not None and self.state.forward_whole(
            full, repair, routing.targets[succ].state == TargetState.SYNCING
        ):
            # The client's checksum covers only its bytes: check them before
            # they are folded into a whole chunk with a checksum of our own,
            # or a corrupt payload would be accepted on every replica.
            if await asyncio.to_thread(wire.crc32c, data) != crc:
                raise errors.ChecksumMismatch(
                    f"write payload for chunk {req.chunk_id.hex()} fails its checksum"
                )
            whole = await self._whole_content(store, req.chunk_id, offset, data)
            offset, data, full = 0, memoryview(whole), True
            crc = await asyncio.to_thread(wire.crc32c, whole)
        stage = self._stage(store, req, offset, data, crc, version, full)
        if succ is None:
            return await self._commit(store, req, await stage)
        fwd = wire.WriteReq(
            chain_id=req.chain_id,
            chain_ver=req.chain_ver,
            target_id=succ,
            chunk_id=req.chunk_id,
            offset=offset,
            chunk_size=req.chunk_size,
            data_crc=crc,
            client_id=req.client_id,
            request_id=req.request_id,
            update_ver=version,
            full_replace=full,
            repair=repair,
            sync=req.sync,
            stream=req.stream,
        )
        # The forward goes first: a small stage runs on the loop without
        # yielding (FileChunkStore._inline), so it overlaps the successor's work
        # only if the request is out before it starts.
        acked, staged = await asyncio.gather(
            self._forward(routing, succ, wire.MsgType.WRITE, fwd, [data]),
            stage,
            return_exceptions=True,
        )
        if isinstance(staged, BaseException):
            raise staged
        if isinstance(acked, BaseException):
            await store.abort(staged)
            raise acked
        assert isinstance(acked, wire.WriteReply)
        check = self.state.check_ack(
            version,
            staged.info.crc,
            staged.info.length,
            (acked.chunk_ver, acked.crc, acked.length),
        )
        if not check.ok:
            await store.abort(staged)
            raise _Diverged(check.reason, acked.chunk_ver)
        return await self._commit(store, req, staged)

    @staticmethod
    async def _commit(
        store: ChunkStore, req: wire.WriteReq, staged: Staged
    ) -> wire.WriteReply:
        """Commit; with `req.sync`, put the chunk on disk before the ack (the
        successor did so before its ack: once the head answers, every replica
        has it on disk)."""
        info = await store.commit(staged)
        if req.sync:
            await store.sync_chunk(req.chunk_id)
        return _reply(info)

    async def _stage(
        self,
        store: ChunkStore,
        req: wire.WriteReq,
        offset: int,
        data: memoryview,
        crc: int,
        version: int,
        full: bool,
    ) -> Staged:
        try:
            return await store.stage(
                req.chunk_id,
                offset,
                data,
                version=version,
                chunk_size=req.chunk_size,
                chain_ver=req.chain_ver,
                full_replace=full,
                data_crc=crc,
                stream=req.stream,
            )
        except errors.ChecksumMismatch:
            # A good payload means our old data is what failed its checksum.
            if await asyncio.to_thread(wire.crc32c, data) == crc:
                self.resync.schedule_repair(req.target_id, req.chunk_id)
            raise

    async def _forward(
        self,
        routing: RoutingView,
        succ: int,
        mtype: wire.MsgType,
        body: wire.Body,
        payload: list[Any],
    ) -> wire.Body:
        reply, _ = await self.ctx.client.call(
            routing.target_address(succ),
            mtype,
            body,
            payload,
            timeout=self.ctx.cfg.forward_timeout,
        )
        return reply

    # -- removes

    async def remove(self, req: wire.RemoveReq) -> wire.RemoveReply:
        """Remove every chunk of each of `req.inodes` here and down the chain.
        Idempotent."""
        routing = await self.ctx.check_chain(req.chain_id, req.chain_ver)
        store = self.ctx.store(req.target_id)
        succ = routing.successor(req.chain_id, req.target_id)
        keys = [
            (req.target_id, cid)
            for inode in req.inodes
            for cid, _ in store.list_chunks(inode)
        ]
        async with self.ctx.locks.hold_all(keys):
            local = store.remove_inodes(req.inodes)
            if succ is None:
                return wire.RemoveReply(removed=await local)
            fwd = wire.RemoveReq(
                chain_id=req.chain_id,
                chain_ver=req.chain_ver,
                target_id=succ,
                inodes=req.inodes,
                client_id=req.client_id,
                request_id=req.request_id,
            )
            removed, _ = await asyncio.gather(
                local, self._forward(routing, succ, wire.MsgType.REMOVE, fwd, [])
            )
        self.state.removed(keys)
        return wire.RemoveReply(removed=removed)
