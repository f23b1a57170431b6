"""Reads by clients on this host: the data file instead of the bytes.

Over the data server's Unix socket (py3fs.dataplane) a client may ask READ_FD
for a range of a chunk. The checks are those of a READ (the capability, the
chain version, a serving target, CRAQ's committed version: an update in flight
answers ChunkNotCommitted unless the tail still has ours), then the node passes
the chunk's data file, open for reading, with the block checksums of the range
at that committed version. The client reads the file itself and checks every
block against them (client.local_read): the bytes cross no socket and no
storage buffer, and the checksums are still verified end to end. A block that
changed after the reply (an overwrite applied meanwhile) fails its checksum,
and the client reads that range over the network as before, so it never
returns bytes of two versions.
"""

from __future__ import annotations

from py3fs import errors, wire
from storage_service.chunk_format import BLOCK_SIZE
from storage_service.read_path import ReadPath


async def read_fd(reads: ReadPath, req: wire.ReadFdReq) -> tuple[wire.ReadFdReply, int]:
    """The reply and the open data file (-1 when the range is empty; the caller
    closes it after sending)."""
    io = req.io
    open_range = getattr(await reads.admit(io), "open_range", None)
    if open_range is None:
        raise errors.InvalidArgument(
            f"target {io.target_id} does not keep its chunks in files"
        )
    meta, start, end, fd = await open_range(io.chunk_id, io.offset, io.length)
    version = meta.info.version
    if fd < 0:
        return wire.ReadFdReply(length=0, version=version), -1
    length = meta.info.length
    lo = start // BLOCK_SIZE * BLOCK_SIZE
    hi = min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, length)
    crcs = meta.crcs[lo // BLOCK_SIZE : -(-hi // BLOCK_SIZE)]
    reply = wire.ReadFdReply(
        length=end - start,
        version=version,
        lo=lo,
        chunk_length=length,
        block_size=BLOCK_SIZE,
        crcs=crcs.tobytes(),
    )
    return reply, fd
