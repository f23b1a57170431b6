"""The mount's caches (issue 9): the kernel keeps names and attributes for
30 s (3FS's defaults) and the daemon answers the GETATTRs that follow its own
changes from meta's replies, yet what this mount changes shows at once and
what another client changed shows at the next open (close-to-open).

Every check reads what a fresh stat or open returns right after the change:
nothing waits for a cache to expire."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import subprocess
from pathlib import Path

from conftest import Mount
from harness import client_for

from py3fs.cluster import LocalCluster


def cluster_path(mount: Mount, local: Path) -> str:
    return "/" + str(local.relative_to(mount.path))


def test_other_client_changes_show_at_open(
    mount: Mount, mnt: Path, fuse_cluster: LocalCluster
) -> None:
    """The mount caches a file's size, another client rewrites it longer (and
    later shorter): opening it through the mount reads exactly the new bytes."""
    f = mnt / "shared"
    f.write_bytes(b"old")
    assert os.stat(f).st_size == 3  # cached by the kernel and the daemon
    assert f.read_bytes() == b"old"

    async def rewrite(data: bytes) -> None:
        async with client_for(fuse_cluster) as fs:
            await fs.write_file(cluster_path(mount, f), data)

    asyncio.run(rewrite(b"new and longer"))
    # A stat here may still answer 3 (attributes are cached for 30 s); it
    # leaves the kernel's copy valid, so only the open can renew it.
    os.stat(f)
    with open(f, "rb") as fh:
        assert fh.read() == b"new and longer"
        assert os.fstat(fh.fileno()).st_size == len(b"new and longer")
    asyncio.run(rewrite(b"tiny"))
    os.stat(f)
    with open(f, "rb") as fh:
        assert fh.read() == b"tiny"
    assert os.stat(f).st_size == 4


def test_own_changes_show_at_once(mnt: Path) -> None:
    """Directory times and link counts, a file's size after a write and its
    link count after an unlink: what a stat returns right after each change."""
    d = mnt / "d"
    d.mkdir()
    before = os.stat(d)
    assert before.st_nlink == 2
    (d / "sub").mkdir()
    after = os.stat(d)
    assert after.st_nlink == 3
    assert after.st_mtime_ns >= before.st_mtime_ns
    assert after.st_mtime_ns == os.stat(d / "sub").st_ctime_ns

    with open(d / "f", "wb") as fh:
        fh.write(b"12345")
    assert os.stat(d / "f").st_size == 5
    created = os.stat(d).st_mtime_ns
    assert created >= after.st_mtime_ns

    os.link(d / "f", d / "g")
    assert os.stat(d / "f").st_nlink == 2
    os.unlink(d / "g")
    assert os.stat(d / "f").st_nlink == 1
    assert os.stat(d).st_mtime_ns >= created

    with open(d / "f", "rb") as fh:
        os.unlink(d / "f")
        assert os.fstat(fh.fileno()).st_nlink == 0
        assert fh.read() == b"12345"
    os.rmdir(d / "sub")
    assert os.stat(d).st_nlink == 2

    os.rename(d, mnt / "e")
    assert not d.exists()
    assert stat.S_ISDIR(os.stat(mnt / "e").st_mode)
    assert os.listdir(mnt / "e") == []


def test_other_client_unlink_and_create_show_after_open(
    mount: Mount, mnt: Path, fuse_cluster: LocalCluster
) -> None:
    """A name another client removed is gone for an open through the mount
    (ENOENT from meta, not the kernel's cached entry)."""
    f = mnt / "gone"
    f.write_bytes(b"x")
    assert f.exists()

    async def remove() -> None:
        async with client_for(fuse_cluster) as fs:
            await fs.unlink(cluster_path(mount, f))

    asyncio.run(remove())
    try:
        with open(f, "rb"):
            pass
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("opened a file another client had removed")


def _pread_uncached(fd: int, n: int, offset: int) -> bytes:
    """A pread that reaches the daemon: the kernel's cached pages of the file
    are dropped first, so the answer comes from the mount's block cache or
    storage, not from the page cache."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return os.pread(fd, n, offset)


def test_small_reads_see_own_writes_at_once_and_others_at_open(
    mount: Mount, mnt: Path, fuse_cluster: LocalCluster
) -> None:
    """Small reads are served from the mount's block cache (whole 64 KiB
    blocks): a write or truncate through the mount shows in the next read,
    through any fd, and another client's rewrite shows at the next open."""
    rng = random.Random(5)
    f = mnt / "blocks"
    data = bytearray(rng.randbytes(1 << 20))
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        offsets = [rng.randrange(len(data) - 4096) for _ in range(64)]
        for off in offsets + offsets:  # the second round hits the cache
            assert _pread_uncached(fd, 4096, off) == data[off : off + 4096]
        # Overwrite inside blocks just read, through another fd, still open.
        wfd = os.open(f, os.O_WRONLY)
        try:
            for off in offsets[:8]:
                patch = rng.randbytes(100)
                assert os.pwrite(wfd, patch, off + 50) == 100
                data[off + 50 : off + 150] = patch
                got = _pread_uncached(fd, 4096, off)
                assert got == data[off : off + 4096]
            os.ftruncate(wfd, 500_000)
            del data[500_000:]
            assert _pread_uncached(fd, 4096, 498_000) == data[498_000:]
            os.ftruncate(wfd, 600_000)
            data += bytes(100_000)
            assert _pread_uncached(fd, 4096, 499_000) == data[499_000:503_096]
        finally:
            os.close(wfd)
    finally:
        os.close(fd)

    # Another client rewrites it, same length, other bytes: a fresh open
    # reads them, not the blocks this mount held.
    fd = os.open(f, os.O_RDONLY)
    try:
        assert _pread_uncached(fd, 4096, 8192) == data[8192:12288]
    finally:
        os.close(fd)
    new = rng.randbytes(len(data))

    async def rewrite() -> None:
        async with client_for(fuse_cluster) as fs:
            await fs.write_file(cluster_path(mount, f), new)

    asyncio.run(rewrite())
    fd = os.open(f, os.O_RDONLY)
    try:
        assert _pread_uncached(fd, 4096, 8192) == new[8192:12288]
        assert _pread_uncached(fd, 4096, 598_000) == new[598_000:]
    finally:
        os.close(fd)


def test_mtime_set_by_tools_survives_close(
    mount: Mount, mnt: Path, fuse_cluster: LocalCluster
) -> None:
    """tar and rsync set a file's mtime on the open fd after writing it, cp -p
    and copytree right after close(2): the length the close reports to meta
    (and the release the kernel sends after close returns) must not replace
    that mtime with the time of the close. Read from meta, not the mount."""
    before_close = mnt / "tar-like"
    after_close = mnt / "copytree-like"
    fd = os.open(before_close, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * 5000)
    os.utime(fd, ns=(1_000_000_000_123, 2_000_000_000_456))
    os.write(fd, b"")  # an empty write is no write: the mtime stays
    os.close(fd)
    after_close.write_bytes(b"y" * 100)
    os.utime(after_close, ns=(3_000_000_000_000, 4_000_000_000_789))
    # tar's own call: the mtime alone (atime UTIME_OMIT) while the fd is open;
    # the mount keeps it for the close's Sync, and a stat shows it at once.
    mtime_only = mnt / "tar-mtime-only"
    fd = os.open(mtime_only, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"w" * 70_000)
    touch = ["touch", "-m", "-d", "@6000.000000321", str(mtime_only)]
    subprocess.run(touch, check=True)
    assert os.stat(mtime_only).st_mtime_ns == 6_000_000_000_321
    os.close(fd)

    async def mtimes() -> list[int]:
        async with client_for(fuse_cluster) as fs:
            out = []
            for _ in range(5):  # the kernel's release may come a little later
                for f in (before_close, after_close, mtime_only):
                    node = await fs.stat(cluster_path(mount, f))
                    out.append(node.mtime)
                    assert node.length == f.stat().st_size
                await asyncio.sleep(0.2)
            return out

    assert set(asyncio.run(mtimes())) == {
        2_000_000_000_456,
        4_000_000_000_789,
        6_000_000_000_321,
    }
    assert os.stat(before_close).st_mtime_ns == 2_000_000_000_456
    # A write after the utime makes the mtime current again.
    with open(before_close, "r+b") as fh:
        fh.write(b"z")
    assert os.stat(before_close).st_mtime_ns > 2_000_000_000_456
