"""Removal of unlinked files' chunks: the GC queue (keys.gc_key) and its worker.

An unlinked file keeps its inode record (nlink 0, with its layout) until storage
has removed its chunks. Entries are due at a time; a worker claims due entries in
one transaction (several meta processes may race; the KV conflict lets one win)
and re-queues each claimed inode `retry_interval` later as a lease, so if this
meta dies mid-removal another picks the inode up. After every chain of the layout
removed the chunks, the lease entry and the inode record go away together.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable

from meta_service import idempotency, inodes, sessions
from py3fs import errors, metrics, wire
from py3fs.dataplane import DataClient
from py3fs.kv import keys
from py3fs.kv.base import Database, Transaction
from py3fs.proto.messages import Inode, InodeType
from py3fs.routing import RoutingView

logger = logging.getLogger(__name__)
IDEMPOTENCY_SWEEP = 500
PARALLEL = 32  # REMOVE requests one GC pass has in flight at once
REMOVE_BATCH = 128  # inodes per REMOVE request (its body stays far below MAX_BODY)


def enqueue(tr: Transaction, inode: int, due_ms: int) -> None:
    tr.set(keys.gc_key(due_ms, inode), b"")


_ALL_MS = 2**63 - 2  # a due time later than any entry's
_COUNT_LIMIT = 10_000


def claim(tr: Transaction, now_ms: int, limit: int, lease_ms: int) -> list[Inode]:
    """Take up to `limit` due entries; each one still removable is re-queued at
    `lease_ms` and returned. Entries whose inode is gone, relinked or open for
    writing are dropped (the last close queues the file again)."""
    out = []
    for key, _ in tr.get_range(*keys.gc_range(now_ms), limit=limit):
        tr.clear(key)
        ino = keys.gc_inode(key)
        node = inodes.load(tr, ino)
        if node is None or node.type != InodeType.FILE or node.nlink > 0:
            continue
        if sessions.any_open(tr, ino):
            continue
        enqueue(tr, ino, lease_ms)
        out.append(node)
    return out


def finish(tr: Transaction, done: list[int], lease_ms: int) -> None:
    """The chunks of the `done` inodes are gone: drop their leases and records."""
    for inode in done:
        tr.clear(keys.gc_key(lease_ms, inode))
        node = inodes.load(tr, inode)
        if node is not None and node.nlink == 0:
            inodes.delete(tr, inode)


class GcWorker:
    def __init__(
        self,
        db: Database,
        routing: Callable[[], RoutingView | None],
        data: DataClient,
        *,
        client_id: str,
        interval: float = 1.0,
        poll: float = 0.1,
        batch: int = 64,
        retry_interval: float = 30.0,
        idempotency_ttl: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._routing = routing
        self._data = data
        self._client_id = client_id
        self._interval = interval
        self._poll = min(poll, interval)
        self._batch = batch
        self._retry_ms = int(retry_interval * 1000)
        self._ttl = idempotency_ttl
        self._clock = clock
        # Storage deduplicates by (client_id, request_id); start from the clock
        # so a restarted meta does not reuse ids.
        self._request_ids = itertools.count(int(clock() * 1_000_000))
        self._sweep_from: bytes | None = None
        self._last_claimed = 0

    async def run(self) -> None:
        """Until cancelled: a full pass (`run_once`) every `interval` seconds;
        between them, every `poll` seconds, only the removal of due files (one
        small read when none are due), at once again after a full batch. So
        removal starts within `poll` of an unlink and keeps up with unlink
        rates, while the bookkeeping (queue length, idempotency sweep) stays
        at once per `interval`."""
        last_full = -math.inf
        while True:
            full = False
            try:
                now = time.monotonic()
                if now - last_full >= self._interval:
                    last_full = now
                    await self.run_once()
                else:
                    await self._remove_due(only_if_due=True)
                full = self._last_claimed >= self._batch
            except errors.Py3fsError as exc:
                logger.warning("gc pass failed: %s", exc)
            except Exception:
                # A bad record must not stop GC for the life of the process.
                logger.exception("gc pass failed unexpectedly")
            await asyncio.sleep(0 if full else self._poll)

    async def _remove_due(self, only_if_due: bool = False) -> int:
        """Claim a batch of due files, remove their chunks, finish them.
        Returns the number of files whose removal finished. With
        `only_if_due`, first look for a due entry in a read-only transaction,
        so an empty queue costs no write lock."""
        now_ms = int(self._clock() * 1000)
        lease_ms = now_ms + self._retry_ms
        self._last_claimed = 0
        if only_if_due:
            due = await self._db.arun(
                lambda tr: tr.get_range(*keys.gc_range(now_ms), limit=1),
                read_only=True,
            )
            if not due:
                return 0
        claimed = await self._db.arun(
            lambda tr: claim(tr, now_ms, self._batch, lease_ms)
        )
        self._last_claimed = len(claimed)
        # A batch's files are removed with one REMOVE per chain (each walks
        # the chain once), chains concurrently, and finished in one transaction.
        failed = await self._remove_chunks(claimed)
        done = [node.inode for node in claimed if node.inode not in failed]
        if done:
            await self._db.arun(functools.partial(finish, done=done, lease_ms=lease_ms))
        return len(done)

    async def run_once(self) -> int:
        """One full pass: remove due files' chunks, count the queue, expire a
        slice of idempotency records. Returns the number of files whose
        removal finished."""
        done = await self._remove_due()
        # The queue length for /metrics, counted up to a bound: a pass must stay
        # cheap however far behind GC is.
        queued = await self._db.arun(
            lambda tr: len(tr.get_range(*keys.gc_range(_ALL_MS), limit=_COUNT_LIMIT)),
            read_only=True,
        )
        metrics.GC_QUEUE.set(queued)
        cutoff = self._clock() - self._ttl
        start = self._sweep_from
        _cleared, self._sweep_from = await self._db.arun(
            lambda tr: idempotency.expire(tr, cutoff, start, IDEMPOTENCY_SWEEP)
        )
        return done

    async def _remove_chunks(self, nodes: list[Inode]) -> set[int]:
        """Ask the head of every chain used by `nodes` to remove their chunks,
        in pieces of at most REMOVE_BATCH inodes per request. Returns the
        inodes to retry later: all when routing is missing, else those on a
        chain whose request failed."""
        by_chain: dict[int, list[int]] = {}
        for node in nodes:
            if node.layout is not None:
                for chain_id in set(node.layout.chains):
                    by_chain.setdefault(chain_id, []).append(node.inode)
        if not by_chain:
            return set()
        view = self._routing()
        if view is None:
            return {i for inodes in by_chain.values() for i in inodes}
        failed: set[int] = set()
        sem = asyncio.Semaphore(PARALLEL)

        async def remove_on(chain_id: int, inodes: list[int]) -> None:
            async with sem:
                try:
                    head = view.head(chain_id)
                    req = wire.RemoveReq(
                        chain_id=chain_id,
                        chain_ver=view.chain(chain_id).version,
                        target_id=head,
                        inodes=inodes,
                        client_id=self._client_id,
                        request_id=next(self._request_ids),
                    )
                    await self._data.call(
                        view.target_address(head),
                        wire.MsgType.REMOVE,
                        req,
                        timeout=30.0,
                    )
                except errors.Py3fsError as exc:
                    logger.info(
                        "gc of %d inodes on chain %d postponed: %s",
                        len(inodes),
                        chain_id,
                        exc,
                    )
                    failed.update(inodes)

        await asyncio.gather(
            *(
                remove_on(chain_id, inodes[i : i + REMOVE_BATCH])
                for chain_id, inodes in by_chain.items()
                for i in range(0, len(inodes), REMOVE_BATCH)
            )
        )
        logger.debug("gc removed chunks of %d inodes", len(nodes) - len(failed))
        return failed
