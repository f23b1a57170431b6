"""Large sequential reads through the mount (issue 10): the daemon answers the
kernel's read-ahead from a window it fetches ahead (client.file_io.ReadWindow),
which never outlives a change made through the mount."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 1024 * 1024


def _evict(fd: int) -> None:
    """Drop the kernel's cached pages of the file, so reads go to the daemon."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _read_to_end(fd: int, offset: int) -> bytes:
    out = bytearray()
    while chunk := os.pread(fd, MiB, offset + len(out)):
        out += chunk
    return bytes(out)


def test_sequential_read_sees_writes_made_meanwhile(mnt: Path) -> None:
    path = mnt / "seq-read.bin"
    data = bytearray(os.urandom(24 * MiB + 777))
    path.write_bytes(data)
    reader = os.open(path, os.O_RDONLY)
    writer = os.open(path, os.O_WRONLY)
    try:
        _evict(reader)
        head = b"".join(os.pread(reader, MiB, i * MiB) for i in range(6))
        assert head == data[: 6 * MiB]
        # The window now holds (or is fetching) bytes past 6 MiB; change some.
        patch = os.urandom(MiB + 100)
        os.pwrite(writer, patch, 12 * MiB + 5)
        data[12 * MiB + 5 : 13 * MiB + 105] = patch
        os.pwrite(writer, b"tail", len(data))
        data += b"tail"
        _evict(reader)
        assert _read_to_end(reader, 6 * MiB) == data[6 * MiB :]
        # And a second pass, through the same handle, from the start.
        _evict(reader)
        assert _read_to_end(reader, 0) == data
    finally:
        os.close(writer)
        os.close(reader)


def test_interleaved_sequential_readers(mnt: Path) -> None:
    """Two handles reading one file in lockstep, one of them a chunk behind:
    each gets exactly its bytes."""
    path = mnt / "seq-two.bin"
    data = os.urandom(20 * MiB + 3)
    path.write_bytes(data)
    a = os.open(path, os.O_RDONLY)
    b = os.open(path, os.O_RDONLY)
    try:
        _evict(a)
        for i in range(21):
            assert os.pread(a, MiB, i * MiB) == data[i * MiB : (i + 1) * MiB]
            j = i - 4
            if j >= 0:
                assert os.pread(b, MiB, j * MiB) == data[j * MiB : (j + 1) * MiB]
    finally:
        os.close(a)
        os.close(b)
