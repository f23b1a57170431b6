"""Batch reads and chunk queries on this node's targets.

Each io of a READ is answered on its own (`ReadResult.code`), concurrently; data
goes back as one view per io, without joining them. A chunk with an update in
flight is served only if the chain's tail still has our committed version (CRAQ's
apportioned query); otherwise the io answers ChunkNotCommitted and the client
retries, at the tail.
"""

from __future__ import annotations

import asyncio
import logging

from chain_replication import craq
from py3fs import errors, wire
from storage_service.chunk_store import ChunkInfo, ChunkStore
from storage_service.resync import Resync
from storage_service.targets import StorageContext

logger = logging.getLogger(__name__)
_EMPTY = memoryview(b"")


def chunk_meta(chunk_id: bytes, info: ChunkInfo | None, pending: int) -> wire.ChunkMeta:
    """Metadata of a chunk; a missing chunk reads as version 0, length 0."""
    if info is None:
        return wire.ChunkMeta(chunk_id, 0, pending, 0, 0, 0)
    return wire.ChunkMeta(
        chunk_id, info.version, pending, info.length, info.crc, info.chain_ver
    )


class ReadPath:
    def __init__(self, ctx: StorageContext, resync: Resync) -> None:
        self.ctx = ctx
        self.resync = resync

    async def read(self, req: wire.ReadReq) -> tuple[wire.ReadReply, list[memoryview]]:
        """Answer every io; raises FrameTooLarge, before reading or allocating
        anything, if the ios ask for more than MAX_READ_BYTES together."""
        asked = sum(max(min(io.length, wire.MAX_READ_BYTES), 0) for io in req.ios)
        if asked > wire.MAX_READ_BYTES:
            raise errors.FrameTooLarge(
                f"read of {asked} bytes over {wire.MAX_READ_BYTES} in one request"
            )
        if len(req.ios) == 1:  # the common case: no tasks to schedule
            done = [await self._one(req.ios[0], req.verify)]
        else:
            done = await asyncio.gather(*(self._one(io, req.verify) for io in req.ios))
        results = [r for r, _ in done]
        return wire.ReadReply(results=results), [v for _, v in done if v.nbytes]

    async def _one(
        self, io: wire.ReadIO, verify: bool
    ) -> tuple[wire.ReadResult, memoryview]:
        try:
            store = await self.admit(io)
            got, view = await store.read(io.chunk_id, io.offset, io.length, verify)
            whole = io.offset == 0 and view.nbytes == got.length
            crc = got.crc if whole else 0
            return wire.ReadResult(0, view.nbytes, got.version, crc=crc), view
        except errors.Py3fsError as exc:
            if isinstance(exc, errors.ChecksumMismatch):
                logger.error("target %d: %s; repairing", io.target_id, exc)
                if io.target_id in self.ctx.stores:
                    self.resync.schedule_repair(io.target_id, io.chunk_id)
            return wire.ReadResult(exc.code, 0, 0, exc.message), _EMPTY
        except Exception as exc:
            logger.exception("read of %s failed", io.chunk_id.hex())
            return wire.ReadResult(errors.Py3fsError.code, 0, 0, str(exc)), _EMPTY

    async def admit(self, io: wire.ReadIO) -> ChunkStore:
        """The store of `io`'s target, once CRAQ lets it answer: the target
        serves the chain at the version asked, and the chunk has no update in
        flight (or the tail still holds our committed version)."""
        store = self.ctx.store(io.target_id)
        if io.chain_id:
            routing = await self.ctx.check_chain(io.chain_id, io.chain_ver)
            if io.target_id not in routing.serving_targets(io.chain_id):
                raise errors.TargetNotServing(f"target {io.target_id} not serving")
        info = store.get(io.chunk_id)
        committed = info.version if info else 0
        pending = store.pending_version(io.chunk_id)
        if pending > committed and not await self._clean_enough(io, committed):
            raise errors.ChunkNotCommitted(
                f"chunk {io.chunk_id.hex()} has version {pending} in flight"
            )
        return store

    async def _clean_enough(self, io: wire.ReadIO, committed: int) -> bool:
        """Ask the tail whether our committed version is still the latest one."""
        chain = self.ctx.chain_of(io.target_id)
        routing = self.ctx.routing
        if chain is None or routing is None:
            return False
        serving = routing.serving_targets(chain.chain_id)
        if not serving:
            return False
        tail = serving[-1]
        if tail == io.target_id:
            return craq.read_decision(committed, committed + 1, True, None)
        try:
            meta, _ = await self.ctx.client.call(
                routing.target_address(tail),
                wire.MsgType.QUERY_CHUNK,
                wire.QueryChunkReq(target_id=tail, chunk_id=io.chunk_id),
                timeout=5.0,
            )
        except errors.Py3fsError as exc:
            logger.debug("tail query for %s failed: %s", io.chunk_id.hex(), exc)
            return False
        assert isinstance(meta, wire.ChunkMeta)
        if meta.pending_ver > committed:
            # The tail may be mid-commit: its new file can already be read there
            # while its committed version (cached) still says ours.
            return False
        return craq.read_decision(committed, committed + 1, False, meta.committed_ver)

    def query(self, req: wire.QueryChunkReq) -> wire.ChunkMeta:
        store = self.ctx.store(req.target_id)
        return chunk_meta(
            req.chunk_id, store.get(req.chunk_id), store.pending_version(req.chunk_id)
        )

    def list_chunks(self, req: wire.ListChunksReq) -> wire.ListChunksReply:
        store = self.ctx.store(req.target_id)
        return wire.ListChunksReply(
            chunks=[
                chunk_meta(cid, info, store.pending_version(cid))
                for cid, info in store.list_chunks(req.inode)
            ]
        )
