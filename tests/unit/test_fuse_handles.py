"""Write-behind of the FUSE handles (fuse_mount.handles.FileHandle): bounded,
drained by flush, and a write that fails to reach storage is reported by the
writer's next fsync, not lost."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("pyfuse3", reason="the FUSE mount needs pyfuse3")

from fuse_mount import handles
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


class SlowFile:
    length = 0

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.written: list[tuple[int, int]] = []

    async def pwrite(self, data: bytes, offset: int) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.001 * (offset % 3))  # finish out of order
        self.running -= 1
        self.written.append((offset, len(data)))
        return len(data)


async def test_write_behind_is_bounded_and_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sends run in the background, at most WRITE_BEHIND bytes at a time (the
    wait for a slot must not spin on finished sends), and flush waits for all."""
    monkeypatch.setattr(handles, "WRITE_BEHIND", 3 * 1000)
    file = SlowFile()
    handle = FileHandle(fh=1, ino=2, file=file, append=False)  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        for i in range(50):
            await handle.send(bytearray(1000), i * 1000, [handle])
            assert handle.inflight_bytes <= 4 * 1000
        await handle.flush_pending()
    assert not handle.inflight
    assert sorted(file.written) == [(i * 1000, 1000) for i in range(50)]
    assert 1 < file.most <= 4


async def test_background_send_failure_is_reported() -> None:
    handle = FileHandle(fh=1, ino=2, file=FailingFile(), append=False)  # type: ignore[arg-type]
    await handle.send(bytearray(b"x"), 0, [handle])
    await handle.flush_pending()
    with pytest.raises(errors.NoSpace):
        handle.raise_error()
