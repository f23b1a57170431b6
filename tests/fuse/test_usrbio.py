"""Acceptance 3: programs written only against `hf3fs_fuse.io` run on a py3fs
mount (our `hf3fs_py_usrbio` + the agent in the FUSE daemon)."""

from __future__ import annotations

import errno
import os
import random
import threading
from datetime import timedelta
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import pytest

from hf3fs_fuse import io as h3io

MiB = 1 << 20


def _errno(fn: object, *args: object) -> int:
    """The errno of the OSError `fn(*args)` raises."""
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("no OSError raised")


@pytest.fixture
def shm() -> object:
    mem = SharedMemory(size=16 * MiB, create=True)
    try:
        yield mem
    finally:
        mem.close()
        mem.unlink()


def _mp(path: Path) -> str:
    mp = h3io.extract_mount_point(str(path))
    assert mp is not None
    return mp


def test_extract_mount_point(mount: object, mnt: Path, tmp_path: Path) -> None:
    assert h3io.extract_mount_point(str(mnt)) == str(mount.path)  # type: ignore[attr-defined]
    assert h3io.extract_mount_point(str(tmp_path)) is None
    with pytest.raises(RuntimeError):
        h3io.extract_mount_point(str(mnt / "missing"))


def test_read_file(mnt: Path) -> None:
    data = os.urandom(3 * MiB + 123)
    (mnt / "f.bin").write_bytes(data)
    assert h3io.read_file(str(mnt / "f.bin")) == data
    got: list[tuple[int, bytes]] = []
    h3io.read_file(
        str(mnt / "f.bin"),
        block_size=MiB,
        cb=lambda buf, off: got.append((off, bytes(buf))),
    )
    assert [o for o, _ in got] == [0, MiB, 2 * MiB, 3 * MiB]
    assert b"".join(b for _, b in got) == data


def test_batches_on_one_iovec(mnt: Path, shm: SharedMemory) -> None:
    mp = _mp(mnt)
    iov = h3io.make_iovec(shm, mp)
    wring = h3io.make_ioring(mp, 64, for_read=False)
    rring = h3io.make_ioring(mp, 64, for_read=True)
    payload = os.urandom(8 * MiB)
    shm.buf[: 8 * MiB] = payload
    fd = os.open(mnt / "batch.bin", os.O_RDWR | os.O_CREAT, 0o644)
    h3io.register_fd(fd)
    try:
        offsets = list(range(0, 8 * MiB, 256 * 1024))
        random.shuffle(offsets)
        for off in offsets:
            wring.prepare(iov[off : off + 256 * 1024], False, fd, off, userdata=off)
        done = wring.submit().wait(min_results=len(offsets))
        assert sorted(d.userdata for d in done) == sorted(offsets)
        assert all(d.result == 256 * 1024 for d in done)
        assert h3io.force_fsync(fd) == 0
        h3io.deregister_fd(fd)
        os.close(fd)
        # The agent reported the length before posting the completions.
        assert os.path.getsize(mnt / "batch.bin") == 8 * MiB
        fd = os.open(mnt / "batch.bin", os.O_RDONLY)
        h3io.register_fd(fd)
        # Read it back into the other half of the same buffer, 4 KiB pieces too.
        for off in offsets:
            dst = iov[8 * MiB + off : 8 * MiB + off + 256 * 1024]
            rring.prepare(dst, True, fd, off, userdata=("big", off))
        done = rring.submit().wait(min_results=len(offsets), timeout=60.0)
        assert len(done) == len(offsets)
        assert all(d.result == 256 * 1024 for d in done)
        assert bytes(shm.buf[8 * MiB :]) == payload
        assert bytes(memoryview(iov.iov)[8 * MiB : 8 * MiB + 10]) == payload[:10]
        for i in range(40):
            rring.prepare(iov[i * 4096 : (i + 1) * 4096], True, fd, i * 12345)
        got = []
        while len(got) < 40:
            got += rring.submit().wait(min_results=40, timeout=timedelta(seconds=60))
        for d in got:
            assert d.result == 4096
    finally:
        h3io.deregister_fd(fd)
        os.close(fd)
        del iov


def test_ring_of_100k_entries(mnt: Path, shm: SharedMemory) -> None:
    mp = _mp(mnt)
    (mnt / "small.bin").write_bytes(b"x" * 1000)
    iov = h3io.make_iovec(shm, mp)
    ring = h3io.make_ioring(mp, 100_000)
    assert ring.ior.entries == 100_000
    fd = os.open(mnt / "small.bin", os.O_RDONLY)
    h3io.register_fd(fd)
    try:
        # 100,000 ios in flight at once: reads at EOF cost no storage I/O.
        for i in range(100_000):
            ring.prepare(iov[i * 16 : i * 16 + 16], True, fd, 1000 + i)
        assert _errno(ring.prepare, iov[0:16], True, fd, 0) == errno.EAGAIN
        done = ring.submit().wait(min_results=100_000)
        assert len(done) == 100_000
        assert {d.result for d in done} == {0}
        for i in range(100):
            ring.prepare(iov[i * 10 : i * 10 + 10], True, fd, i * 10, userdata=i)
        done = ring.submit().wait(min_results=100)
        assert sorted(d.userdata for d in done) == list(range(100))
        assert bytes(shm.buf[:1000]) == b"x" * 1000
    finally:
        h3io.deregister_fd(fd)
        os.close(fd)


def test_fds_registered_from_threads(mnt: Path) -> None:
    mp = _mp(mnt)
    blobs = {i: os.urandom(100_000 + i) for i in range(6)}
    for i, blob in blobs.items():
        (mnt / f"t{i}").write_bytes(blob)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            mem = SharedMemory(size=MiB, create=True)
            try:
                iov = h3io.make_iovec(mem, mp)
                ring = h3io.make_ioring(mp, 8)
                fd = os.open(mnt / f"t{i}", os.O_RDONLY)
                h3io.register_fd(fd)
                ring.prepare(iov[: len(blobs[i])], True, fd, 0)
                [done] = ring.submit().wait(min_results=1)
                assert done.result == len(blobs[i])
                assert bytes(mem.buf[: done.result]) == blobs[i]
                h3io.deregister_fd(fd)
                os.close(fd)
                del iov, ring
            finally:
                mem.close()
                mem.unlink()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_errors(mnt: Path, shm: SharedMemory, tmp_path: Path) -> None:
    mp = _mp(mnt)
    (mnt / "e.bin").write_bytes(b"y" * 5000)
    iov = h3io.make_iovec(shm, mp)
    rring = h3io.make_ioring(mp, 16)
    wring = h3io.make_ioring(mp, 16, for_read=False)
    fd = os.open(mnt / "e.bin", os.O_RDONLY)
    local = os.open(tmp_path / "local", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # Not registered yet.
        assert _errno(rring.prepare, iov[:10], True, fd, 0) == errno.EBADF
        assert _errno(h3io.register_fd, local) == errno.EBADF  # not on 3FS
        h3io.register_fd(fd)
        assert _errno(h3io.register_fd, fd) == errno.EINVAL
        assert _errno(wring.prepare, iov[:10], False, fd, 0) == errno.EACCES
        assert _errno(rring.prepare, iov[:10], False, fd, 0) == errno.EINVAL
        with pytest.raises(TypeError):
            rring.wait(timeout=1)
        assert rring.wait() == []
        rring.prepare(iov[:8192], True, fd, 1000, userdata="short")
        rring.prepare(iov[8192:9000], True, fd, 6000, userdata="past")
        done = {d.userdata: d.result for d in rring.submit().wait(min_results=2)}
        assert done == {"short": 4000, "past": 0}
    finally:
        h3io.deregister_fd(fd)
        h3io.deregister_fd(fd)  # never raises
        os.close(fd)
        os.close(local)
        h3io.deregister_fd(local)


def test_iovec_buffer_rules(mnt: Path, shm: SharedMemory) -> None:
    iov = h3io.make_iovec(shm, _mp(mnt))
    raw = iov.iov
    view = memoryview(raw)
    assert (view.format, view.ndim, view.readonly) == ("B", 1, False)
    view[:3] = b"abc"
    assert bytes(shm.buf[:3]) == b"abc"
    part = raw[10:20]
    assert (len(part), part.base_off) == (10, 10)
    assert raw.slice_by(memoryview(raw)[100:200]).base_off == 100
    assert raw.slice_by(shm.buf[300:310]).base_off == 300
    with pytest.raises(TypeError):
        raw[3]
    with pytest.raises(ValueError, match="step"):
        raw[0:10:2]
    with pytest.raises(IndexError):
        raw[0:10].slice_by(shm.buf[20:30])
    assert h3io.ioring.size_for_entries(10) == 16 + 32 + 96 * 11 + 4096
