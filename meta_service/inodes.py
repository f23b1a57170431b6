"""Inode records (keys.inode_key → msgspec Inode) and namespace counters."""

from __future__ import annotations

import msgspec

from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.base import Transaction, decode_counter
from py3fs.proto.messages import Inode, InodeType

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Inode)

# Counter names (keys.counter_key): live namespace objects, for statfs.
INODES = "inodes"
FILES = "files"
DIRECTORIES = "directories"


def load(tr: Transaction, inode: int) -> Inode | None:
    raw = tr.get(keys.inode_key(inode))
    return None if raw is None else _decoder.decode(raw)


def get(tr: Transaction, inode: int) -> Inode:
    """The inode, or NotFound."""
    node = load(tr, inode)
    if node is None:
        raise errors.NotFound(f"inode {inode} not found")
    return node


def store(tr: Transaction, node: Inode) -> None:
    tr.set(keys.inode_key(node.inode), _encoder.encode(node))


def entries_changed(
    tr: Transaction, parent: Inode, now: int, subdirs: int = 0
) -> Inode:
    """A name in directory `parent` appeared, went or moved: its mtime and
    ctime become `now`, and its nlink follows the `subdirs` delta (a
    directory's nlink is 2 + its subdirectories)."""
    node = msgspec.structs.replace(
        parent, mtime=now, ctime=now, nlink=max(2, parent.nlink + subdirs)
    )
    store(tr, node)
    return node


def delete(tr: Transaction, inode: int) -> None:
    tr.clear(keys.inode_key(inode))


def count(tr: Transaction, kind: InodeType, delta: int) -> None:
    """Adjust the statfs counters for one inode of `kind` appearing (+1) or
    leaving the namespace (-1)."""
    tr.add(keys.counter_key(INODES), delta)
    if kind == InodeType.FILE:
        tr.add(keys.counter_key(FILES), delta)
    elif kind == InodeType.DIRECTORY:
        tr.add(keys.counter_key(DIRECTORIES), delta)


def read_counter(tr: Transaction, name: str) -> int:
    return decode_counter(tr.get(keys.counter_key(name)))
