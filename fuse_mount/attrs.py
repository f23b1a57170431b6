"""The daemon's copy of the attributes it last had from meta, per inode.

The kernel caches attributes for `attr_timeout` seconds, but drops its copy
of a directory after every change of its entries, and a file's size and
times after every write, even when the change is this mount's own. Meta's
reply to that change carries the new attributes (`Changed`, `OpenReply.parent`,
the sync/close reply of a file), so the GETATTR that follows is answered here,
with no meta call.

An entry is kept for `ttl` seconds from the reply it came from, and the
kernel is told to keep it only for what remains of that: an answer from here
is never older than the kernel's own cache would be. Nothing older than what
is held (by ctime) replaces it: a read (lookup, getattr, readdir) that raced
with a change is dropped, and a change reply older than the held one (a
handle's release finishing after an unlink through another name) drops the
held copy too, so the next GETATTR asks meta.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from py3fs.proto.messages import Inode, InodeType

MAX_ENTRIES = 65536


class AttrCache:
    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._nodes: dict[int, tuple[Inode, float]] = {}  # inode -> (node, expiry)

    def put(
        self, node: Inode, expiry: float | None = None, *, read: bool = False
    ) -> None:
        """Hold `node`, from the reply to a change of this mount's or, with
        `read`, from a read."""
        if self.ttl <= 0:
            return
        held = self._nodes.get(node.inode)
        if held is not None and held[0].ctime > node.ctime:
            if not read:
                # A change reply older than the held one (a handle's close
                # finishing after an unlink of another name, or another meta's
                # clock behind): which is newer is unknown, so meta decides at
                # the next GETATTR.
                del self._nodes[node.inode]
            return  # a read from before the change whose reply is held
        if expiry is None:
            expiry = self._clock() + self.ttl
        self._nodes.pop(node.inode, None)
        self._nodes[node.inode] = (node, expiry)
        if len(self._nodes) > self._max:
            del self._nodes[next(iter(self._nodes))]

    def get(self, ino: int) -> tuple[Inode, float] | None:
        """The node and the seconds it stays valid, or None."""
        held = self._nodes.get(ino)
        if held is None:
            return None
        left = held[1] - self._clock()
        if left <= 0:
            del self._nodes[ino]
            return None
        return held[0], left

    def forget(self, ino: int) -> None:
        self._nodes.pop(ino, None)

    def changed(self, node: Inode) -> bool:
        """Whether `node` (fresh from meta) differs in length or times from the
        copy held, or none is held: then the kernel may hold stale attributes."""
        held = self._nodes.get(node.inode)
        if held is None:
            return True
        old = held[0]
        return (old.length, old.mtime, old.ctime) != (
            node.length,
            node.mtime,
            node.ctime,
        )

    def entry_added(self, parent: int, child: Inode) -> None:
        """`child` was just created in `parent` by a call whose reply does not
        carry the parent (mkdir, symlink, link, mknod): meta set the parent's
        mtime and ctime to the child's ctime and, for a directory, added one
        link. Derived from the copy held, which keeps its expiry; without one
        (or with one newer than the child: another meta's clock) the parent is
        left to a GETATTR."""
        held = self._nodes.get(parent)
        if held is None or held[0].ctime > child.ctime:
            self.forget(parent)
            return
        old, expiry = held
        subdirs = 1 if child.type == InodeType.DIRECTORY else 0
        node = msgspec.structs.replace(
            old, mtime=child.ctime, ctime=child.ctime, nlink=old.nlink + subdirs
        )
        self.put(node, expiry)
