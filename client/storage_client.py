"""Chunk I/O against storage chains: striped, parallel, retried.

Writes go to the chain head (CRAQ) and are retried with the same request id, so a
retry after a lost reply is not applied twice. Reads go to any serving replica:
each chunk to the one its id hashes to (`replica_for`), so reads spread over the
replicas chunk by chunk while every client reads a given chunk from the same one,
whose page cache then serves it (spread at random, each replica's cache would
hold the same data and three times as many reads would go to disk). A dirty
replica sends the read to the tail, a corrupt one to another replica, and a
chunk that does not exist reads as zeros (a hole).
Received data lands straight in the caller's buffer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple, TypeVar

from client.local_read import LOCAL_READ_MIN, read_local
from client.routing_cache import RoutingCache
from client.striping import Piece, pieces
from py3fs import caps, errors, ids, wire
from py3fs.dataplane import DataClient
from py3fs.proto.messages import Layout
from py3fs.retry import RetryPolicy
from py3fs.routing import RoutingView
from py3fs.tls import Tls

logger = logging.getLogger(__name__)
T = TypeVar("T")
# A sequential reader's reads of a chunk on this host have the disk read the
# chunk's next bytes, up to this many, while it works on the current ones
# (client.local_read).
DISK_READ_AHEAD = 4 << 20
_STREAMS_MAX = 1024  # chunks whose last read is remembered (`_ahead`)
_WARMING_MAX = 16  # `_warm` asks under way at once
# Asks meta for a capability: (inode, write) -> (capability, seconds valid).
CapSource = Callable[[int, bool], Awaitable[tuple[bytes, float]]]
# Batch reads: ios per READ frame (one frame per target and slice of a batch).
MAX_IOS_PER_FRAME = 256


class ReadItem(NamedTuple):
    """One read of a batch: `dest` is filled from `offset` of the file (the
    caller clamps it to EOF)."""

    inode: int
    layout: Layout
    offset: int
    dest: memoryview


class _Io(NamedTuple):
    item: int
    inode: int
    layout: Layout
    piece: Piece
    dest: memoryview


class StorageClient:
    def __init__(
        self,
        routing: RoutingCache,
        client_id: str,
        *,
        max_inflight: int = 32,
        retry_timeout: float = 60.0,
        call_timeout: float = 60.0,
        capability: CapSource | None = None,
        tool_keys: caps.Keys | None = None,
        tls: Tls | None = None,
    ) -> None:
        self._routing = routing
        # Signs the raw requests of admin tools (`call`), never reads or writes:
        # those go with a capability like any user's.
        self._tool_keys = tool_keys
        # Storage serves a client's read or write only with meta's capability
        # for the inode (py3fs.caps); cached until a minute before it expires.
        self.capability = capability
        self._caps: dict[tuple[int, bool], tuple[float, bytes]] = {}
        self._client_id = client_id
        self._data = DataClient(max_idle_per_peer=max_inflight, tls=tls)
        self._sem = asyncio.Semaphore(max_inflight)
        self._ids = itertools.count(1)
        self._retry = RetryPolicy(initial=0.01, maximum=0.2, timeout=retry_timeout)
        self._call_timeout = call_timeout
        # (inode, chunk index) -> where the last large read of it ended: a
        # read that continues one is part of a sequential stream (`_ahead`).
        self._ends: OrderedDict[tuple[int, int], int] = OrderedDict()
        # Chunks whose disk read-ahead was asked for (`_warm`), and those asks
        # under way.
        self._warmed: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._warming: set[asyncio.Task[None]] = set()

    def _ahead(self, inode: int, layout: Layout, p: Piece) -> int:
        """How much of the chunk after piece `p` the disk should read ahead
        (0: none): a read that continues an earlier one of the same chunk, or
        the first read of a chunk after the one before it was read to its
        end, is sequential, and the rest of the chunk will be read next."""
        key = (inode, p.index)
        prev = self._ends.pop(key, None)
        seq = (p.chunk_offset > 0 and prev == p.chunk_offset) or (
            p.chunk_offset == 0
            and self._ends.get((inode, p.index - 1)) == layout.chunk_size
        )
        self._ends[key] = p.chunk_offset + p.length
        if len(self._ends) > _STREAMS_MAX:
            self._ends.popitem(last=False)
        return DISK_READ_AHEAD if seq else 0

    def _warm_next(self, inode: int, layout: Layout, index: int) -> None:
        key = (inode, index)
        if key in self._warmed or len(self._warming) >= _WARMING_MAX:
            return
        self._warmed[key] = None
        if len(self._warmed) > _STREAMS_MAX:
            self._warmed.popitem(last=False)
        task = asyncio.ensure_future(self._warm(inode, layout, index))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, inode: int, layout: Layout, index: int) -> None:
        """Have the replica that reads of chunk `index` go to (on this host)
        read its first DISK_READ_AHEAD bytes from disk into the page cache: a
        READ_FD (the checks of a read) whose file is only advised, not read.
        A hint: any failure (no such chunk past the end of the file, a node
        elsewhere) is ignored."""
        try:
            size = min(DISK_READ_AHEAD, layout.chunk_size)
            p = next(iter(pieces(layout, index * layout.chunk_size, size)))
            view = await self._routing.get()
            targets = view.serving_targets(p.chain_id)
            if not targets:
                return
            target = targets[replica_for(inode, index) % len(targets)]
            io = wire.ReadIO(
                target_id=target,
                chunk_id=ids.chunk_id(inode, index),
                offset=p.chunk_offset,
                length=p.length,
                chain_id=p.chain_id,
                chain_ver=view.chain(p.chain_id).version,
            )
            got = await self._data.call_fd(
                view.target_address(target),
                wire.ReadFdReq(io=io, cap=await self.cap(inode, False)),
                timeout=self._call_timeout,
            )
            if got is None or got[1] is None:
                return
            fd = got[1]
            try:
                await asyncio.to_thread(
                    os.posix_fadvise,
                    fd,
                    io.offset,
                    got[0].length,
                    os.POSIX_FADV_WILLNEED,
                )
            finally:
                os.close(fd)
        except (errors.Py3fsError, OSError, StopIteration):
            pass

    async def _retrying(
        self, what: str, attempt: Callable[[RoutingView, int], Awaitable[T]]
    ) -> T:
        """Run `attempt(routing, try_number)` until it succeeds or fails for good.
        Retryable errors refresh routing and back off."""
        view = await self._routing.get()

        async def refresh(exc: BaseException, n: int) -> None:
            nonlocal view
            try:
                view = await self._routing.refresh(view)
            except errors.Py3fsError as err:
                # mgmtd failing over (NotPrimary, unreachable) must not fail
                # the I/O: keep the old view and retry until the deadline.
                if not err.retryable:
                    raise
                logger.debug("%s: routing refresh failed: %s", what, err)

        return await self._retry.acall(
            lambda n: attempt(view, n), what=what, on_retry=refresh
        )

    async def cap(self, inode: int, write: bool) -> bytes:
        """A capability for `inode` (b"" when there is no source: tests, or
        a cluster without a secret, whose storage checks nothing)."""
        if self.capability is None:
            return b""
        now = time.monotonic()
        hit = self._caps.get((inode, write))
        if hit is None and not write:
            hit = self._caps.get((inode, True))  # a write cap also reads
        if hit is not None and hit[0] > now:
            return hit[1]
        raw, ttl = await self.capability(inode, write)
        self.remember_cap(inode, write, raw, ttl)
        return raw

    def remember_cap(self, inode: int, write: bool, raw: bytes, ttl: float) -> None:
        """Keep a capability that came with an open (OpenReply.cap)."""
        if raw:
            now = time.monotonic()
            if len(self._caps) > 65536:
                self._caps.clear()
            self._caps[(inode, write)] = (now + max(ttl - 60.0, ttl / 2), raw)

    def _expired(self, inode: int) -> None:
        self._caps.pop((inode, False), None)
        self._caps.pop((inode, True), None)

    # ------------------------------------------------------------------ writes

    async def write(
        self,
        inode: int,
        layout: Layout,
        offset: int,
        data: memoryview,
        *,
        sync: bool = False,
        stream: bool = False,
    ) -> None:
        """Write `data` at `offset` of the file; returns when every replica has
        it (with `sync`: on disk; `stream`: see wire.WriteReq.stream)."""
        await _gather(
            self._write_piece(
                inode,
                layout,
                p,
                data[p.buf_offset : p.buf_offset + p.length],
                sync=sync,
                stream=stream,
            )
            for p in pieces(layout, offset, data.nbytes)
        )

    async def truncate(
        self, inode: int, layout: Layout, length: int, old_length: int
    ) -> None:
        """Drop the file's bytes in [length, old_length) so that extending the file
        later reads zeros there: the chunk holding `length` is replaced by its
        head, later chunks by empty ones (a full replace of each, no data moved)."""
        if old_length <= length:
            return
        size = layout.chunk_size
        first, inner = divmod(length, size)
        last = (old_length - 1) // size
        head = bytearray(inner)
        if inner:
            await self.read(inode, layout, first * size, memoryview(head))
        await _gather(
            self._write_piece(
                inode,
                layout,
                Piece(i, layout.chains[i % len(layout.chains)], 0, 0, 0),
                memoryview(head if i == first else b""),
                full_replace=True,
            )
            for i in range(first, last + 1)
        )

    async def _write_piece(
        self,
        inode: int,
        layout: Layout,
        p: Piece,
        data: memoryview,
        *,
        full_replace: bool = False,
        sync: bool = False,
        stream: bool = False,
    ) -> None:
        request_id = next(self._ids)
        crc = wire.crc32c(data)
        cid = ids.chunk_id(inode, p.index)

        async def attempt(view: RoutingView, _n: int) -> None:
            chain = view.chain(p.chain_id)
            head = view.head(p.chain_id)
            cap = await self.cap(inode, True)
            req = wire.WriteReq(
                chain_id=p.chain_id,
                chain_ver=chain.version,
                target_id=head,
                chunk_id=cid,
                offset=p.chunk_offset,
                chunk_size=layout.chunk_size,
                data_crc=crc,
                client_id=self._client_id,
                request_id=request_id,
                full_replace=full_replace,
                cap=cap,
                sync=sync,
                stream=stream,
            )
            try:
                await self._data.call(
                    view.target_address(head),
                    wire.MsgType.WRITE,
                    req,
                    [data],
                    timeout=self._call_timeout,
                )
            except errors.CapabilityExpired:
                self._expired(inode)
                raise

        async with self._sem:
            await self._retrying(f"write chunk {p.index} of {inode}", attempt)

    # ------------------------------------------------------------------- reads

    async def read(
        self, inode: int, layout: Layout, offset: int, dest: memoryview
    ) -> int:
        """Fill `dest` with the file's bytes from `offset` (the caller clamps to the
        file length; holes and short chunks read as zeros). Returns how many
        chunks were missing: holes, or chunks of a removed file (callers tell
        the two apart by asking meta)."""
        holes: list[int] = []
        await _gather(
            self._read_piece(
                inode, layout, p, dest[p.buf_offset : p.buf_offset + p.length], holes
            )
            for p in pieces(layout, offset, dest.nbytes)
        )
        return len(holes)

    async def _read_piece(
        self, inode: int, layout: Layout, p: Piece, dest: memoryview, holes: list[int]
    ) -> None:
        cid = ids.chunk_id(inode, p.index)
        avoid: set[int] = set()
        tail_only = False
        start = replica_for(inode, p.index)
        ahead = self._ahead(inode, layout, p) if p.length >= LOCAL_READ_MIN else 0
        on_disk: Callable[[], None] | None = None
        if ahead and p.chunk_offset + p.length < layout.chunk_size:
            # A stream of partial reads of the chunk (a whole-chunk reader has
            # its own read-ahead) that reads from disk: the next chunk's
            # start, on another chain, is read from disk while this one is
            # read. A stream that finds its bytes in the page cache asks
            # nothing; one whose chunks are warmed here keeps warming.
            on_disk = partial(self._warm_next, inode, layout, p.index + 1)
            if (inode, p.index) in self._warmed:
                on_disk()
                on_disk = None

        def sink(frame: wire.Frame) -> Sequence[memoryview]:
            body = frame.body
            assert isinstance(body, wire.ReadReply)
            got = body.results[0].length if body.results else 0
            if got > dest.nbytes or got != frame.payload_len:
                raise errors.BadFrame(
                    f"read reply carries {frame.payload_len} bytes for {got} asked"
                )
            return [dest[:got]]

        async def attempt(view: RoutingView, _n: int) -> None:
            nonlocal tail_only
            chain = view.chain(p.chain_id)
            targets = view.serving_targets(p.chain_id)
            if not targets:
                raise errors.TargetNotServing(
                    f"chain {p.chain_id} has no serving target"
                )
            choices = [t for t in targets if t not in avoid] or targets
            target = choices[-1] if tail_only else choices[start % len(choices)]
            io = wire.ReadIO(
                target_id=target,
                chunk_id=cid,
                offset=p.chunk_offset,
                length=p.length,
                chain_id=p.chain_id,
                chain_ver=chain.version,
            )
            cap = await self.cap(inode, False)
            if p.length >= LOCAL_READ_MIN:
                try:
                    got = await read_local(
                        self._data,
                        view.target_address(target),
                        io,
                        cap,
                        dest,
                        timeout=self._call_timeout,
                        ahead=ahead,
                        on_disk=on_disk,
                    )
                except errors.ChunkNotFound:
                    dest[:] = bytes(dest.nbytes)
                    holes.append(p.index)
                    return
                except errors.Py3fsError as err:
                    if isinstance(err, errors.CapabilityExpired):
                        self._expired(inode)
                        raise
                    if isinstance(err, errors.ChunkNotCommitted):
                        tail_only = True
                    elif isinstance(err, errors.ChecksumMismatch):
                        avoid.add(target)
                    if err.retryable:
                        raise
                    got = None  # anything else (a store without files): READ
                if got is not None:
                    if got < dest.nbytes:
                        dest[got:] = bytes(dest.nbytes - got)
                    return
            try:
                body, _ = await self._data.call(
                    view.target_address(target),
                    wire.MsgType.READ,
                    wire.ReadReq([io], caps=[cap] if cap else []),
                    sink=sink,
                    timeout=self._call_timeout,
                )
            except errors.CapabilityExpired:
                self._expired(inode)
                raise
            assert isinstance(body, wire.ReadReply)
            if len(body.results) != 1:
                raise errors.BadFrame(f"{len(body.results)} results for one read")
            result = body.results[0]
            if result.code == 0:
                dest[result.length :] = bytes(dest.nbytes - result.length)
                return
            exc = errors.error_from_code(result.code, result.message)
            if isinstance(exc, errors.ChunkNotFound):
                dest[:] = bytes(dest.nbytes)
                holes.append(p.index)
                return
            if isinstance(exc, errors.ChunkNotCommitted):
                tail_only = True
            elif isinstance(exc, errors.ChecksumMismatch):
                avoid.add(target)
            raise exc

        async with self._sem:
            await self._retrying(f"read chunk {p.index} of {inode}", attempt)

    async def read_batch(self, items: Sequence[ReadItem]) -> list[BaseException | None]:
        """Many small reads as one READ frame per storage target (a round trip
        per io would dominate thousands of 4 KiB random reads). Fills every
        item's `dest`; returns, per item, None or the error that failed it (holes
        read as zeros). What the grouped frames cannot finish (a dirty or corrupt
        replica, a lost connection, stale routing) goes through `_read_piece` and
        its retries."""
        ios = [
            _Io(
                i,
                it.inode,
                it.layout,
                p,
                it.dest[p.buf_offset : p.buf_offset + p.length],
            )
            for i, it in enumerate(items)
            for p in pieces(it.layout, it.offset, it.dest.nbytes)
        ]
        view = await self._routing.get()
        groups: dict[int, list[_Io]] = {}
        slow: list[_Io] = []
        # Big pieces on a node of this host are read from its data file
        # (`_read_piece` tries that first), not carried in a frame.
        big: list[_Io] = []
        for io in ios:
            if io.piece.length >= LOCAL_READ_MIN and self._data.local:
                big.append(io)
                continue
            targets = view.serving_targets(io.piece.chain_id)
            if not targets:
                slow.append(io)
                continue
            pick = replica_for(io.inode, io.piece.index) % len(targets)
            groups.setdefault(targets[pick], []).append(io)
        failed: list[BaseException | None] = [None] * len(items)

        async def one_frame(target: int, group: list[_Io]) -> None:
            async with self._sem:
                slow.extend(await self._send_batch(view, target, group))

        async def retry(io: _Io) -> None:
            try:
                await self._read_piece(io.inode, io.layout, io.piece, io.dest, [])
            except errors.Py3fsError as exc:
                failed[io.item] = exc

        await asyncio.gather(
            *(
                one_frame(target, frame)
                for target, group in groups.items()
                for frame in _frames(group)
            ),
            *(retry(io) for io in big),
        )
        await asyncio.gather(*(retry(io) for io in slow))
        return failed

    async def _send_batch(
        self, view: RoutingView, target: int, group: list[_Io]
    ) -> list[_Io]:
        """One READ frame for `group` on `target`; returns the ios left undone."""
        try:
            caps = [
                await self.cap(i, False)
                for i in dict.fromkeys(io.inode for io in group)
            ]
        except errors.Py3fsError:
            return group  # each io then fails with its own error
        req = wire.ReadReq(
            [
                wire.ReadIO(
                    target_id=target,
                    chunk_id=ids.chunk_id(io.inode, io.piece.index),
                    offset=io.piece.chunk_offset,
                    length=io.piece.length,
                    chain_id=io.piece.chain_id,
                    chain_ver=view.chain(io.piece.chain_id).version,
                )
                for io in group
            ],
            caps=[c for c in caps if c],
        )

        def sink(frame: wire.Frame) -> Sequence[memoryview]:
            body = frame.body
            assert isinstance(body, wire.ReadReply)
            if len(body.results) != len(group):
                raise errors.BadFrame(
                    f"{len(body.results)} results for {len(group)} ios"
                )
            out = []
            for io, res in zip(group, body.results, strict=True):
                if res.length > io.dest.nbytes:
                    raise errors.BadFrame("read reply longer than asked")
                if res.code == 0 and res.length:
                    out.append(io.dest[: res.length])
            if sum(v.nbytes for v in out) != frame.payload_len:
                raise errors.BadFrame("read reply payload does not match its results")
            return out

        try:
            body, _ = await self._data.call(
                view.target_address(target),
                wire.MsgType.READ,
                req,
                sink=sink,
                timeout=self._call_timeout,
            )
        except errors.Py3fsError as exc:
            if isinstance(exc, errors.CapabilityExpired):
                for io in group:
                    self._expired(io.inode)
            return group
        assert isinstance(body, wire.ReadReply)
        left = []
        for io, res in zip(group, body.results, strict=True):
            if res.code == 0:
                if res.length < io.dest.nbytes:
                    io.dest[res.length :] = bytes(io.dest.nbytes - res.length)
            elif res.code == errors.ChunkNotFound.code:
                io.dest[:] = bytes(io.dest.nbytes)
            else:
                left.append(io)
        return left

    # ---------------------------------------------------------------- admin

    async def flush(self, layout: Layout) -> None:
        """Put everything written to the file's chains on disk on every replica
        (fsync/close); one FLUSH per storage node, concurrently."""
        view = await self._routing.get()
        by_node: dict[str, list[int]] = {}
        for chain_id in set(layout.chains):
            # A target out of service gets a full resync before it serves again.
            for target in view.serving_targets(chain_id):
                address = view.target_address(target)
                by_node.setdefault(address, []).append(target)

        async def one(address: str, targets: list[int]) -> None:
            await self._data.call(
                address,
                wire.MsgType.FLUSH,
                wire.FlushReq(target_ids=targets),
                timeout=self._call_timeout,
            )

        await _gather(one(a, t) for a, t in by_node.items())

    async def call(
        self, address: str, mtype: wire.MsgType, body: wire.Body
    ) -> tuple[wire.Body, bytearray | None]:
        """One raw data-plane request (tools and tests: LIST_CHUNKS, TARGET_STATS),
        signed when this client holds the cluster secret."""
        if self._tool_keys is not None and hasattr(body, "auth"):
            body = self._tool_keys.sign(body)
        return await self._data.call(address, mtype, body, timeout=self._call_timeout)

    async def aclose(self) -> None:
        for task in list(self._warming):
            task.cancel()
        if self._warming:
            await asyncio.wait(list(self._warming))
        await self._data.aclose()


async def _gather(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run all concurrently; on a failure cancel the rest and raise the first error
    itself (not an ExceptionGroup), as callers expect one py3fs error. A single
    one runs in the caller's task: most reads and writes touch one chunk, and a
    task group costs more than a small read itself."""
    todo = list(coros)
    if len(todo) == 1:
        await todo[0]
        return
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in todo:
                tg.create_task(coro)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None


def replica_for(inode: int, index: int) -> int:
    """Which serving replica reads chunk `index` of `inode` (modulo their
    number): the same in every client process (ints hash the same everywhere)."""
    return hash((inode, index)) & 0x7FFFFFFF


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _frames(group: list[_Io]) -> list[list[_Io]]:
    """Split a target's ios into frames of at most MAX_IOS_PER_FRAME ios and
    MAX_READ_BYTES bytes (what a storage server accepts in one READ)."""
    frames: list[list[_Io]] = [[]]
    size = 0
    for io in group:
        if frames[-1] and (
            len(frames[-1]) == MAX_IOS_PER_FRAME
            or size + io.piece.length > wire.MAX_READ_BYTES
        ):
            frames.append([])
            size = 0
        frames[-1].append(io)
        size += io.piece.length
    return [f for f in frames if f]
