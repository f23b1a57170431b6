"""FUSE inodes: numbering, the names the kernel knows them by, and attributes.

A FUSE inode number is the py3fs inode id itself (the root is 1 in both), so
`fstat().st_ino` on the mount names the py3fs inode and the USRBIO agent needs no
table of its own. Meta addresses the namespace by path, while the kernel sends
(parent inode, name); `InodeMap` keeps, for every inode the kernel holds a
lookup reference on, the names it was looked up under, and rebuilds a path from
them. Names go when the kernel forgets the inode or when this daemon unlinks or
renames them; changes made by other clients are seen as ENOENT (the kernel
then looks the name up again) or caught by comparing inode ids where it
matters (open).
"""

from __future__ import annotations

import errno
import stat
from collections import Counter

import pyfuse3

from py3fs.proto.messages import Inode, InodeType

ROOT = pyfuse3.ROOT_INODE
# The kernel treats a FUSE inode as an opaque 64-bit number; py3fs allocates
# ids from 1 upwards, so this range is free for the daemon's virtual entries.
VIRTUAL_BASE = 1 << 62
BLKSIZE = 1 << 20  # st_blksize: tools size their buffers by it; FUSE caps at 1 MiB

_TYPE_BITS = {
    InodeType.FILE: stat.S_IFREG,
    InodeType.DIRECTORY: stat.S_IFDIR,
    InodeType.SYMLINK: stat.S_IFLNK,
}


def is_virtual(ino: int) -> bool:
    return ino >= VIRTUAL_BASE


def join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


class InodeMap:
    def __init__(self) -> None:
        self._names: dict[int, set[tuple[int, str]]] = {}
        self._entries: dict[tuple[int, str], int] = {}
        self._lookups: Counter[int] = Counter()

    def path(self, ino: int) -> str:
        """A current path of `ino`; ENOENT when it has no name left (an unlinked
        file, or one the kernel has forgotten)."""
        parts: list[str] = []
        seen = set()
        while ino != ROOT:
            names = self._names.get(ino)
            if not names or ino in seen:
                raise pyfuse3.FUSEError(errno.ENOENT)
            seen.add(ino)
            # min(): a hard-linked inode resolves to the same name every time.
            ino, name = min(names)
            parts.append(name)
        return "/" + "/".join(reversed(parts))

    def child_path(self, parent: int, name: str) -> str:
        return join(self.path(parent), name)

    def entry(self, parent: int, name: str) -> int | None:
        return self._entries.get((parent, name))

    def remember(self, ino: int, parent: int, name: str) -> None:
        """A reply gave the kernel `ino` under (parent, name): one more lookup
        reference (released by `forget`)."""
        if ino == ROOT or is_virtual(ino):
            return
        self._lookups[ino] += 1
        self.add_name(ino, parent, name)

    def ref(self, ino: int) -> None:
        """A lookup reference without a new name (a `..` lookup)."""
        if ino != ROOT and not is_virtual(ino):
            self._lookups[ino] += 1

    def add_name(self, ino: int, parent: int, name: str) -> None:
        old = self._entries.get((parent, name))
        if old is not None and old != ino:
            self._drop_name(old, parent, name)
        self._entries[(parent, name)] = ino
        self._names.setdefault(ino, set()).add((parent, name))

    def removed(self, parent: int, name: str) -> int | None:
        ino = self._entries.get((parent, name))
        if ino is not None:
            self._drop_name(ino, parent, name)
        return ino

    def moved(self, parent: int, name: str, new_parent: int, new_name: str) -> None:
        ino = self.removed(parent, name)
        if ino is not None:
            self.removed(new_parent, new_name)
            self.add_name(ino, new_parent, new_name)

    def forget(self, ino: int, count: int) -> None:
        self._lookups[ino] -= count
        if self._lookups[ino] > 0:
            return
        del self._lookups[ino]
        for parent, name in self._names.pop(ino, set()):
            if self._entries.get((parent, name)) == ino:
                del self._entries[(parent, name)]

    def _drop_name(self, ino: int, parent: int, name: str) -> None:
        self._entries.pop((parent, name), None)
        names = self._names.get(ino)
        if names is not None:
            names.discard((parent, name))


def attributes(
    node: Inode, length: int | None = None, timeout: float = 1.0
) -> pyfuse3.EntryAttributes:
    """The kernel's view of a py3fs inode; `length` overrides the file length
    (it includes writes not yet reported to meta)."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = node.inode
    attr.generation = 0
    attr.entry_timeout = timeout
    attr.attr_timeout = timeout
    attr.st_mode = _TYPE_BITS[node.type] | (node.mode & 0o7777)
    attr.st_nlink = node.nlink
    attr.st_uid = node.uid
    attr.st_gid = node.gid
    attr.st_rdev = 0
    if node.type == InodeType.FILE:
        size = node.length if length is None else length
    elif node.type == InodeType.SYMLINK:
        size = len(node.target.encode())
    else:
        size = 4096
    attr.st_size = size
    attr.st_blksize = BLKSIZE
    attr.st_blocks = (size + 511) // 512
    attr.st_atime_ns = int(node.atime * 1e9)
    attr.st_mtime_ns = int(node.mtime * 1e9)
    attr.st_ctime_ns = int(node.ctime * 1e9)
    return attr


def virtual_attributes(
    ino: int, mode: int, size: int = 0, uid: int = 0
) -> pyfuse3.EntryAttributes:
    """Attributes of a daemon-served entry (no caching: its contents change
    without the kernel seeing namespace operations)."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = ino
    attr.entry_timeout = 0
    attr.attr_timeout = 0
    attr.st_mode = mode
    attr.st_nlink = 2 if stat.S_ISDIR(mode) else 1
    attr.st_uid = uid
    attr.st_gid = 0
    attr.st_size = size
    attr.st_blksize = BLKSIZE
    return attr
