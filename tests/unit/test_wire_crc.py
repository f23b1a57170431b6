"""py3fs.wire.crc32c: the same checksum whether or not it releases the GIL
(below and above _RELEASE_GIL_BYTES), for every buffer type callers pass."""

from __future__ import annotations

import os
from array import array

import crc32c as lib
import pytest

from py3fs import wire


@pytest.mark.parametrize(
    "n",
    [0, 1, 64 << 10, wire._RELEASE_GIL_BYTES - 1, wire._RELEASE_GIL_BYTES, 3 << 20],
)
def test_crc32c_matches_the_library(n: int) -> None:
    data = os.urandom(n)
    want = lib.crc32c(data)
    assert wire.crc32c(data) == want
    assert wire.crc32c(bytearray(data)) == want
    assert wire.crc32c(memoryview(data)) == want
    # A buffer that is not bytes (an array of 4-byte items): sized in bytes.
    if n % 4 == 0:
        assert wire.crc32c(array("I", data)) == want
    # Chained: the checksum of a concatenation from its parts.
    half = n // 2
    assert wire.crc32c(memoryview(data)[half:], wire.crc32c(data[:half])) == want
