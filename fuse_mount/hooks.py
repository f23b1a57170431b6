"""The interface between the FUSE daemon and the USRBIO agent.

The daemon serves `<mount>/3fs-virt/iovs/`: a `symlink(target, iovs/<name>)`
registers a shared-memory buffer (target is its `/dev/shm` file) and an `unlink`
drops it; the agent executes I/O rings against those buffers. The agent lives
in `fuse_mount/agent.py`, which must define::

    def create_agent(mountpoint: str) -> UsrbioAgent

When that module is missing or fails to import, the daemon runs with
`NullAgent`, which refuses registrations with EOPNOTSUPP, so the mount works
without USRBIO.
"""

from __future__ import annotations

import errno
import importlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from client import Client

logger = logging.getLogger(__name__)


@runtime_checkable
class UsrbioAgent(Protocol):
    async def start(self, client: Client) -> None:
        """Called once the mount is up, with the daemon's client (its meta and
        storage connections) for the agent to do chunk I/O with."""

    async def aclose(self) -> None:
        """Called before unmounting: stop ring workers, unmap buffers."""

    def register_iov(self, name: str, target: str, uid: int, pid: int = 0) -> None:
        """`symlink(target, 3fs-virt/iovs/<name>)` by process `pid` of `uid`.
        Raise a `Py3fsError` (or `OSError`) to fail the symlink with its errno."""

    def deregister_iov(self, name: str) -> None:
        """`unlink(3fs-virt/iovs/<name>)`; NotFound gives ENOENT."""

    def iov_names(self) -> Iterable[str]:
        """The names `readdir(3fs-virt/iovs)` lists."""

    def add_length_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(inode)` whenever a ring changed a file's length, before
        the kernel is told to drop its cached attributes of it."""


class NullAgent:
    """No USRBIO: the virtual directory lists nothing and refuses buffers."""

    async def start(self, client: Client) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def register_iov(self, name: str, target: str, uid: int, pid: int = 0) -> None:
        raise OSError(errno.EOPNOTSUPP, "USRBIO is not available in this daemon")

    def deregister_iov(self, name: str) -> None:
        raise OSError(errno.ENOENT, f"no iov {name!r}")

    def iov_names(self) -> Iterable[str]:
        return ()

    def add_length_listener(self, listener: Callable[[int], None]) -> None:
        return None  # no rings, no lengths changed


def load_agent(mountpoint: str) -> UsrbioAgent:
    try:
        module = importlib.import_module("fuse_mount.agent")
        factory = module.create_agent
    except (ImportError, AttributeError) as exc:
        logger.warning("USRBIO agent unavailable (%s); iovs are refused", exc)
        return NullAgent()
    agent: UsrbioAgent = factory(mountpoint)
    return agent
