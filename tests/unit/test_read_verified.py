"""client.local_read.read_verified: a range of a data file, checked per block."""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.local_read import read_verified
from py3fs import errors, wire

BS = 64 << 10


def _reply(data: bytes, lo: int = 0) -> wire.ReadFdReply:
    crcs = array("I", [wire.crc32c(data[i : i + BS]) for i in range(lo, len(data), BS)])
    return wire.ReadFdReply(
        length=len(data) - lo,
        version=1,
        lo=lo,
        chunk_length=len(data),
        block_size=BS,
        crcs=crcs.tobytes(),
    )


@pytest.fixture
def chunk(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = os.urandom(5 * BS + 777)
    path = tmp_path / "chunk.d"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    yield fd, data
    os.close(fd)


@pytest.mark.parametrize(
    ("start", "n"),
    [(0, 5 * BS + 777), (1, 10), (BS - 5, 10), (BS, BS), (3 * BS + 100, 2 * BS + 677)],
)
def test_ranges_read_and_verify(chunk: tuple[int, bytes], start: int, n: int) -> None:
    fd, data = chunk
    buf = bytearray(n)
    assert read_verified(fd, _reply(data), start, memoryview(buf))
    assert buf == data[start : start + n]
    # Checksums from a later block on serve a range that starts there.
    lo = start // BS * BS
    buf2 = bytearray(n)
    assert read_verified(fd, _reply(data, lo), start, memoryview(buf2))
    assert buf2 == buf
    if hasattr(os, "RWF_NOWAIT"):  # just written: in the page cache
        buf3 = bytearray(n)
        assert read_verified(fd, _reply(data), start, memoryview(buf3), os.RWF_NOWAIT)
        assert buf3 == buf


def test_changed_or_short_file_fails(chunk: tuple[int, bytes]) -> None:
    fd, data = chunk
    reply = _reply(data)
    os.pwrite(fd, bytes([data[2 * BS + 9] ^ 1]), 2 * BS + 9)
    assert read_verified(fd, reply, 0, memoryview(bytearray(BS)))  # block 0 fine
    assert not read_verified(fd, reply, 2 * BS, memoryview(bytearray(10)))
    os.ftruncate(fd, 4 * BS)
    assert not read_verified(fd, reply, 4 * BS, memoryview(bytearray(100)))


def test_a_reply_that_does_not_cover_the_range_is_refused(
    chunk: tuple[int, bytes],
) -> None:
    fd, data = chunk
    with pytest.raises(errors.BadFrame):
        read_verified(fd, _reply(data, BS), 0, memoryview(bytearray(10)))
    with pytest.raises(errors.BadFrame):
        read_verified(fd, _reply(data), len(data) - 5, memoryview(bytearray(10)))
    short = _reply(data)
    cut = wire.ReadFdReply(
        length=short.length,
        version=1,
        lo=0,
        chunk_length=short.chunk_length,
        block_size=BS,
        crcs=short.crcs[:8],
    )
    with pytest.raises(errors.BadFrame):
        read_verified(fd, cut, 3 * BS, memoryview(bytearray(10)))


def test_reads_longer_than_a_span_check_every_block(tmp_path: Path) -> None:
    """A range of several spans (local_read.SPAN), starting and ending inside
    blocks: every byte arrives and a bad block in a later span is caught."""
    from client.local_read import SPAN

    data = os.urandom(2 * SPAN + 3 * BS + 123)
    path = tmp_path / "long.d"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        reply = _reply(data)
        for start, n in [(0, len(data)), (77, len(data) - 200), (SPAN - 1, SPAN + 2)]:
            buf = bytearray(n)
            assert read_verified(fd, reply, start, memoryview(buf))
            assert buf == data[start : start + n]
        bad = SPAN + 2 * BS + 5
        os.pwrite(fd, bytes([data[bad] ^ 0x40]), bad)
        assert read_verified(fd, reply, 0, memoryview(bytearray(SPAN)))
        assert not read_verified(fd, reply, 0, memoryview(bytearray(len(data))))
        assert not read_verified(fd, reply, bad - 1, memoryview(bytearray(2)))
    finally:
        os.close(fd)
