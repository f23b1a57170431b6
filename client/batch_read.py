"""Batch reads: many small reads sent as one READ frame per storage target.

`StorageClient.read` sends one frame per chunk piece, which costs a round trip
and a request on the server per io; for thousands of 4 KiB random reads that
cost dominates. Here the pieces of a whole batch are grouped by the replica
chosen for them and each group goes out as one `ReadReq` whose payload lands in
the callers' buffers in order. Anything the fast path cannot finish (a dirty or
corrupt replica, a lost connection, stale routing) falls back to the
per-piece path with its retries.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import NamedTuple

from client.storage_client import StorageClient
from client.striping import Piece, pieces
from py3fs import errors, ids, wire
from py3fs.proto.messages import Layout
from py3fs.routing import RoutingView

MAX_IOS_PER_FRAME = 256
_rr = itertools.count()


class ReadItem(NamedTuple):
    inode: int
    layout: Layout
    offset: int
    dest: memoryview  # its length is what is read (the caller clamps to EOF)


class _Io(NamedTuple):
    item: int
    inode: int
    layout: Layout
    piece: Piece
    dest: memoryview


async def read_batch(
    storage: StorageClient, items: Sequence[ReadItem]
) -> list[BaseException | None]:
    """Fill every item's `dest`; returns, per item, None or the error that
    failed it (holes read as zeros). Cancellation cancels every frame."""
    ios = [
        _Io(i, it.inode, it.layout, p, it.dest[p.buf_offset : p.buf_offset + p.length])
        for i, it in enumerate(items)
        for p in pieces(it.layout, it.offset, it.dest.nbytes)
    ]
    view = await storage._routing.get()
    groups: dict[int, list[_Io]] = {}
    slow: list[_Io] = []
    for io in ios:
        targets = view.serving_targets(io.piece.chain_id)
        if not targets:
            slow.append(io)
            continue
        groups.setdefault(targets[next(_rr) % len(targets)], []).append(io)
    failed: list[BaseException | None] = [None] * len(items)

    async def one_frame(target: int, group: list[_Io]) -> None:
        async with storage._sem:
            slow.extend(await _send(storage, view, target, group))

    frames = [
        one_frame(target, group[i : i + MAX_IOS_PER_FRAME])
        for target, group in groups.items()
        for i in range(0, len(group), MAX_IOS_PER_FRAME)
    ]
    await asyncio.gather(*frames)

    async def retry(io: _Io) -> None:
        try:
            await storage._read_piece(io.inode, io.layout, io.piece, io.dest)
        except errors.Py3fsError as exc:
            failed[io.item] = exc

    await asyncio.gather(*(retry(io) for io in slow))
    return failed


async def _send(
    storage: StorageClient, view: RoutingView, target: int, group: list[_Io]
) -> list[_Io]:
    """One READ frame for `group` on `target`; returns the ios left undone."""
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
        ]
    )

    def sink(frame: wire.Frame) -> Sequence[memoryview]:
        body = frame.body
        assert isinstance(body, wire.ReadReply)
        if len(body.results) != len(group):
            raise errors.BadFrame(f"{len(body.results)} results for {len(group)} ios")
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
        body, _ = await storage._data.call(
            view.target_address(target),
            wire.MsgType.READ,
            req,
            sink=sink,
            timeout=storage._call_timeout,
        )
    except errors.Py3fsError:
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
