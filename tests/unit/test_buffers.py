"""Scratch and page-aligned buffers (py3fs.buffers), and the data-plane server's
receive buffer, which a storage node hands to O_DIRECT writes as it is."""

from __future__ import annotations

import socket

from py3fs import buffers, dataplane


def test_aligned_buffers_start_on_a_page() -> None:
    buf = buffers.aligned(3 * buffers.PAGE + 5)
    assert len(buf) == 3 * buffers.PAGE + 5
    view = memoryview(buf)
    assert buffers.page_aligned(view)
    assert buffers.page_aligned(view[buffers.PAGE :])
    assert not buffers.page_aligned(view[1:])
    assert not buffers.page_aligned(view[:0])  # no byte to take the address of
    assert not buffers.page_aligned(memoryview(b"x" * 10000))  # read-only


def test_scratch_has_the_asked_size() -> None:
    assert len(buffers.scratch(10)) == 10
    assert len(buffers.scratch(1 << 20)) == 1 << 20


async def test_large_payload_buffers_are_page_aligned() -> None:
    a, b = socket.socketpair()
    try:
        conn = dataplane.ServerConn(a, "peer")
        small = conn.payload_buffer(100)
        assert small.nbytes == 100
        big = conn.payload_buffer(dataplane.ALIGN_BUFFER + 1)
        assert big.nbytes == dataplane.ALIGN_BUFFER + 1
        assert buffers.page_aligned(big)
        # Reused while big enough.
        again = conn.payload_buffer(1000)
        assert again.obj is big.obj
    finally:
        a.close()
        b.close()
