"""Shared-memory buffers (iovs): a /dev/shm file mapped by the program and by the
agent, named by a UUID, so the agent moves file data straight into the
program's memory.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import uuid
from dataclasses import dataclass


def map_shm(path: str, size: int = 0) -> mmap.mmap:
    """Map the whole of `path` (creating it with `size` bytes when size > 0).
    Raises OSError(EINVAL) for a path outside /dev/shm or an empty file."""
    real = os.path.realpath(path)
    if not real.startswith("/dev/shm/"):
        raise OSError(errno.EINVAL, f"{path} is not under /dev/shm")
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if size else 0)
    fd = os.open(real, flags, 0o600)
    try:
        if size:
            os.ftruncate(fd, size)
        if os.fstat(fd).st_size == 0:
            raise OSError(errno.EINVAL, f"{path} is empty")
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def close_map(mm: mmap.mmap) -> None:
    # Views handed out (numpy arrays, memoryviews) keep the map alive; then the
    # kernel unmaps it when the last of them is collected.
    with contextlib.suppress(BufferError):
        mm.close()


class Iov:
    """A shared buffer made by a program (the no-mount API). `iov[a:b]` is an
    `IovSlice`; `view` is a writable memoryview of all of it."""

    def __init__(self, size: int, block_size: int = 0, shm_dir: str = "/dev/shm"):
        if size <= 0:
            raise OSError(errno.EINVAL, "iov size must be positive")
        self.id = uuid.uuid4()
        self.block_size = block_size
        # The name a 3fs-virt/iovs/ symlink would have.
        self.name = str(self.id) + (f".b{block_size}" if block_size > 0 else "")
        self.path = os.path.join(shm_dir, f"py3fs-iov-{self.id}")
        self.mm = map_shm(self.path, size)
        self.size = size
        self.view = memoryview(self.mm)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> IovSlice:
        if not isinstance(key, slice):
            raise TypeError("iov indices must be slices")
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("iov slices must have step 1")
        return IovSlice(self, start, max(0, stop - start))

    def close(self) -> None:
        self.view.release()
        close_map(self.mm)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> Iov:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(eq=False)
class IovSlice:
    """`length` bytes of `iov` from `offset`; `result`/`userdata` are set when an
    io on it completes."""

    iov: Iov
    offset: int
    length: int
    result: int = 0
    userdata: object = None

    @property
    def view(self) -> memoryview:
        return self.iov.view[self.offset : self.offset + self.length]
