"""Same-host reads: the storage node passes the chunk's data file, we read it.

A client on a storage node's host reaches it over a Unix socket
(py3fs.dataplane). For a read of at least `LOCAL_READ_MIN` bytes it asks READ_FD
instead of READ: the node makes the checks of a READ (capability, chain
version, CRAQ's committed version) and answers with its data file, open for
reading, and the block checksums of the range (storage_service.local_read). We
read the range straight into the caller's buffer with one `preadv` and verify
every block it touches: one copy out of the page cache instead of three (into
the node's buffer, through the socket, out of it), no storage CPU per byte.
A block that fails its checksum (an overwrite applied after the reply, or a
bad disk) makes the read go over the network (None): there the node verifies,
waits out an apply, and repairs a damaged block from a good replica.
"""

from __future__ import annotations

import asyncio
import os
from array import array
from collections.abc import Callable

from py3fs import errors, wire
from py3fs.dataplane import DataClient

# Below this, a READ's bytes through the socket cost less than passing a file
# and reading it here (a descriptor round trip, an open and a close).
LOCAL_READ_MIN = 256 << 10
# At and above this, the read and check run in a worker thread: the loop serves
# other chunks meanwhile, and two reads use two cores. A smaller one (a 1 MiB
# USRBIO read: ~0.1 ms of copy and checksum from the page cache) runs on the
# loop when the page cache holds it all (RWF_NOWAIT): a thread's round trip
# costs more than that on a busy host. One that would wait for the disk goes
# to a thread.
THREAD_MIN = 2 << 20
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
# A read is copied and checked this many bytes at a time: small enough to be
# checked from the CPU cache right after the copy, big enough that the syscalls
# do not add up (a 4.3 MiB KV page: 9 preadv instead of 1).
SPAN = 512 << 10


async def read_local(
    data: DataClient,
    address: str,
    io: wire.ReadIO,
    cap: bytes,
    dest: memoryview,
    *,
    timeout: float,
    ahead: int = 0,
    on_disk: Callable[[], None] | None = None,
) -> int | None:
    """Fill the start of `dest` with chunk bytes [io.offset, io.offset +
    io.length); returns how many the chunk has (the caller zeroes the rest), or
    None when this read is not done here (the node is not on this host, or a
    block failed its checksum): then read it over the network. Raises what a
    READ of the io would answer (ChunkNotFound, ChunkNotCommitted, ...).
    With `ahead`, a read that waits for the disk first has it read up to that
    many bytes of the chunk past the range too (a sequential reader's next
    reads then find them in the page cache), and `on_disk` is called."""
    got = await data.call_fd(address, wire.ReadFdReq(io=io, cap=cap), timeout=timeout)
    if got is None:
        return None
    reply, fd = got
    if fd is None:
        return 0
    try:
        if reply.length > dest.nbytes:
            raise errors.BadFrame(
                f"READ_FD reply of {reply.length} bytes for {dest.nbytes} asked"
            )
        view = dest[: reply.length]
        ok = None
        if reply.length < THREAD_MIN and _NOWAIT:
            try:
                ok = read_verified(fd, reply, io.offset, view, _NOWAIT)
            except OSError:
                ok = None  # not all cached, or the file system cannot say
        if ok is None:
            if on_disk is not None:
                on_disk()
            # With `ahead`: one read of the disk for this range and the next
            # ones, started before this range's pread waits on it.
            upto = min(io.offset + reply.length + ahead, reply.chunk_length)
            try:
                ok = await asyncio.to_thread(
                    _advised_read, fd, reply, io.offset, view, upto if ahead else 0
                )
            except OSError:
                ok = False  # the network read reports (or gets around) it
    finally:
        os.close(fd)
    return reply.length if ok else None


def _advised_read(
    fd: int, reply: wire.ReadFdReply, start: int, dest: memoryview, upto: int
) -> bool:
    """`read_verified`, having the kernel read file bytes [start, upto) first
    (a hint: nothing when `upto` is 0)."""
    if upto > start:
        try:
            os.posix_fadvise(fd, start, upto - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint only
    return read_verified(fd, reply, start, dest)


def read_verified(
    fd: int, reply: wire.ReadFdReply, start: int, dest: memoryview, flags: int = 0
) -> bool:
    """Read file bytes [start, start + len(dest)) into `dest`, and the rest of
    the blocks it touches into scratch, and check each block against the
    reply's checksums (which start at block `reply.lo`); False if any fails.
    With RWF_NOWAIT in `flags`, raises BlockingIOError unless the page cache
    holds it all."""
    bs = reply.block_size
    end = start + dest.nbytes
    crcs = array("I")
    crcs.frombytes(reply.crcs)
    if bs <= 0 or reply.lo % bs or not reply.lo <= start < end <= reply.chunk_length:
        raise errors.BadFrame("READ_FD reply does not cover the range")
    lo = start // bs * bs
    hi = min(-(-end // bs) * bs, reply.chunk_length)
    first = (lo - reply.lo) // bs
    crcs = crcs[first : first + -(-(hi - lo) // bs)]
    if len(crcs) != -(-(hi - lo) // bs):
        raise errors.BadFrame("READ_FD reply lacks checksums of the range")
    head, tail = bytearray(start - lo), bytearray(hi - end)
    segs = [(lo, memoryview(head)), (start, dest), (end, memoryview(tail))]
    segs = [(at, v) for at, v in segs if v.nbytes]
    # Span by span: each is checked right after it is read, while it is still
    # in the CPU cache (one preadv of 4 MiB and then its checksums read every
    # byte from memory twice more); see SPAN.
    span = SPAN // bs * bs or bs
    for a in range(lo, hi, span):
        b = min(a + span, hi)
        views = [
            v[max(a, at) - at : min(b, at + v.nbytes) - at]
            for at, v in segs
            if max(a, at) < min(b, at + v.nbytes)
        ]
        got = os.preadv(fd, views, a, flags)
        if got != b - a:
            if flags:
                raise BlockingIOError  # partly cached: the rest may wait
            return False  # the file is shorter now: truncated or replaced
        for i in range((a - lo) // bs, -(-(b - lo) // bs)):
            x = lo + i * bs
            y = min(x + bs, hi)
            crc = 0
            for at, v in segs:
                p, q = max(x, at), min(y, at + v.nbytes)
                if p < q:
                    crc = wire.crc32c(v[p - at : q - at], crc)
            if crc != crcs[i]:
                return False
    return True
