"""Exactly-once mutations: the reply of a request with a nonzero request id is
stored (keys.idempotent_key) in the same transaction as its effects.

A client that lost the reply, or whose meta died, retries with the same
(client_id, request_id) on any meta and gets the stored reply instead of a second
application (a retried mkdir does not fail with AlreadyExists, a retried rename
with NotFound). Failed requests store nothing, so their retries run again.
Records expire after a TTL, far longer than any client retries.

The request runs first and its record is then inserted (one statement, where
looking first would take two on every mutation): a record already there means
a retry, and `Replayed` cancels the transaction with whatever the second run
did. A retry that fails (a rename's source is gone) finds the record after
its error.
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


class Replayed(Exception):
    """The request was applied before: its stored reply. Raised out of the
    transaction so that it is cancelled; `MetaStore` returns the reply."""

    def __init__(self, reply: Msg) -> None:
        super().__init__("replayed")
        self.reply = reply


def once(
    tr: Transaction,
    method: str,
    req: MetaReq,
    reply_type: type[R],
    now: float,
    fn: Callable[[], R],
) -> R:
    """`fn()`'s reply, stored under (req.client_id, req.request_id); raises
    Replayed with the reply stored before when the request ran already."""
    if not req.request_id:
        return fn()
    key = keys.idempotent_key(req.client_id, req.request_id)
    try:
        reply = fn()
    except errors.MetaError:
        _replay(tr, key, method, req, reply_type)
        raise
    record = _encoder.encode(Record(method, now, _encoder.encode(reply)))
    if not tr.insert(key, record):
        _replay(tr, key, method, req, reply_type)
        raise errors.KVError(f"idempotency record {key!r} vanished")
    return reply


def _replay(
    tr: Transaction, key: bytes, method: str, req: MetaReq, reply_type: type[R]
) -> None:
    """Raise Replayed when `key` holds the record of an earlier run."""
    raw = tr.get(key)
    if raw is None:
        return
    rec = _decoder.decode(raw)
    if rec.method != method:
        raise errors.InvalidArgument(
            f"request id {req.request_id} was already used for {rec.method}"
        )
    raise Replayed(msgspec.msgpack.decode(rec.reply, type=reply_type))


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
