"""The USRBIO agent of the FUSE daemon: serves the iovs and rings that programs
register through `<mount>/3fs-virt/iovs/` (see `fuse_mount.hooks`).

Everything is done by `client.usrbio.UsrbioServer` on the daemon's loop with the
daemon's `Client`: ios move straight between the program's shared memory and
storage, never through the kernel's FUSE path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from client.usrbio.server import UsrbioServer

if TYPE_CHECKING:
    from client import Client

logger = logging.getLogger(__name__)


class Agent:
    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self._mnt_id: int | None = None
        self._length_listeners: list[Callable[[int], None]] = []
        self.server = UsrbioServer(
            on_length=self._length_changed, open_files=self._open_files
        )

    def add_length_listener(self, listener: Callable[[int], None]) -> None:
        self._length_listeners.append(listener)

    async def _length_changed(self, inode: int) -> None:
        for listener in self._length_listeners:
            listener(inode)
        await _invalidate_attrs(inode)

    def _open_files(self, pid: int) -> dict[int, int]:
        """Inode -> access mode (O_RDONLY/O_WRONLY/O_RDWR) of every file process
        `pid` holds open on this mount, read from /proc (not from the ring:
        a ring entry's inode number is whatever the program wrote there)."""
        if self._mnt_id is None:
            self._mnt_id = mount_id(self.mountpoint)
        return open_files(pid, self._mnt_id)

    async def start(self, client: Client) -> None:
        await self.server.start(client)

    async def aclose(self) -> None:
        await self.server.aclose()

    def register_iov(self, name: str, target: str, uid: int, pid: int = 0) -> None:
        """Map `target`: it must be a /dev/shm file the caller owns (root may
        register any), so one user cannot make the agent touch another's memory."""
        path = os.path.realpath(target)
        try:
            owner = os.stat(path).st_uid
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"{target} does not exist") from None
        if uid != 0 and owner != uid:
            raise OSError(errno.EACCES, f"{target} belongs to uid {owner}")
        # The registering process owns the ring: the agent serves only inodes
        # it holds open with the right mode (3FS's registered-fd rule).
        if pid <= 0:
            # No process to check the ring's ios against: refuse, never serve
            # unchecked.
            raise OSError(errno.EPERM, "the kernel did not say which process this is")
        self.server.register_iov(name, target, uid, owner=_process_of(pid))
        logger.debug("usrbio: registered %s -> %s (uid %d)", name, target, uid)

    def deregister_iov(self, name: str) -> None:
        self.server.deregister_iov(name)

    def iov_names(self) -> list[str]:
        return self.server.iov_names()


async def _invalidate_attrs(inode: int) -> None:
    """Drop the kernel's cached attributes of a file grown through a ring, so a
    stat right after the completion shows the new length (py3fs inode numbers
    are the FUSE inode numbers)."""
    import pyfuse3

    # It blocks until the kernel answers: never on the daemon's loop.
    with contextlib.suppress(OSError):
        await asyncio.to_thread(pyfuse3.invalidate_inode, inode, True)


def _process_of(tid: int) -> int:
    """The process (thread group) of thread `tid`: FUSE reports the calling
    thread, which may exit while its process keeps using the ring."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


def mount_id(mountpoint: str) -> int:
    """The mount id (/proc/self/mountinfo's first field) of `mountpoint`."""
    want = os.path.realpath(mountpoint)
    found = -1
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # mountinfo escapes spaces and such as octal (\040).
            point = fields[4].encode().decode("unicode_escape")
            if point == want:
                found = int(fields[0])  # the last one: mounted on top
    if found < 0:
        raise OSError(errno.ENOENT, f"{mountpoint} is not mounted")
    return found


def open_files(pid: int, mnt_id: int) -> dict[int, int]:
    """Inode -> O_ACCMODE bits of each fd of `pid` on mount `mnt_id`."""
    out: dict[int, int] = {}
    base = f"/proc/{pid}/fdinfo"
    try:
        names = os.listdir(base)
    except OSError:
        return out  # the process is gone: it holds nothing
    for name in names:
        fields: dict[str, str] = {}
        try:
            with open(f"{base}/{name}") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
        except OSError:
            continue
        if fields.get("mnt_id") != str(mnt_id) or "ino" not in fields:
            continue
        ino, mode = int(fields["ino"]), int(fields["flags"], 8) & os.O_ACCMODE
        # Several fds on one inode: keep the widest mode.
        out[ino] = os.O_RDWR if ino in out and out[ino] != mode else mode
    return out


def create_agent(mountpoint: str) -> Agent:
    return Agent(mountpoint)
