"""Write sessions: one per open-for-write file handle (keys.session_key).

Unlinking a file that still has sessions defers its removal until the last one
closes. Read-only opens are not tracked, as in 3FS.

A session opened with a lease expires when its client stops renewing
(keys.client_lease_key, written by RenewReq): a crashed client's sessions end
`lease` seconds after its last renewal, and `meta_service.recovery` gives
their files their length from storage.
"""

from __future__ import annotations

import uuid

import msgspec

from py3fs.kv import keys
from py3fs.kv.base import Transaction


class Session(msgspec.Struct, frozen=True):
    client_id: str
    created: float
    lease: float = 0.0  # seconds; 0: never expires


class ClientLease(msgspec.Struct, frozen=True):
    expires: float


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Session)
_lease_decoder = msgspec.msgpack.Decoder(ClientLease)


def create(
    tr: Transaction, inode: int, client_id: str, now: float, lease: float = 0.0
) -> str:
    """Start a session; returns its id. With a `lease`, the client's lease is
    (re)started too."""
    session_id = uuid.uuid4().hex
    tr.set(
        keys.session_key(inode, session_id),
        _encoder.encode(Session(client_id, now, max(0.0, lease))),
    )
    if lease > 0:
        renew(tr, client_id, now + lease)
    return session_id


def renew(tr: Transaction, client_id: str, expires: float) -> None:
    key = keys.client_lease_key(client_id)
    raw = tr.get(key)
    if raw is None or _lease_decoder.decode(raw).expires < expires:
        tr.set(key, _encoder.encode(ClientLease(expires)))


def expired(tr: Transaction, now: float, limit: int) -> list[tuple[int, str]]:
    """(inode, session id) of up to `limit` leased sessions whose client has
    not renewed in time."""
    out = []
    leases: dict[str, float] = {}
    for key, raw in tr.get_range(*keys.session_range()):
        sess = _decoder.decode(raw)
        if sess.lease <= 0:
            continue
        if sess.client_id not in leases:
            lraw = tr.get(keys.client_lease_key(sess.client_id))
            leases[sess.client_id] = (
                _lease_decoder.decode(lraw).expires if lraw is not None else 0.0
            )
        if max(leases[sess.client_id], sess.created + sess.lease) < now:
            out.append(keys.session_parts(key))
            if len(out) >= limit:
                break
    return out


def is_expired(tr: Transaction, inode: int, session_id: str, now: float) -> bool:
    raw = tr.get(keys.session_key(inode, session_id))
    if raw is None:
        return False
    sess = _decoder.decode(raw)
    if sess.lease <= 0:
        return False
    lraw = tr.get(keys.client_lease_key(sess.client_id))
    until = _lease_decoder.decode(lraw).expires if lraw is not None else 0.0
    return max(until, sess.created + sess.lease) < now


def remove(tr: Transaction, inode: int, session_id: str) -> bool:
    """End a session; False when it did not exist (already closed)."""
    key = keys.session_key(inode, session_id)
    if tr.get(key) is None:
        return False
    tr.clear(key)
    return True


def any_open(tr: Transaction, inode: int) -> bool:
    return bool(tr.get_prefix(keys.session_prefix(inode), limit=1))


def exists(tr: Transaction, inode: int, session_id: str) -> bool:
    return tr.get(keys.session_key(inode, session_id)) is not None


def held_by(tr: Transaction, inode: int, client_id: str, limit: int = 1024) -> bool:
    """Whether `client_id` has a write session on `inode` (the first `limit`
    sessions are looked at: a file has few writers)."""
    if not client_id:
        return False
    rows = tr.get_prefix(keys.session_prefix(inode), limit=limit)
    return any(_decoder.decode(v).client_id == client_id for _, v in rows)
