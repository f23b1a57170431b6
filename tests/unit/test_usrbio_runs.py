"""Joining a ring's back-to-back writes to one chunk into a single update."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from client.usrbio.server import _adjacent_runs

IOVS: dict[bytes, Any] = {b"a": SimpleNamespace(view=memoryview(bytearray(1 << 20)))}


def sqe(buf_off: int, off: int, n: int, tag: int, iov: bytes = b"a") -> tuple:
    return (iov, buf_off, 7, off, n, tag)


def test_adjacent_writes_join_in_offset_order() -> None:
    group = [sqe(8192, 8192, 4096, 3), sqe(0, 0, 4096, 1), sqe(4096, 4096, 4096, 2)]
    runs = _adjacent_runs(group, IOVS)
    assert [[q[5] for q in run] for run in runs] == [[1, 2, 3]]


def test_gaps_and_bad_buffers_split_runs() -> None:
    group = [
        sqe(0, 0, 4096, 1),
        sqe(0, 4096, 4096, 2, iov=b"gone"),  # unknown iov: stands alone
        sqe(0, 8192, 4096, 3),
        sqe(0, 20000, 100, 4),  # gap before it
        sqe((1 << 20) - 10, 20100, 100, 5),  # runs past its buffer
    ]
    runs = _adjacent_runs(group, IOVS)
    assert [[q[5] for q in run] for run in runs] == [[1], [2], [3], [4], [5]]
