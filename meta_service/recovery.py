"""Ending the write sessions of clients that stopped renewing their lease.

A client that crashed (kill -9, a lost machine) leaves write sessions behind:
its file would keep a stale length (what was last reported) and, if unlinked,
its chunks forever. Every `interval` a meta looks for leased sessions whose
client lease ran out (`sessions.expired`), asks storage how long the file
really is (the last chunk on each chain of its layout, from the chain's
serving tail: committed data), and in one transaction per file gives it that
length (never less than the reported one), ends the session and, for an
unlinked file with no session left, queues it for GC. Several metas may do
this at once: the transaction re-checks that the session is still there and
still expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from meta_service import gc, inodes, sessions
from py3fs import errors, ids, wire
from py3fs.dataplane import DataClient
from py3fs.kv.base import Database, Transaction
from py3fs.proto.messages import Inode
from py3fs.routing import RoutingView

logger = logging.getLogger(__name__)


async def storage_length(
    node: Inode, view: RoutingView, data: DataClient, timeout: float = 10.0
) -> int:
    """The end of the furthest committed byte of `node` on storage."""
    if node.layout is None:
        return 0
    end = 0
    for chain_id in node.layout.chains:
        serving = view.serving_targets(chain_id)
        if not serving:
            raise errors.TargetNotServing(f"chain {chain_id} has no serving target")
        tail = serving[-1]
        body, _ = await data.call(
            view.target_address(tail),
            wire.MsgType.LIST_CHUNKS,
            wire.ListChunksReq(target_id=tail, inode=node.inode),
            timeout=timeout,
        )
        assert isinstance(body, wire.ListChunksReply)
        for meta in body.chunks:
            ino, index = ids.split_chunk_id(meta.chunk_id)
            if ino == node.inode and meta.length:
                end = max(end, index * node.layout.chunk_size + meta.length)
    return end


def _end_session(
    tr: Transaction, inode: int, session_id: str, length: int, now: float
) -> bool:
    if not sessions.is_expired(tr, inode, session_id, now):
        return False
    node = inodes.load(tr, inode)
    sessions.remove(tr, inode, session_id)
    if node is None:
        return True
    if length > node.length:
        stamp = int(now * 1e9)
        node = msgspec.structs.replace(node, length=length, mtime=stamp, ctime=stamp)
        inodes.store(tr, node)
    if node.nlink == 0 and not sessions.any_open(tr, inode):
        gc.enqueue(tr, inode, int(now * 1000))
    return True


class SessionReaper:
    def __init__(
        self,
        db: Database,
        routing: Callable[[], RoutingView | None],
        data: DataClient,
        *,
        interval: float = 1.0,
        batch: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._routing = routing
        self._data = data
        self._interval = interval
        self._batch = batch
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except errors.Py3fsError as exc:
                logger.warning("session recovery pass failed: %s", exc)
            except Exception:
                logger.exception("session recovery pass failed unexpectedly")
            await asyncio.sleep(self._interval)

    async def run_once(self) -> int:
        """One pass; returns the number of sessions ended."""
        now = self._clock()
        found = await self._db.arun(
            lambda tr: sessions.expired(tr, now, self._batch), read_only=True
        )
        if not found:
            return 0
        view = self._routing()
        if view is None:
            return 0
        ended = 0
        lengths: dict[int, int] = {}
        for inode, session_id in found:
            if inode not in lengths:
                node = await self._db.arun(
                    lambda tr, i=inode: inodes.load(tr, i),  # type: ignore[misc]
                    read_only=True,
                )
                try:
                    lengths[inode] = (
                        await storage_length(node, view, self._data) if node else 0
                    )
                except errors.Py3fsError as exc:
                    logger.info("length of inode %d not known yet: %s", inode, exc)
                    continue

            def end(tr: Transaction, i: int = inode, s: str = session_id) -> bool:
                return _end_session(tr, i, s, lengths[i], now)

            if await self._db.arun(end):
                logger.info(
                    "write session %s of inode %d expired: length %d from storage",
                    session_id,
                    inode,
                    lengths[inode],
                )
                ended += 1
        return ended
