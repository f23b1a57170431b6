from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.striping import pieces
from py3fs import errors
from py3fs.proto.messages import Layout

LAYOUT = Layout(chunk_size=1024, table_id=1, table_version=1, chains=[7, 8, 9])


def test_pieces_cross_chunk_boundaries() -> None:
    got = list(pieces(LAYOUT, 1000, 2100))
    assert [
        (p.index, p.chain_id, p.chunk_offset, p.length, p.buf_offset) for p in got
    ] == [
        (0, 7, 1000, 24, 0),
        (1, 8, 0, 1024, 24),
        (2, 9, 0, 1024, 1048),
        (3, 7, 0, 28, 2072),
    ]


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_pieces_cover_range_exactly(offset: int, length: int) -> None:
    got = list(pieces(LAYOUT, offset, length))
    assert sum(p.length for p in got) == length
    pos = 0
    for p in got:
        assert p.buf_offset == pos
        assert 0 <= p.chunk_offset < LAYOUT.chunk_size
        assert p.chunk_offset + p.length <= LAYOUT.chunk_size
        assert p.index * LAYOUT.chunk_size + p.chunk_offset == offset + pos
        assert p.chain_id == LAYOUT.chains[p.index % 3]
        pos += p.length


def test_bad_range() -> None:
    with pytest.raises(errors.InvalidArgument):
        list(pieces(LAYOUT, -1, 10))
