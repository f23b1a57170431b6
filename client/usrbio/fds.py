"""Registered file descriptors: what a ring needs to know about an fd (the py3fs
inode and the access mode) without a system call per io."""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class FdEntry:
    inode: int
    accmode: int  # O_RDONLY, O_WRONLY or O_RDWR
    owner: object = None  # what must stay alive with the registration (a dup, a File)

    def check(self, read: bool) -> None:
        """OSError(EACCES) when the fd was not opened for this direction."""
        if read and self.accmode == os.O_WRONLY:
            raise OSError(errno.EACCES, "fd is open for writing only")
        if not read and self.accmode == os.O_RDONLY:
            raise OSError(errno.EACCES, "fd is open for reading only")


class FdTable:
    """fd → FdEntry; safe to use from several threads."""

    def __init__(self) -> None:
        self._fds: dict[int, FdEntry] = {}
        self._lock = threading.Lock()

    def add(self, fd: int, entry: FdEntry) -> None:
        """OSError(EINVAL) when `fd` is registered already."""
        with self._lock:
            if fd in self._fds:
                raise OSError(errno.EINVAL, f"fd {fd} is registered already")
            self._fds[fd] = entry

    def remove(self, fd: int) -> FdEntry | None:
        with self._lock:
            return self._fds.pop(fd, None)

    def get(self, fd: int) -> FdEntry:
        """OSError(EBADF) when `fd` is not registered."""
        entry = self._fds.get(fd)
        if entry is None:
            raise OSError(errno.EBADF, f"fd {fd} is not registered")
        return entry

    def __len__(self) -> int:
        return len(self._fds)
