"""Write sessions: one per open-for-write file handle (keys.session_key).

Unlinking a file that still has sessions defers its removal until the last one
closes. Read-only opens are not tracked, as in 3FS.
"""

from __future__ import annotations

import uuid

import msgspec

from py3fs.kv import keys
from py3fs.kv.base import Transaction


class Session(msgspec.Struct, frozen=True):
    client_id: str
    created: float


_encoder = msgspec.msgpack.Encoder()


def create(tr: Transaction, inode: int, client_id: str, now: float) -> str:
    """Start a session; returns its id."""
    session_id = uuid.uuid4().hex
    tr.set(
        keys.session_key(inode, session_id), _encoder.encode(Session(client_id, now))
    )
    return session_id


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
