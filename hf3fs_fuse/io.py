"""py3fs's `hf3fs_fuse.io`: 3FS's Python wrapper over `hf3fs_py_usrbio`.

Programs written for 3FS (`make_iovec`, `make_ioring`, `read_file`, ...) run
unchanged on a py3fs mount.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory
from typing import Any
from uuid import uuid4

import hf3fs_py_usrbio as h3fio
from hf3fs_py_usrbio import (
    deregister_fd,
    extract_mount_point,
    force_fsync,
    hardlink,
    punch_hole,
    register_fd,
)

__all__ = [
    "IorPriority",
    "deregister_fd",
    "extract_mount_point",
    "force_fsync",
    "h3fio",
    "hardlink",
    "ioring",
    "iovec",
    "make_ioring",
    "make_iovec",
    "punch_hole",
    "read_file",
    "register_fd",
]


class iovec:
    """A registered buffer: `.iov` is the raw `h3fio.iovec`, `.link` its symlink
    in `3fs-virt/iovs/`, removed (deregistering it) when this object dies."""

    def __init__(self, iov: h3fio.iovec, link: str) -> None:
        self.iov = iov
        self.link = link

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.link)

    def __getitem__(self, key: Any) -> h3fio.iovec:
        return self.iov[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.iov[key] = value


class ioring:
    """Forwards to the raw ring `.ior`; `prepare` also takes a wrapper iovec."""

    def __init__(self, ior: h3fio.ioring) -> None:
        self.ior = ior

    @staticmethod
    def size_for_entries(entries: int) -> int:
        return h3fio.ioring.size_for_entries(entries)

    def prepare(self, iov: Any, *args: Any, **kwargs: Any) -> h3fio.ioring:
        raw = iov.iov if isinstance(iov, iovec) else iov
        return self.ior.prepare(raw, *args, **kwargs)

    def submit(self) -> h3fio.ioring:
        return self.ior.submit()

    def wait(self, *args: Any, **kwargs: Any) -> list[h3fio.iovec]:
        return self.ior.wait(*args, **kwargs)


class IorPriority:
    HIGH = -1
    NORMAL = 0
    LOW = 1


def make_iovec(
    shm: SharedMemory, hf3fs_mount_point: str, block_size: int = 0, numa: int = -1
) -> iovec:
    """Register `shm` with the mount (a symlink in `3fs-virt/iovs/`); `shm` may
    be unlinked right after, the agent has mapped it."""
    ident = str(uuid4())
    suffix = f".b{block_size}" if block_size > 0 else ""
    link = f"{hf3fs_mount_point}/3fs-virt/iovs/{ident}{suffix}"
    os.symlink(os.path.normpath(f"/dev/shm/{shm.name}"), link)
    try:
        raw = h3fio.iovec(shm.buf, ident, hf3fs_mount_point, block_size, numa)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(link)
        raise
    return iovec(raw, link)


def make_ioring(
    hf3fs_mount_point: str,
    entries: int,
    for_read: bool = True,
    io_depth: int = 0,
    priority: int | None = None,
    timeout: int | None = None,
    numa: int = -1,
    flags: int = 0,
) -> ioring:
    """A ring of `entries` ios. io_depth 0: run what is prepared at once; > 0:
    only in batches of exactly io_depth; < 0: at most -io_depth per batch.
    flags: 1 read uncommitted, 2 error on reading a hole."""
    return ioring(
        h3fio.ioring(
            hf3fs_mount_point,
            entries,
            for_read,
            io_depth,
            priority,
            timeout,
            numa,
            flags,
        )
    )


def read_file(
    fn: str,
    hf3fs_mount_point: str | None = None,
    block_size: int = 1 << 30,
    off: int = 0,
    priority: int | None = None,
    cb: Callable[[memoryview, int], Any] | None = None,
) -> bytes | None:
    """The file's bytes from `off`, read `block_size` at a time through a ring.
    With `cb`, each block goes to `cb(buf, offset)` instead and None is
    returned; `cb` may return a new offset (int) or True to stop."""
    if hf3fs_mount_point is None:
        hf3fs_mount_point = extract_mount_point(fn)
    fd = os.open(fn, os.O_RDONLY)
    shm = None
    try:
        register_fd(fd)
        shm = SharedMemory(size=block_size, create=True)
        iov = make_iovec(shm, hf3fs_mount_point)  # type: ignore[arg-type]
        ior = make_ioring(hf3fs_mount_point, 1, priority=priority)  # type: ignore[arg-type]
        parts: list[bytes] = []
        roff = off
        while True:
            ior.prepare(iov[:], True, fd, roff)
            done = ior.submit().wait(min_results=1)[0]
            if done.result < 0:
                raise OSError(-done.result, os.strerror(-done.result))
            if done.result == 0:
                break
            if cb is None:
                parts.append(bytes(shm.buf[: done.result]))
            else:
                res = cb(shm.buf[: done.result], roff)
                if isinstance(res, int) and not isinstance(res, bool):
                    roff = res
                    continue
                if res:
                    return None
            if done.result < block_size:
                break
            roff += block_size
        return None if cb is not None else b"".join(parts)
    finally:
        deregister_fd(fd)
        os.close(fd)
        with contextlib.suppress(NameError):
            del ior, iov
        if shm is not None:
            shm.close()
            shm.unlink()
