"""`<mount>/3fs-virt/`: the daemon-served directory 3FS programs expect.

Nothing here is stored in meta. `iovs/` holds one symlink per shared-memory
buffer registered with the USRBIO agent (see `fuse_mount.hooks`); `rm-rf/`
takes `symlink(<dir on this mount>, rm-rf/<any name>)` as a request to remove
that tree, as 3FS does, and keeps no entry afterwards.
"""

from __future__ import annotations

import errno
import inspect
import itertools
import os
import stat
from collections.abc import Awaitable, Callable

import pyfuse3

from fuse_mount.hooks import UsrbioAgent
from fuse_mount.inodes import ROOT, VIRTUAL_BASE, virtual_attributes

NAME = "3fs-virt"
VIRT = VIRTUAL_BASE + 1
IOVS = VIRTUAL_BASE + 2
RM_RF = VIRTUAL_BASE + 3
DIRS = {VIRT: 0o555, IOVS: 0o777, RM_RF: 0o777}
_CHILDREN = {"iovs": IOVS, "rm-rf": RM_RF}

RemoveTree = Callable[[str, "pyfuse3.RequestContext"], Awaitable[None]]


def _enoent() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.ENOENT)


class VirtualDir:
    def __init__(
        self, agent: UsrbioAgent, mountpoint: str, remove_tree: RemoveTree
    ) -> None:
        self._agent = agent
        self._mountpoint = os.path.realpath(mountpoint)
        self._remove_tree = remove_tree
        # Iov names get stable inode numbers while the daemon runs; targets are
        # remembered for readlink (the agent only reports names).
        self._ids = itertools.count(VIRTUAL_BASE + 16)
        self._ino_of: dict[str, int] = {}
        self._name_of: dict[int, str] = {}
        self._targets: dict[str, str] = {}
        self._owners: dict[str, int] = {}

    # ------------------------------------------------------------ lookups

    def _iov_ino(self, name: str) -> int:
        ino = self._ino_of.get(name)
        if ino is None:
            ino = next(self._ids)
            self._ino_of[name] = ino
            self._name_of[ino] = name
        return ino

    def _iov_attr(self, name: str) -> pyfuse3.EntryAttributes:
        target = self._targets.get(name, "")
        return virtual_attributes(
            self._iov_ino(name),
            stat.S_IFLNK | 0o777,
            len(target.encode()),
            self._owners.get(name, 0),
        )

    def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        if parent == ROOT and name == NAME:
            return self.getattr(VIRT)
        if parent == VIRT and name in _CHILDREN:
            return self.getattr(_CHILDREN[name])
        if parent == IOVS and name in set(self._agent.iov_names()):
            return self._iov_attr(name)
        raise _enoent()

    def getattr(self, ino: int) -> pyfuse3.EntryAttributes:
        if ino in DIRS:
            return virtual_attributes(ino, stat.S_IFDIR | DIRS[ino])
        name = self._name_of.get(ino)
        if name is None or name not in set(self._agent.iov_names()):
            raise _enoent()
        return self._iov_attr(name)

    def listing(self, ino: int) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        if ino == VIRT:
            return [(n, self.getattr(i)) for n, i in _CHILDREN.items()]
        if ino == IOVS:
            return [(n, self._iov_attr(n)) for n in sorted(self._agent.iov_names())]
        if ino == RM_RF:
            return []
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    def readlink(self, ino: int) -> bytes:
        name = self._name_of.get(ino)
        if name is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return self._targets.get(name, "").encode()

    # ------------------------------------------------------------ changes

    async def symlink(
        self, parent: int, name: str, target: str, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent == IOVS:
            await _maybe_await(self._agent.register_iov(name, target, ctx.uid, ctx.pid))
            self._targets[name] = target
            self._owners[name] = ctx.uid
            return self._iov_attr(name)
        if parent == RM_RF:
            await self._remove_tree(self.fs_path(target), ctx)
            # The link itself never exists: a fresh number the kernel will
            # forget, and whose getattr is ENOENT.
            return virtual_attributes(next(self._ids), stat.S_IFLNK | 0o777)
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent: int, name: str) -> None:
        if parent != IOVS:
            raise pyfuse3.FUSEError(errno.EPERM if parent != RM_RF else errno.ENOENT)
        await _maybe_await(self._agent.deregister_iov(name))
        self._targets.pop(name, None)
        self._owners.pop(name, None)
        ino = self._ino_of.pop(name, None)
        if ino is not None:
            self._name_of.pop(ino, None)

    def fs_path(self, target: str) -> str:
        """The py3fs path of `target`, an absolute path on this mount (EINVAL
        otherwise; EPERM for the mount root or the virtual directory)."""
        if not target.startswith("/"):
            raise pyfuse3.FUSEError(errno.EINVAL)
        path = os.path.normpath(target)
        if path == self._mountpoint:
            raise pyfuse3.FUSEError(errno.EPERM)
        if not path.startswith(self._mountpoint + "/"):
            raise pyfuse3.FUSEError(errno.EXDEV)
        rel = path[len(self._mountpoint) :]
        if rel == f"/{NAME}" or rel.startswith(f"/{NAME}/"):
            raise pyfuse3.FUSEError(errno.EPERM)
        return rel


async def _maybe_await(result: object) -> None:
    # The agent may implement its hooks as plain or async functions.
    if inspect.isawaitable(result):
        await result
