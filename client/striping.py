"""Map a byte range of a file onto its chunks (pure; no I/O).

Chunk `i` of a file covers bytes [i*chunk_size, (i+1)*chunk_size) and lives on chain
`layout.chains[i % len(layout.chains)]`, as in 3FS's stripe layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from py3fs import errors
from py3fs.proto.messages import Layout


class Piece(NamedTuple):
    """The part of a request that falls in one chunk."""

    index: int  # chunk index in the file
    chain_id: int
    chunk_offset: int  # offset inside the chunk
    length: int
    buf_offset: int  # offset inside the caller's buffer


def pieces(layout: Layout, offset: int, length: int) -> Iterator[Piece]:
    """Split [offset, offset+length) of a file into per-chunk pieces, in order."""
    if offset < 0 or length < 0:
        raise errors.InvalidArgument(f"bad range offset={offset} length={length}")
    if not layout.chains:
        raise errors.InvalidArgument("file layout has no chains")
    size = layout.chunk_size
    pos, end = offset, offset + length
    while pos < end:
        index, inner = divmod(pos, size)
        n = min(size - inner, end - pos)
        chain = layout.chains[index % len(layout.chains)]
        yield Piece(index, chain, inner, n, pos - offset)
        pos += n
