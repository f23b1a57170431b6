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

    async def pwrite(
        self, data: bytes, offset: int, sync: bool = False, stream: bool = False
    ) -> int:
        raise errors.NoSpace("disk full")


async def test_failed_flush_is_sticky_until_reported() -> None:
    handle = FileHandle(fh=1, ino=2, file=FailingFile(), append=False)  # type: ignore[arg-type]
    handle.gather(b"acknowledged bytes", 0)
    await handle.flush_pending([handle])  # e.g. a reader forced the flush
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
        self.synced: list[int] = []
        self.streamed: list[int] = []

    async def pwrite(
        self, data: bytes, offset: int, sync: bool = False, stream: bool = False
    ) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.001 * (offset % 3))  # finish out of order
        self.running -= 1
        self.written.append((offset, len(data)))
        self.synced.extend([offset] if sync else [])
        self.streamed.extend([offset] if stream else [])
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
        await handle.flush_pending([handle])
    assert not handle.inflight
    assert sorted(file.written) == [(i * 1000, 1000) for i in range(50)]
    assert 1 < file.most <= 4
    assert file.synced == []


async def test_close_sends_gathered_bytes_as_a_sync_write() -> None:
    """What close/fsync sends goes to disk as it is written (the file then
    needs no separate flush round); sends on the way there do not."""
    file = SlowFile()
    handle = FileHandle(fh=1, ino=2, file=file, append=False)  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        await handle.send(bytearray(1000), 0, [handle])
        handle.gather(b"tail", 1000)
        await handle.flush_pending([handle], sync=True)
    assert sorted(file.written) == [(0, 1000), (1000, 4)]
    assert file.synced == [1000]
    # The write-behind's whole chunks go as a stream (replicas may keep them
    # out of their page cache); the gathered tail does not.
    assert file.streamed == [0]


async def test_background_send_failure_is_reported() -> None:
    handle = FileHandle(fh=1, ino=2, file=FailingFile(), append=False)  # type: ignore[arg-type]
    await handle.send(bytearray(b"x"), 0, [handle])
    await handle.flush_pending([handle])
    with pytest.raises(errors.NoSpace):
        handle.raise_error()


class GatedFile:
    """A file whose writes finish only when the test says so."""

    def __init__(self) -> None:
        self.written_end = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    @property
    def length(self) -> int:
        return self.written_end

    async def pwrite(
        self, data: bytes, offset: int, sync: bool = False, stream: bool = False
    ) -> int:
        self.started.set()
        await self.release.wait()
        self.written_end = max(self.written_end, offset + len(data))
        return len(data)

    def forget_writes_past(self, length: int) -> None:
        self.written_end = min(self.written_end, length)


async def test_length_covers_bytes_being_flushed() -> None:
    """While gathered bytes are on their way to storage, the handle's length
    still covers them (a getattr then must not shrink the kernel's file size),
    and a second flush (another reader) waits for the first one's send."""
    file = GatedFile()
    handle = FileHandle(fh=1, ino=2, file=file, append=False)  # type: ignore[arg-type]
    handle.gather(b"a" * 100, 0)
    handle.gather(b"b" * 50, 100)
    assert handle.length == 150
    async with asyncio.timeout(10):
        first = asyncio.ensure_future(handle.flush_pending([handle]))
        await file.started.wait()
        assert handle.length == 150
        second = asyncio.ensure_future(handle.flush_pending([handle]))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not second.done()  # the send is still under way
        file.release.set()
        await first
        await second
    assert handle.length == 150
    assert not handle.inflight
    handle.truncated(20)
    assert handle.accepted_end == 20
