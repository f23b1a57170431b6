"""`iovec`: a shared buffer registered with the mount's agent, and its slices.

A numpy.ndarray subclass because Python 3.11 classes cannot export the buffer
protocol themselves (PEP 688 came in 3.12), and numpy gives format 'B', so
`memoryview(iov)[:n] = b"..."` works as with 3FS's compiled iovec. The memory
is our own mapping of the /dev/shm file, so no export is left on the caller's
`shm.buf` (`SharedMemory.close()` must still succeed).
"""

from __future__ import annotations

import errno
import mmap
import os
import uuid
from typing import Any

import numpy as np

from client.usrbio.iov import map_shm


def _address(buf: Any) -> tuple[int, int]:
    """(address, length) of a buffer; the export is released before returning."""
    with memoryview(buf) as mv:
        n = mv.nbytes
        if not n:
            return 0, 0
        arr = np.frombuffer(mv.cast("B") if mv.ndim != 1 else mv, dtype=np.uint8)
        addr = int(arr.ctypes.data)
        del arr
    return addr, n


def _shm_from_maps(addr: int) -> str | None:
    """The file mapped at `addr` (fallback when the mount shows no link target)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi and len(parts) == 6:
                path = parts[5].strip()
                if path.endswith(" (deleted)"):
                    return f"/proc/self/map_files/{parts[0]}"
                return path
    return None


class iovec(np.ndarray):
    """iovec(base, id, hf3fs_mount_point, block_size=0, numa=-1)."""

    _iov_id: bytes
    _base_off: int
    _orig: tuple[int, int]
    _mm: mmap.mmap | None

    def __new__(
        cls,
        base: Any,
        id: str,
        hf3fs_mount_point: str,
        block_size: int = 0,
        numa: int = -1,
    ) -> iovec:
        with memoryview(base) as mv:
            if mv.readonly:
                raise TypeError("iovec base must be a writable buffer")
        ident = uuid.UUID(id)  # ValueError for a bad id, like upstream
        addr, size = _address(base)
        name = id + (f".b{block_size}" if block_size > 0 else "")
        link = os.path.join(hf3fs_mount_point, "3fs-virt", "iovs", name)
        try:
            target = os.readlink(link)
        except OSError:
            target = _shm_from_maps(addr) or ""
        if not target:
            raise OSError(errno.ENOENT, f"no shared memory behind {link}")
        if target.startswith("/proc/self/map_files/"):
            fd = os.open(target, os.O_RDWR)
            try:
                mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        else:
            mm = map_shm(target)
        if len(mm) < size:
            raise OSError(errno.EINVAL, f"{target} is smaller than the buffer")
        self = np.frombuffer(mm, dtype=np.uint8, count=size).view(cls)
        self._iov_id = ident.bytes
        self._base_off = 0
        self._orig = (addr, size)
        self._mm = mm
        return self

    def __array_finalize__(self, obj: Any) -> None:
        self._iov_id = getattr(obj, "_iov_id", b"")
        self._base_off = getattr(obj, "_base_off", 0)
        self._orig = getattr(obj, "_orig", (0, 0))
        self._mm = getattr(obj, "_mm", None)
        self._result = 0
        self._userdata: object = None

    def __getitem__(self, key: Any) -> iovec:
        if not isinstance(key, slice):
            raise TypeError("iovec indices must be slices")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("iovec slices must have step 1")
        stop = max(start, stop)
        out = np.ndarray.__getitem__(self, slice(start, stop))
        out._base_off = self._base_off + start
        return out  # type: ignore[no-any-return]

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("'iovec' object does not support item assignment")

    @property
    def result(self) -> int:
        return self._result

    @property
    def userdata(self) -> object:
        return self._userdata

    @property
    def base_off(self) -> int:
        return self._base_off

    def slice_by(self, buf: Any) -> iovec:
        """The slice covering `buf`: a view of this iovec's memory (or of the
        buffer it was made from). IndexError when `buf` lies outside."""
        addr, n = _address(buf)
        own = int(self.ctypes.data)
        if own <= addr and addr + n <= own + len(self):
            return self[addr - own : addr - own + n]
        orig = self._orig[0] + self._base_off
        if orig <= addr and addr + n <= orig + len(self):
            return self[addr - orig : addr - orig + n]
        raise IndexError("buffer is outside the iovec")

    def __repr__(self) -> str:
        return (
            f"<hf3fs_py_usrbio.iovec {uuid.UUID(bytes=self._iov_id)} "
            f"off={self._base_off} len={len(self)}>"
        )
