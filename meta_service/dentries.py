"""Directory entries: keys.dentry_key(parent, name) → (inode id, type).

A directory's entries share one key prefix, so listing is one range read in name
(byte) order and "is it empty" reads at most one key.
"""

from __future__ import annotations

import msgspec

from py3fs.kv import keys
from py3fs.kv.base import Transaction, strinc
from py3fs.proto.messages import DirEntry, InodeType


class DentryValue(msgspec.Struct, frozen=True, array_like=True):
    inode: int
    type: InodeType


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DentryValue)


def get(tr: Transaction, parent: int, name: str) -> DirEntry | None:
    raw = tr.get(keys.dentry_key(parent, name))
    if raw is None:
        return None
    val = _decoder.decode(raw)
    return DirEntry(name=name, inode=val.inode, type=val.type)


def put(tr: Transaction, parent: int, name: str, inode: int, kind: InodeType) -> None:
    tr.set(keys.dentry_key(parent, name), _encoder.encode(DentryValue(inode, kind)))


def insert(
    tr: Transaction, parent: int, name: str, inode: int, kind: InodeType
) -> bool:
    """Add the entry unless `name` exists in `parent`; whether it did."""
    value = _encoder.encode(DentryValue(inode, kind))
    return tr.insert(keys.dentry_key(parent, name), value)


def remove(tr: Transaction, parent: int, name: str) -> None:
    tr.clear(keys.dentry_key(parent, name))


def listing(
    tr: Transaction, parent: int, start_after: str, limit: int
) -> tuple[list[DirEntry], bool]:
    """Up to `limit` entries with names after `start_after`, and whether more follow."""
    prefix = keys.dentry_prefix(parent)
    # Names never contain NUL, so name + b"\0" is the first key after `start_after`.
    begin = keys.dentry_key(parent, start_after) + b"\0" if start_after else prefix
    rows = tr.get_range(begin, strinc(prefix), limit + 1)
    entries = []
    for key, raw in rows[:limit]:
        val = _decoder.decode(raw)
        entries.append(
            DirEntry(name=keys.dentry_name(key), inode=val.inode, type=val.type)
        )
    return entries, len(rows) > limit


def is_empty(tr: Transaction, parent: int) -> bool:
    return not tr.get_prefix(keys.dentry_prefix(parent), limit=1)
