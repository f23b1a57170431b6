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
CLIENT_LEASE = b"CLNT"
USER = b"USER"
TOKEN = b"TOKN"

_U64LE = struct.Struct("<Q")
_U64BE = struct.Struct(">Q")


def inode_key(inode: int) -> bytes:
    return INODE + _U64LE.pack(inode)


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


def session_range() -> tuple[bytes, bytes]:
    """Every write session of every inode."""
    return SESSION, strinc(SESSION)


def session_parts(key: bytes) -> tuple[int, str]:
    """(inode, session id) of a session key."""
    rest = key[len(SESSION) :]
    return int(_U64LE.unpack(rest[:8])[0]), rest[8:].decode()


def client_lease_key(client_id: str) -> bytes:
    """When the write sessions of `client_id` expire unless it renews them."""
    return CLIENT_LEASE + client_id.encode()


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


# ---------------------------------------------------------------- KVCache index
# A store is named (no NUL, no '/'); every key of one store starts with
# prefix + name + NUL, so a store's pages, LRU order and counters are range reads.
KV_STORE = b"KVST"
KV_PAGE = b"KVPG"
KV_LRU = b"KVLR"
KV_COUNTER = b"KVCT"


def _kv_store_prefix(prefix: bytes, store: str) -> bytes:
    return prefix + store.encode() + b"\0"


def kv_store_key(store: str) -> bytes:
    """Store record: where its directories are, page size, capacity."""
    return KV_STORE + store.encode()


def kv_page_key(store: str, page: bytes) -> bytes:
    return _kv_store_prefix(KV_PAGE, store) + page


def kv_page_range(store: str) -> tuple[bytes, bytes]:
    prefix = _kv_store_prefix(KV_PAGE, store)
    return prefix, strinc(prefix)


def kv_page_of(store: str, key: bytes) -> bytes:
    return key[len(KV_PAGE) + len(store.encode()) + 1 :]


def kv_lru_key(store: str, atime_ms: int, page: bytes) -> bytes:
    """LRU secondary index: big-endian access time first, so a range scan from
    the start of the store's range meets the least recently used page first."""
    return _kv_store_prefix(KV_LRU, store) + _U64BE.pack(atime_ms) + page


def kv_lru_range(store: str) -> tuple[bytes, bytes]:
    prefix = _kv_store_prefix(KV_LRU, store)
    return prefix, strinc(prefix)


def kv_lru_split(store: str, key: bytes) -> tuple[int, bytes]:
    """(access time in ms, page key) of an LRU index key."""
    rest = key[len(KV_LRU) + len(store.encode()) + 1 :]
    return int(_U64BE.unpack(rest[:8])[0]), rest[8:]


def kv_counter_key(store: str, name: str) -> bytes:
    """Per-store counters ("pages", "bytes") kept by atomic add."""
    return _kv_store_prefix(KV_COUNTER, store) + name.encode()


def user_key(name: str) -> bytes:
    return USER + b"/" + name.encode()


def user_range() -> tuple[bytes, bytes]:
    return USER + b"/", strinc(USER + b"/")


def token_key(digest: str) -> bytes:
    """A token is stored only as its SHA-256, so reading the KV store does not
    hand out identities."""
    return TOKEN + b"/" + digest.encode()
