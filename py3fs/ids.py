"""Identifiers: inode ids, chunk ids, node/target/chain ids.

A chunk id is the owning inode id plus the chunk index; the storage layer only ever
sees it as 12 bytes (8 inode, 4 index, both big-endian so one inode's chunks sort
together and a prefix names them all).
"""

from __future__ import annotations

import struct

ROOT_INODE = 1
CHUNK_ID_LEN = 12
_CHUNK = struct.Struct(">QI")


def chunk_id(inode: int, index: int) -> bytes:
    return _CHUNK.pack(inode, index)


def split_chunk_id(cid: bytes) -> tuple[int, int]:
    if len(cid) != CHUNK_ID_LEN:
        raise ValueError(f"chunk id must be {CHUNK_ID_LEN} bytes, got {len(cid)}")
    inode, index = _CHUNK.unpack(cid)
    return inode, index


def inode_prefix(inode: int) -> bytes:
    return struct.pack(">Q", inode)


def chunk_file_name(cid: bytes) -> str:
    inode, index = split_chunk_id(cid)
    return f"{inode:016x}-{index:08x}"


def parse_chunk_file_name(name: str) -> bytes:
    inode_hex, index_hex = name.split("-", 1)
    return chunk_id(int(inode_hex, 16), int(index_hex, 16))
