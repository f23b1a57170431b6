"""USRBIO without a mount: the program hosts the agent itself.

    with Usrbio.from_cluster() as u:
        iov = u.iovec(64 << 20)
        ring = u.ioring(1024, for_read=True)
        fd = u.open("/data/a.bin", "rb")
        for i in range(16):
            ring.prepare(iov[i << 20 : (i + 1) << 20], True, fd, i << 20, userdata=i)
        done = ring.submit().wait(min_results=16)   # IovSlice objects, .result

The rings and iovs are the same shared memory the FUSE agent serves, so the
same code path runs with and without a mount; here the agent and its `Client` run
on a private event loop thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from client.client import Client, File
from client.config import ClientConfig, load_client_config
from client.sync import _Loop
from client.usrbio.fds import FdEntry, FdTable
from client.usrbio.iov import Iov, IovSlice
from client.usrbio.ring import RingProducer, RingSpec
from client.usrbio.server import UsrbioServer
from py3fs import errors

T = TypeVar("T")
_FD_BASE = 1 << 20  # pseudo fds for py3fs paths; far above real descriptors


class Usrbio:
    """Iovs, rings and registered fds served by an in-process agent."""

    def __init__(self, config: ClientConfig) -> None:
        self._loop = _Loop()
        # Built inside the loop thread: gRPC channels and semaphores bind to it.
        self.client: Client = self._call(lambda: Client(config))
        self.server = UsrbioServer()
        self.fds = FdTable()
        self._fd_ids = itertools.count(_FD_BASE)
        self._call(lambda: self.server.start(self.client))

    @classmethod
    def from_cluster(cls, path: str | None = None, **overrides: Any) -> Usrbio:
        return cls(load_client_config(path, **overrides))

    def _call(self, make: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = make()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return self._loop.run(run())

    def iovec(self, size: int, block_size: int = 0) -> Iov:
        iov = Iov(size, block_size)
        try:
            self._call(lambda: self.server.register_iov(iov.name, iov.path))
        except BaseException:
            iov.close()
            raise
        return iov

    def free_iovec(self, iov: Iov) -> None:
        self._call(lambda: self.server.deregister_iov(iov.name))
        iov.close()

    def ioring(
        self,
        entries: int,
        for_read: bool = True,
        io_depth: int = 0,
        timeout_ms: int = 0,
        flags: int = 0,
    ) -> IoRing:
        return IoRing(self, entries, for_read, io_depth, timeout_ms, flags)

    # ------------------------------------------------------------ fds

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> int:
        """Open a py3fs path and register it; returns a pseudo fd for `prepare`.
        Raises OSError(errno) when the open fails."""
        try:
            file: File = self._loop.run(self.client.open(path, mode, **kwargs))
        except errors.Py3fsError as exc:
            raise OSError(exc.errno, str(exc)) from None
        fd = next(self._fd_ids)
        accmode = file.flags & os.O_ACCMODE
        self.fds.add(fd, FdEntry(file.inode.inode, accmode, file))
        return fd

    def register_fd(self, fd: int) -> None:
        """Register an fd of a file on a py3fs mount (its st_ino is the py3fs
        inode). OSError(EINVAL) when registered already."""
        ino = os.fstat(fd).st_ino
        accmode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        self.fds.add(fd, FdEntry(ino, accmode))

    def close(self, fd: int) -> None:
        """Deregister `fd`; a pseudo fd's file is closed (its length reported)."""
        entry = self.fds.remove(fd)
        if entry is not None and isinstance(entry.owner, File):
            self._loop.run(entry.owner.close())

    # ------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        for fd in list(self.fds._fds):
            self.close(fd)
        self._call(self.server.aclose)
        self._call(self.client.aclose)
        self._loop.close()

    def __enter__(self) -> Usrbio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class IoRing:
    """A submission/completion ring; methods mirror 3FS's `hf3fs_py_usrbio.ioring`.
    Not thread-safe (one ring per thread)."""

    def __init__(
        self,
        owner: Usrbio,
        entries: int,
        for_read: bool,
        io_depth: int,
        timeout_ms: int,
        flags: int,
    ) -> None:
        self._owner = owner
        self.for_read = for_read
        self.spec = RingSpec(uuid.uuid4(), for_read, io_depth, timeout_ms, 0, flags)
        self._ring = RingProducer(self.spec, entries)
        try:
            owner._call(
                lambda: owner.server.register_iov(self.spec.name(), self._ring.path)
            )
        except BaseException:
            self._ring.close()
            raise

    @property
    def entries(self) -> int:
        return self._ring.entries

    @property
    def in_flight(self) -> int:
        return self._ring.in_flight

    def prepare(
        self,
        iov: IovSlice,
        read: bool,
        fd: int,
        offset: int,
        userdata: object = None,
    ) -> IoRing:
        """Queue an io of `len(iov)` bytes at `offset` of `fd`. OSError: EINVAL
        (direction differs from the ring's, empty io), EBADF (fd not registered),
        EACCES (fd's access mode forbids it), EAGAIN (ring full)."""
        if read != self.for_read or iov.length <= 0:
            raise OSError(22, "io direction differs from the ring's or io is empty")
        entry = self._owner.fds.get(fd)
        entry.check(read)
        done = IovSlice(iov.iov, iov.offset, iov.length, userdata=userdata)
        self._ring.prepare(
            iov.iov.id.bytes, iov.offset, iov.length, entry.inode, offset, done
        )
        return self

    def submit(self) -> IoRing:
        self._ring.submit()
        return self

    def wait(
        self,
        *,
        max_results: int = 0,
        min_results: int = 0,
        timeout: float | timedelta | None = None,
    ) -> list[IovSlice]:
        """Completions in completion order, each with `.result` (bytes or -errno)
        and `.userdata`. Returns what is in when `timeout` seconds pass."""
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        out = []
        for obj, result in self._ring.wait(min_results, max_results, timeout):
            assert isinstance(obj, IovSlice)
            obj.result = result
            out.append(obj)
        return out

    def close(self) -> None:
        self._owner._call(lambda: self._owner.server.deregister_iov(self.spec.name()))
        self._ring.close()
