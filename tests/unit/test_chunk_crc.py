"""One-pass payload checksums of the chunk engine (chunk_format.piece_crcs):
the whole-payload CRC32C built from its 64 KiB pieces equals the CRC of the
bytes, the pieces equal the block CRCs, and a write checked this way commits
the same block table as one checked the slow way."""

from __future__ import annotations

import random

import pytest

from py3fs import errors
from py3fs.wire import crc32c
from storage_service.chunk_format import (
    BLOCK_SIZE,
    block_crcs,
    check_payload,
    make_meta,
    piece_crcs,
    plan_update,
)

SIZES = [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE]
SIZES += [4 << 20, 4497408 - (4 << 20), 300_000]


@pytest.mark.parametrize("n", SIZES)
def test_pieces_and_whole(n: int) -> None:
    data = random.Random(n).randbytes(n)
    whole, pieces = piece_crcs(memoryview(data))
    assert whole == crc32c(data)
    assert list(pieces) == list(block_crcs(data))


def test_check_payload() -> None:
    data = memoryview(random.Random(1).randbytes(2 * BLOCK_SIZE + 5))
    good = crc32c(data)
    assert check_payload(data, 0, good) is not None
    assert check_payload(data, BLOCK_SIZE, None) is not None
    assert check_payload(data, 100, good) is None  # off the block grid
    for offset in (0, 100):
        with pytest.raises(errors.ChecksumMismatch):
            check_payload(data, offset, good ^ 1)


@pytest.mark.parametrize(("offset", "n"), [(0, 5 * BLOCK_SIZE + 3), (BLOCK_SIZE, 7)])
def test_plan_update_with_pieces(offset: int, n: int) -> None:
    """Pieces give the same table as reading the payload again, for an append
    and for an overwrite whose last block keeps committed bytes after it."""
    rng = random.Random(offset + n)
    old_data = rng.randbytes(3 * BLOCK_SIZE)
    old_len, old_crcs = plan_update(
        None, 0, memoryview(old_data), False, lambda b: memoryview(b"")
    )
    old = make_meta(1, old_len, 1, old_crcs)

    def read_block(b: int) -> memoryview:
        return memoryview(old_data)[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]

    payload = memoryview(rng.randbytes(n))
    pieces = check_payload(payload, offset, crc32c(payload))
    assert pieces is not None
    fast = plan_update(old, offset, payload, False, read_block, pieces)
    slow = plan_update(old, offset, payload, False, read_block)
    assert fast == slow
    new = bytearray(old_data.ljust(max(old_len, offset + n), b"\0"))
    new[offset : offset + n] = payload
    assert fast == (len(new), block_crcs(new))
