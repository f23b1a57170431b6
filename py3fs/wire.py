"""The data-plane wire protocol: frame header, message numbers, message bodies.

This module alone packs bytes for the data plane (chunk read/write/replicate/remove).
A frame is a fixed little-endian header, a msgspec-msgpack body, then an optional raw
payload (chunk data), which is sent and received without copying where Python allows:

    magic "P3FS" | version u8 | flags u8 | type u16 | request id u64 |
    body length u32 | payload length u32 | CRC32C(body) u32

A connection carries one request at a time (a pool gives concurrency), so the reader
always knows which buffer a payload belongs in before it arrives.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Sequence
from enum import IntEnum
from functools import partial
from typing import Any, Final

import crc32c as _crc32c
import msgspec

from py3fs import errors
from py3fs.tls_sock import TlsSock

# A data-plane connection: a plain socket, or TLS over one (py3fs.tls_sock).
# Each helper below picks the path once per call with one type check.
Conn = socket.socket | TlsSock

MAGIC: Final = b"P3FS"
VERSION: Final = 1
HEADER = struct.Struct("<4sBBHQIII")
HEADER_SIZE: Final = HEADER.size
MAX_BODY: Final = 4 * 1024 * 1024
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024 * 1024 + 4096
# The most data one READ may ask for (its ios' lengths summed): the reply must fit
# a payload, and a server checks it before allocating anything.
MAX_READ_BYTES: Final = 64 * 1024 * 1024
# Payloads up to this size are copied next to the header so one send carries both.
_COALESCE: Final = 64 * 1024


# A checksum releases the GIL only when it is this long. The library releases
# it from 32 KiB on, and a 64 KiB block's checksum (~5-10 us) then had to take
# the GIL back from a thread running Python, which gives it up only every
# `sys.getswitchinterval()` (5 ms): a worker thread checking a 4 MiB chunk block
# by block (a storage node staging a write, a client verifying a same-host
# read) waited up to 5 ms per block while the event loop ran, and its
# checksums ran at 0.05-0.25 GB/s instead of 5-6 GB/s (two threads, 2-core VM).
_RELEASE_GIL_BYTES: Final = 1 << 20


def crc32c(data: Any, value: int = 0) -> int:
    kind = type(data)
    n = len(data) if kind is bytes or kind is bytearray else memoryview(data).nbytes
    return int(_crc32c.crc32c(data, value, 1 if n >= _RELEASE_GIL_BYTES else 0))


class MsgType(IntEnum):
    """Every data-plane message, numbered once; numbers are never reused."""

    ERROR = 1
    PING = 2
    PONG = 3
    WRITE = 10
    WRITE_REPLY = 11
    READ = 12
    READ_REPLY = 13
    REMOVE = 14
    REMOVE_REPLY = 15
    QUERY_CHUNK = 16
    QUERY_CHUNK_REPLY = 17
    TARGET_STATS = 18
    TARGET_STATS_REPLY = 19
    LIST_CHUNKS = 20
    LIST_CHUNKS_REPLY = 21
    SYNC_CHUNK = 22
    SYNC_CHUNK_REPLY = 23
    SYNC_DONE = 24
    SYNC_DONE_REPLY = 25
    FLUSH = 26
    FLUSH_REPLY = 27
    READ_FD = 28
    READ_FD_REPLY = 29


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ErrorBody(Body):
    code: int
    message: str


class Ping(Body):
    pass


class WriteReq(Body):
    """Write `payload` at `offset` of a chunk. Sent by a client to the chain head, and
    by each target to its successor with `update_ver` set by the head."""

    chain_id: int
    chain_ver: int
    target_id: int
    chunk_id: bytes
    offset: int
    chunk_size: int
    data_crc: int
    client_id: str
    request_id: int
    update_ver: int = 0
    full_replace: bool = False
    # A client's write (update_ver 0, not repair) carries meta's capability for
    # the chunk's inode (py3fs.caps); a forward carries the node signature.
    cap: bytes = b""
    auth: bytes = b""
    # A full replace that rebuilds a chunk whose replicas may have diverged: a
    # remembered reply for this chunk at or below its version may describe a
    # write the rebuild did not keep, so retries are applied again.
    repair: bool = False
    # Every replica puts the chunk on disk before it acks (the last write of a
    # file being closed or fsynced: no separate FLUSH round is needed then).
    sync: bool = False
    # The writer streams (a file written front to back, a chunk at a time) and
    # will not read these bytes back soon: a replica may write them past its
    # page cache (storage_service.file_chunk_store, O_DIRECT).
    stream: bool = False


class WriteReply(Body):
    chunk_ver: int
    length: int
    crc: int


class ReadIO(Body):
    target_id: int
    chunk_id: bytes
    offset: int
    length: int
    chain_id: int = 0
    chain_ver: int = 0


class ReadFdReq(Body):
    """A read by a client on the storage node's host, over its Unix socket
    (py3fs.dataplane): instead of the bytes, the node sends the open data file
    (SCM_RIGHTS) and the block checksums covering the range; the client reads
    and verifies them itself (client.local_read)."""

    io: ReadIO
    cap: bytes = b""


class ReadFdReply(Body):
    """`length` bytes of the range are in the chunk (at version `version`);
    the file's bytes [lo, lo + len(crcs) / 4 blocks) are checked by `crcs`
    (CRC32C per block, native-endian uint32, the last block ending at
    `chunk_length`). A file descriptor follows the frame iff `length` > 0."""

    length: int
    version: int
    lo: int = 0
    chunk_length: int = 0
    block_size: int = 0
    crcs: bytes = b""


class ReadReq(Body):
    ios: list[ReadIO]
    verify: bool = True
    # Capabilities (py3fs.caps) covering every io's inode, one per inode; a
    # storage node repairing from a peer signs instead (`auth`).
    caps: list[bytes] = []
    auth: bytes = b""


class ReadResult(Body):
    """One io of a batch read: `code` 0 on success, else an error code; `length` bytes
    of this io's data follow the previous ones' in the payload."""

    code: int
    length: int
    chunk_ver: int = 0
    message: str = ""
    # The chunk's digest (ChunkInfo.crc) when the read returned the whole
    # chunk (a repair checks what it received against it); 0 otherwise.
    crc: int = 0


class ReadReply(Body):
    results: list[ReadResult]


class RemoveReq(Body):
    """Remove every chunk of each of `inodes` on the chain (forwarded head to
    tail). GC sends one per chain for a whole batch of unlinked files."""

    chain_id: int
    chain_ver: int
    target_id: int
    inodes: list[int]
    client_id: str
    request_id: int
    auth: bytes = b""  # node signature: only meta's GC and chain peers remove


class RemoveReply(Body):
    removed: int


class QueryChunkReq(Body):
    target_id: int
    chunk_id: bytes
    # Node signature: chunk metadata (which inodes exist, their lengths and
    # checksums) is for chain peers, meta and the cluster's admin tools.
    auth: bytes = b""


class ChunkMeta(Body):
    chunk_id: bytes
    committed_ver: int
    pending_ver: int
    length: int
    crc: int
    chain_ver: int


class ListChunksReq(Body):
    target_id: int
    inode: int = 0
    auth: bytes = b""  # node signature, as QueryChunkReq


class ListChunksReply(Body):
    chunks: list[ChunkMeta]


class SyncChunkReq(Body):
    """Resync: make `chunk_id` on the syncing `target_id` exactly the predecessor's
    committed chunk (the payload, `version`, `crc`), or remove it when `remove`.
    Applied whatever the receiver holds: the predecessor's copy is the truth."""

    chain_id: int
    chain_ver: int
    target_id: int
    chunk_id: bytes
    version: int = 0
    crc: int = 0
    chunk_chain_ver: int = 0
    remove: bool = False
    auth: bytes = b""  # node signature (chain peers only)


class SyncChunkReply(Body):
    version: int


class SyncDoneReq(Body):
    """Resync finished: every chunk of `target_id` matched its predecessor at
    chain version `chain_ver`; the target may report itself up to date."""

    chain_id: int
    chain_ver: int
    target_id: int
    auth: bytes = b""  # node signature (chain peers only)


class SyncDoneReply(Body):
    pass


class FlushReq(Body):
    """Put every update these targets have acknowledged on disk (a client's
    fsync/close; writes are acknowledged from the page cache by default)."""

    target_ids: list[int]


class FlushReply(Body):
    chunks: int  # how many chunks had to be flushed


class TargetStatsReq(Body):
    auth: bytes = b""  # node signature, as QueryChunkReq


class TargetStat(Body):
    target_id: int
    used_bytes: int
    chunk_count: int
    free_bytes: int
    total_bytes: int


class TargetStatsReply(Body):
    targets: list[TargetStat]


BODY_TYPES: Final[dict[MsgType, type[Body]]] = {
    MsgType.ERROR: ErrorBody,
    MsgType.PING: Ping,
    MsgType.PONG: Ping,
    MsgType.WRITE: WriteReq,
    MsgType.WRITE_REPLY: WriteReply,
    MsgType.READ: ReadReq,
    MsgType.READ_REPLY: ReadReply,
    MsgType.REMOVE: RemoveReq,
    MsgType.REMOVE_REPLY: RemoveReply,
    MsgType.QUERY_CHUNK: QueryChunkReq,
    MsgType.QUERY_CHUNK_REPLY: ChunkMeta,
    MsgType.TARGET_STATS: TargetStatsReq,
    MsgType.TARGET_STATS_REPLY: TargetStatsReply,
    MsgType.LIST_CHUNKS: ListChunksReq,
    MsgType.LIST_CHUNKS_REPLY: ListChunksReply,
    MsgType.SYNC_CHUNK: SyncChunkReq,
    MsgType.SYNC_CHUNK_REPLY: SyncChunkReply,
    MsgType.SYNC_DONE: SyncDoneReq,
    MsgType.SYNC_DONE_REPLY: SyncDoneReply,
    MsgType.FLUSH: FlushReq,
    MsgType.FLUSH_REPLY: FlushReply,
    MsgType.READ_FD: ReadFdReq,
    MsgType.READ_FD_REPLY: ReadFdReply,
}
REPLY_OF: Final[dict[MsgType, MsgType]] = {
    MsgType.PING: MsgType.PONG,
    MsgType.WRITE: MsgType.WRITE_REPLY,
    MsgType.READ: MsgType.READ_REPLY,
    MsgType.REMOVE: MsgType.REMOVE_REPLY,
    MsgType.QUERY_CHUNK: MsgType.QUERY_CHUNK_REPLY,
    MsgType.TARGET_STATS: MsgType.TARGET_STATS_REPLY,
    MsgType.LIST_CHUNKS: MsgType.LIST_CHUNKS_REPLY,
    MsgType.SYNC_CHUNK: MsgType.SYNC_CHUNK_REPLY,
    MsgType.SYNC_DONE: MsgType.SYNC_DONE_REPLY,
    MsgType.FLUSH: MsgType.FLUSH_REPLY,
    MsgType.READ_FD: MsgType.READ_FD_REPLY,
}
_TYPE_OF_BODY: Final = {cls: t for t, cls in BODY_TYPES.items() if t != MsgType.PONG}
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: Final = {t: msgspec.msgpack.Decoder(cls) for t, cls in BODY_TYPES.items()}


class Frame(msgspec.Struct):
    """A received header and decoded body; `payload_len` bytes still to read."""

    type: MsgType
    request_id: int
    body: Body
    payload_len: int


class ConnectionClosed(errors.RPCUnavailable):
    """The peer closed the connection (at a frame boundary or mid-frame)."""


def encode_frame(
    mtype: MsgType, request_id: int, body: Body, payload_len: int = 0
) -> bytes:
    data = _ENCODER.encode(body)
    if len(data) > MAX_BODY:
        raise errors.FrameTooLarge(f"body of {len(data)} bytes over {MAX_BODY}")
    header = HEADER.pack(
        MAGIC, VERSION, 0, int(mtype), request_id, len(data), payload_len, crc32c(data)
    )
    return header + data


def error_body(exc: errors.Py3fsError) -> ErrorBody:
    return ErrorBody(code=exc.code, message=exc.message)


def raise_error_body(body: ErrorBody) -> None:
    raise errors.error_from_code(body.code, body.message)


def parse_header(
    raw: bytes | bytearray | memoryview, max_payload: int
) -> tuple[int, int, int, int]:
    """Validate a header; return (type number, request id, body len, payload len).

    Raises BadFrame (bad magic/version) or FrameTooLarge (lengths over the limits).
    The type number is returned raw: an unknown type is the caller's to answer.
    """
    magic, version, _flags, mtype, rid, blen, plen, _crc = HEADER.unpack(raw)
    if magic != MAGIC:
        raise errors.BadFrame(f"bad magic {magic!r}")
    if version != VERSION:
        raise errors.BadFrame(f"unsupported protocol version {version}")
    if blen > MAX_BODY:
        raise errors.FrameTooLarge(f"body length {blen} over {MAX_BODY}")
    if plen > max_payload:
        raise errors.FrameTooLarge(f"payload length {plen} over {max_payload}")
    return mtype, rid, blen, plen


def decode_body(mtype: int, raw: bytes, crc: int) -> Body:
    if crc32c(raw) != crc:
        raise errors.BadFrame("body checksum mismatch")
    try:
        t = MsgType(mtype)
        decoder = _DECODERS[t]
    except (ValueError, KeyError):
        raise errors.UnknownMessage(f"unknown message type {mtype}") from None
    try:
        return decoder.decode(raw)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise errors.BadFrame(f"cannot decode {t.name} body: {exc}") from None


async def _recv_some(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview
) -> int:
    """Receive what is there into `view` (at least one byte, 0 at end of stream).

    The socket is read at once and the loop asked to wait only when nothing has
    arrived: uvloop's `sock_recv_into` polls before every read (~20 us even with
    the bytes already there), and a frame's body and payload usually arrive with
    its header."""
    try:
        return sock.recv_into(view)
    except (BlockingIOError, InterruptedError):
        return await loop.sock_recv_into(sock, view)


async def recv_into(
    loop: asyncio.AbstractEventLoop, sock: Conn, view: memoryview
) -> None:
    """Fill `view` exactly from `sock`."""
    if isinstance(sock, TlsSock):
        while view.nbytes:
            n = await sock.recv_into(view)
            if n == 0:
                raise ConnectionClosed("connection closed by peer")
            view = view[n:]
        return
    while view.nbytes:
        n = await _recv_some(loop, sock, view)
        if n == 0:
            raise ConnectionClosed("connection closed by peer")
        view = view[n:]


async def recv_frame(
    loop: asyncio.AbstractEventLoop,
    sock: Conn,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    *,
    at_boundary_ok: bool = False,
) -> Frame | None:
    """Read one header and body. Returns None if the peer closed cleanly between
    frames and `at_boundary_ok`; the payload is left for the caller to read."""
    hbuf = bytearray(HEADER_SIZE)
    view = memoryview(hbuf)
    if isinstance(sock, TlsSock):
        first = await sock.recv_into(view)
    else:
        first = await _recv_some(loop, sock, view)
    if first == 0:
        if at_boundary_ok:
            return None
        raise ConnectionClosed("connection closed by peer")
    return await finish_frame(loop, sock, hbuf, first, max_payload)


async def finish_frame(
    loop: asyncio.AbstractEventLoop,
    sock: Conn,
    hbuf: bytearray,
    first: int,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> Frame:
    """Read the rest of a frame whose first `first` header bytes are in `hbuf`."""
    view = memoryview(hbuf)
    await recv_into(loop, sock, view[first:])
    mtype, rid, blen, plen = parse_header(hbuf, max_payload)
    crc = HEADER.unpack(hbuf)[7]
    raw = bytearray(blen)
    await recv_into(loop, sock, memoryview(raw))
    try:
        body = decode_body(mtype, bytes(raw), crc)
    except errors.UnknownMessage:
        await discard(loop, sock, plen)
        raise
    return Frame(type=MsgType(mtype), request_id=rid, body=body, payload_len=plen)


async def discard(loop: asyncio.AbstractEventLoop, sock: Conn, n: int) -> None:
    """Read and drop `n` bytes (an unwanted payload), keeping the stream in sync."""
    scratch = memoryview(bytearray(min(n, 1 << 20) or 1))
    while n > 0:
        view = scratch[: min(n, scratch.nbytes)]
        await recv_into(loop, sock, view)
        n -= view.nbytes


async def send_frame(
    loop: asyncio.AbstractEventLoop,
    sock: Conn,
    mtype: MsgType,
    request_id: int,
    body: Body,
    payload: Sequence[Any] = (),
) -> None:
    """Send a frame; payload buffers (bytes/memoryview) go out without copying
    (over TLS they are encrypted from where they lie)."""
    views = [memoryview(p).cast("B") for p in payload]
    plen = sum(v.nbytes for v in views)
    head = encode_frame(mtype, request_id, body, plen)
    send = (
        sock.sendall if isinstance(sock, TlsSock) else partial(loop.sock_sendall, sock)
    )
    if plen <= _COALESCE:
        await send(b"".join([head, *views]))
        return
    await send(head)
    for v in views:
        if v.nbytes:
            await send(v)
