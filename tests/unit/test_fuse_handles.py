"""A gathered write that fails to reach storage is reported by the writer's
next fsync, not lost (fuse_mount.handles.FileHandle)."""

from __future__ import annotations

import pytest

pytest.importorskip("pyfuse3", reason="the FUSE mount needs pyfuse3")

from fuse_mount.handles import FileHandle
from py3fs import errors


class FailingFile:
    length = 0

    async def pwrite(self, data: bytes, offset: int) -> int:
        raise errors.NoSpace("disk full")


async def test_failed_flush_is_sticky_until_reported() -> None:
    handle = FileHandle(fh=1, ino=2, file=FailingFile(), append=False)  # type: ignore[arg-type]
    handle.pending += b"acknowledged bytes"
    with pytest.raises(errors.NoSpace):
        await handle.flush_pending()  # e.g. a reader forced the flush
    assert not handle.pending
    with pytest.raises(errors.NoSpace):
        handle.raise_error()  # the writer's fsync/close sees it
    handle.raise_error()  # reported once
