"""USRBIO through the mount serves only files the ring's owner holds open,
in the mode it holds them (issue 11; lives here for the FUSE fixtures).

The attack: a program registers its own file, then rewrites its fd table (as
a hostile program writing raw ring entries would) so the entries name
another inode, or ask to write a file it opened read-only. Before, the agent
read and wrote whatever inode a ring entry named, as the daemon: root's 0600
file in a 0700 directory leaked and was overwritten. Now those ios complete
with EBADF / EACCES, and the victim's bytes are unchanged.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import pytest

from client.usrbio.fds import FdEntry
from hf3fs_fuse import io as h3io
from hf3fs_py_usrbio._mount import fds

SECRET = b"root-only secret " * 256


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    mem = SharedMemory(size=1 << 20, create=True)
    try:
        yield mem
    finally:
        mem.close()
        mem.unlink()


def forge(fd: int, inode: int, accmode: int) -> None:
    """Make the library believe `fd` is `inode` opened with `accmode`."""
    old = fds.remove(fd)
    assert old is not None
    fds.add(fd, FdEntry(inode, accmode, old.owner))


def test_ring_cannot_name_inodes_its_owner_has_not_open(
    mnt: Path, shm: SharedMemory
) -> None:
    private = mnt / "private"
    private.mkdir(mode=0o700)
    victim = private / "secret"
    victim.write_bytes(SECRET)
    victim.chmod(0o600)
    victim_ino = os.stat(victim).st_ino
    readonly = mnt / "readonly"
    readonly.write_bytes(b"r" * 4096)

    mp = h3io.extract_mount_point(str(mnt))
    assert mp is not None
    iov = h3io.make_iovec(shm, mp)
    rring = h3io.make_ioring(mp, 8, for_read=True)
    wring = h3io.make_ioring(mp, 8, for_read=False)
    mine = mnt / "mine"
    mine.write_bytes(b"m" * 4096)
    fd = os.open(mine, os.O_RDWR)
    rfd = os.open(readonly, os.O_RDONLY)
    h3io.register_fd(fd)
    h3io.register_fd(rfd)
    try:
        # The honest path works.
        rring.prepare(iov[0:4096], True, fd, 0)
        (done,) = rring.submit().wait(min_results=1, timeout=30.0)
        assert done.result == 4096
        assert bytes(shm.buf[:4096]) == b"m" * 4096

        # A read and a write of an inode this process never opened.
        forge(fd, victim_ino, os.O_RDWR)
        shm.buf[:4096] = bytes(4096)
        rring.prepare(iov[0:4096], True, fd, 0)
        (done,) = rring.submit().wait(min_results=1, timeout=30.0)
        assert done.result == -errno.EBADF
        assert bytes(shm.buf[:4096]) == bytes(4096)
        shm.buf[:5] = b"PWNED"
        wring.prepare(iov[0:5], False, fd, 0)
        (done,) = wring.submit().wait(min_results=1, timeout=30.0)
        assert done.result == -errno.EBADF

        # A write to a file held open read-only.
        forge(rfd, os.stat(readonly).st_ino, os.O_RDWR)
        wring.prepare(iov[0:5], False, rfd, 0)
        (done,) = wring.submit().wait(min_results=1, timeout=30.0)
        assert done.result == -errno.EACCES
    finally:
        h3io.deregister_fd(fd)
        h3io.deregister_fd(rfd)
        os.close(fd)
        os.close(rfd)
        del iov
    assert victim.read_bytes() == SECRET
    assert readonly.read_bytes() == b"r" * 4096
