"""Directory listing for the FUSE operations (a mixin of `Operations`).

readdir offsets index the open handle's entries, which grow a page at a time
by name cursor (`ListDir` start_after), so an offset stays valid while
entries are added or removed, and no entry is skipped or repeated. The first
page starts with `.` and `..`. Each page comes with its entries' inodes in the
same reply (readdirplus: the kernel caches their attributes).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pyfuse3

from client import Client
from client.meta_client import acting_as
from fuse_mount import virt
from fuse_mount.errno_map import fuse_errors
from fuse_mount.groups import groups_of
from fuse_mount.inodes import ROOT, is_virtual
from py3fs.proto.messages import DirEntry, Inode, InodeType, ListDirReq

PAGE = 128  # directory entries fetched and stat'ed per round


@dataclass
class DirHandle:
    ino: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    entries: list[DirEntry] = field(default_factory=list)
    nodes: list[Inode | pyfuse3.EntryAttributes | None] = field(default_factory=list)
    more: bool = True
    after: str = ""


class DirectoryOps:
    client: Client
    virt: virt.VirtualDir

    def __init__(self) -> None:
        self._dirs: dict[int, DirHandle] = {}
        self._dir_ids = itertools.count(1)

    def _attr(
        self, node: Inode, timeout: float | None = None, *, read: bool = False
    ) -> pyfuse3.EntryAttributes:
        raise NotImplementedError

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if is_virtual(inode):
            self.virt.listing(inode)  # ENOTDIR for an iov link
            handle = DirHandle(inode, ctx.uid, ctx.gid, more=False)
        else:
            handle = DirHandle(inode, ctx.uid, ctx.gid, groups_of(ctx.pid, ctx.uid))
            # The first page now, so EACCES/ENOTDIR surface at opendir.
            await self._fetch(handle)
            if inode == ROOT:
                # After `.` and `..`: offsets of later entries never move.
                handle.entries.insert(
                    2, DirEntry(virt.NAME, virt.VIRT, InodeType.DIRECTORY)
                )
                handle.nodes.insert(2, self.virt.getattr(virt.VIRT))
        fh = next(self._dir_ids)
        self._dirs[fh] = handle
        return fh

    async def _fetch(self, handle: DirHandle) -> None:
        with acting_as(handle.uid, handle.gid, handle.groups):
            req = ListDirReq(
                at=handle.ino,
                start_after=handle.after,
                limit=PAGE,
                dots=True,
                stat=True,
            )
            reply = await self.client.meta.list_dir(req)
        handle.entries.extend(reply.entries)
        handle.nodes.extend(reply.inodes)
        handle.more = reply.more and bool(reply.entries)
        if reply.entries:
            handle.after = reply.entries[-1].name

    @fuse_errors
    async def readdir(
        self, fh: int, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        handle = self._dirs[fh]
        if is_virtual(handle.ino):
            listing = self.virt.listing(handle.ino)
            for i, (name, attr) in enumerate(listing[start_id:], start_id + 1):
                if not pyfuse3.readdir_reply(token, name.encode(), attr, i):
                    return
            return
        # Offsets index the handle's entries, which grow a page at a time by
        # name cursor, so an offset stays valid while entries come and go.
        pos = start_id
        while True:
            while handle.more and len(handle.entries) <= pos:
                await self._fetch(handle)
            if pos >= len(handle.entries):
                return
            entry, node = handle.entries[pos], handle.nodes[pos]
            pos += 1
            if node is None:
                continue  # a dangling entry: removed meanwhile
            attr = (
                node
                if isinstance(node, pyfuse3.EntryAttributes)
                else self._attr(node, read=True)
            )
            if not pyfuse3.readdir_reply(token, entry.name.encode(), attr, pos):
                return

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
