"""Every KV key encoding py3fs uses, in one place (DESIGN.md §3).

Inode ids are little-endian in keys so consecutive ids spread across key ranges
(shards, in a sharded backend); a directory's entries share the prefix
DENT+parent, so listing a directory is one range read.
"""

from __future__ import annotations

import struct

from py3fs.kv.base import strinc

INODE = b"INOD"
DENTRY = b"DENT"
SESSION = b"SESS"
GC_QUEUE = b"GCQ "
MGMT = b"MGMT"
ID_ALLOC = b"IDAL"
IDEMPOTENT = b"IDEM"

_U64LE = struct.Struct("<Q")
_U64BE = struct.Struct(">Q")


def inode_key(inode: int) -> bytes:
    return INODE + _U64LE.pack(inode)


def inode_range() -> tuple[bytes, bytes]:
    return INODE, strinc(INODE)


def dentry_prefix(parent: int) -> bytes:
    return DENTRY + _U64LE.pack(parent)


def dentry_key(parent: int, name: str) -> bytes:
    return dentry_prefix(parent) + name.encode()


def dentry_name(key: bytes) -> str:
    return key[len(DENTRY) + 8 :].decode()


def session_prefix(inode: int) -> bytes:
    return SESSION + _U64LE.pack(inode)


def session_key(inode: int, session_id: str) -> bytes:
    return session_prefix(inode) + session_id.encode()


def gc_key(due_ms: int, inode: int) -> bytes:
    """GC entries sort by due time (big-endian) so the queue is a range scan."""
    return GC_QUEUE + _U64BE.pack(due_ms) + _U64LE.pack(inode)


def gc_range(until_ms: int) -> tuple[bytes, bytes]:
    return GC_QUEUE, GC_QUEUE + _U64BE.pack(until_ms + 1)


def gc_inode(key: bytes) -> int:
    return int(_U64LE.unpack(key[len(GC_QUEUE) + 8 :])[0])


def id_alloc_key() -> bytes:
    return ID_ALLOC


def mgmt_key(name: str) -> bytes:
    return MGMT + b"/" + name.encode()


def counter_key(name: str) -> bytes:
    """Namespace-wide counters (file/dir counts, used bytes) kept by atomic add."""
    return MGMT + b"/counter/" + name.encode()


def idempotent_key(client_id: str, request_id: int) -> bytes:
    """Stored reply of a mutation, so a retried request is applied only once."""
    return IDEMPOTENT + client_id.encode() + b"/" + _U64BE.pack(request_id)


def idempotent_range() -> tuple[bytes, bytes]:
    return IDEMPOTENT, strinc(IDEMPOTENT)
