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
from typing import TYPE_CHECKING

from client.usrbio.server import UsrbioServer

if TYPE_CHECKING:
    from client import Client

logger = logging.getLogger(__name__)


class Agent:
    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.server = UsrbioServer(on_length=_invalidate_attrs)

    async def start(self, client: Client) -> None:
        await self.server.start(client)

    async def aclose(self) -> None:
        await self.server.aclose()

    def register_iov(self, name: str, target: str, uid: int) -> None:
        """Map `target`: it must be a /dev/shm file the caller owns (root may
        register any), so one user cannot make the agent touch another's memory."""
        path = os.path.realpath(target)
        try:
            owner = os.stat(path).st_uid
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"{target} does not exist") from None
        if uid != 0 and owner != uid:
            raise OSError(errno.EACCES, f"{target} belongs to uid {owner}")
        self.server.register_iov(name, target, uid)
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


def create_agent(mountpoint: str) -> Agent:
    return Agent(mountpoint)
