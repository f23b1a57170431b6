"""`ioring`: 3FS's I/O ring over the py3fs agent (`client.usrbio.ring`)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from datetime import timedelta

from client.usrbio import ring as _ring
from hf3fs_py_usrbio._iovec import iovec
from hf3fs_py_usrbio._mount import fds


class ioring:
    """ioring(hf3fs_mount_point, entries, for_read=True, io_depth=0,
    priority=None, timeout=None, numa=-1, flags=0). `priority` is ignored, as
    upstream; `timeout` is in ms."""

    def __init__(
        self,
        hf3fs_mount_point: str,
        entries: int,
        for_read: bool = True,
        io_depth: int = 0,
        priority: int | None = None,
        timeout: int | None = None,
        numa: int = -1,
        flags: int = 0,
    ) -> None:
        self._prod: _ring.RingProducer | None = None
        tmo = 0 if timeout is None else int(timeout)
        if tmo < 0 or entries <= 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._for_read = bool(for_read)
        spec = _ring.RingSpec(uuid.uuid4(), self._for_read, io_depth, tmo, 0, flags)
        prod = _ring.RingProducer(spec, entries)
        self._link = os.path.join(hf3fs_mount_point, "3fs-virt", "iovs", spec.name())
        try:
            # The agent in the FUSE daemon maps the ring when the link appears.
            os.symlink(prod.path, self._link)
        except OSError:
            prod.close()
            raise
        self._prod = prod

    @staticmethod
    def size_for_entries(entries: int) -> int:
        return _ring.size_for_entries(entries)

    @property
    def entries(self) -> int:
        assert self._prod is not None
        return self._prod.entries

    def prepare(
        self, iov: iovec, read: bool, fd: int, off: int, userdata: object = None
    ) -> ioring:
        """Queue `len(iov)` bytes at `off` of registered `fd`. OSError: EINVAL
        (direction or empty io), EBADF (fd not registered), EACCES (access
        mode), EAGAIN (ring full)."""
        if not isinstance(iov, iovec):
            raise TypeError("prepare needs an hf3fs_py_usrbio.iovec")
        prod = self._live()
        if bool(read) != self._for_read or len(iov) == 0 or off < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        entry = fds.get(fd)
        entry.check(bool(read))
        done = iov[:]
        done._userdata = userdata
        prod.prepare(iov._iov_id, iov._base_off, len(iov), entry.inode, off, done)
        return self

    def submit(self) -> ioring:
        self._live().submit()
        return self

    def wait(
        self,
        *,
        max_results: int = 0,
        min_results: int = 0,
        timeout: timedelta | float | None = None,
    ) -> list[iovec]:
        """Completed slices in completion order, `.result` = bytes or -errno.
        Returns what is in (maybe nothing) when `timeout` passes."""
        if isinstance(timeout, timedelta):
            seconds: float | None = timeout.total_seconds()
        elif timeout is None:
            seconds = None
        elif isinstance(timeout, float):
            seconds = timeout
        else:
            # pybind's chrono caster takes a timedelta or a float, never an int.
            raise TypeError("wait(): timeout must be a datetime.timedelta or float")
        out = []
        for obj, result in self._live().wait(min_results, max_results, seconds):
            assert isinstance(obj, iovec)
            obj._result = result
            out.append(obj)
        return out

    def _live(self) -> _ring.RingProducer:
        if self._prod is None:
            raise OSError(errno.EBADF, "ioring destroyed")
        return self._prod

    def destroy(self) -> None:
        prod, self._prod = self._prod, None
        if prod is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._link)
        prod.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.destroy()
