"""Exactly-once mutations: the reply of a request with a nonzero request id is
stored (keys.idempotent_key) in the same transaction as its effects.

A client that lost the reply, or whose meta died, retries with the same
(client_id, request_id) on any meta and gets the stored reply instead of a second
application (a retried mkdir does not fail with AlreadyExists, a retried rename
with NotFound). Failed requests store nothing, so their retries run again.
Records expire after a TTL, far longer than any client retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec

from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.base import Transaction
from py3fs.proto.messages import MetaReq, Msg

R = TypeVar("R", bound=Msg)


class Record(msgspec.Struct, frozen=True, array_like=True):
    method: str
    time: float  # seconds since the epoch, for expiry
    reply: bytes


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def once(
    tr: Transaction,
    method: str,
    req: MetaReq,
    reply_type: type[R],
    now: float,
    fn: Callable[[], R],
) -> R:
    """The stored reply of (req.client_id, req.request_id), or `fn()`'s, stored."""
    if not req.request_id:
        return fn()
    key = keys.idempotent_key(req.client_id, req.request_id)
    raw = tr.get(key)
    if raw is not None:
        rec = _decoder.decode(raw)
        if rec.method != method:
            raise errors.InvalidArgument(
                f"request id {req.request_id} was already used for {rec.method}"
            )
        return msgspec.msgpack.decode(rec.reply, type=reply_type)
    reply = fn()
    tr.set(key, _encoder.encode(Record(method, now, _encoder.encode(reply))))
    return reply


def expire(
    tr: Transaction, cutoff: float, start: bytes | None, limit: int
) -> tuple[int, bytes | None]:
    """Clear records older than `cutoff` among up to `limit` records from key
    `start`. Returns (cleared, where to continue; None after the last record),
    so a caller sweeps the table a slice per transaction."""
    begin, end = keys.idempotent_range()
    rows = tr.get_range(start or begin, end, limit)
    cleared = 0
    for key, raw in rows:
        if _decoder.decode(raw).time < cutoff:
            tr.clear(key)
            cleared += 1
    if len(rows) < limit:
        return cleared, None
    return cleared, rows[-1][0] + b"\0"
