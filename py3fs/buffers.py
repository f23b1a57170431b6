"""Buffers for data that is about to be overwritten whole, and page-aligned ones.

`bytearray(n)` zero-fills its n bytes, and a read path then overwrites every
one of them (from a socket or a file): for a 1 MiB FUSE read the zero-fill
was a tenth of the mount daemon's CPU. `scratch(n)` makes the bytearray
without filling it (CPython's PyByteArray_FromStringAndSize with no source).
Its bytes are whatever the allocator held before, so callers must overwrite
all of them before anyone reads them, and drop the buffer when that fails.

`aligned(n)` is a page-aligned buffer (an anonymous mapping): a storage server
receives write payloads into one so that it can hand them to an O_DIRECT write
as they are (`storage_service.file_chunk_store`); `page_aligned` tells whether
a view starts on a page.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

_from_string_and_size = ctypes.pythonapi.PyByteArray_FromStringAndSize
_from_string_and_size.restype = ctypes.py_object
_from_string_and_size.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

# Below this a zero-filled bytearray costs less than the ctypes call.
_SMALL = 16 * 1024


def scratch(n: int) -> bytearray:
    """A bytearray of `n` bytes with unspecified contents."""
    if n < _SMALL:
        return bytearray(n)
    buf: bytearray = _from_string_and_size(None, n)
    return buf


PAGE = mmap.PAGESIZE


def aligned(n: int) -> mmap.mmap:
    """A writable buffer of `n` bytes (zeros) that starts on a page boundary."""
    return mmap.mmap(-1, max(n, 1))


def page_aligned(view: Any) -> bool:
    """Whether writable buffer `view` starts on a page boundary (False for a
    read-only one: its address cannot be taken without a copy)."""
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return False
    return address % PAGE == 0
