"""Directory listing for the FUSE operations (a mixin of `Operations`).

readdir offsets index the open handle's entries, which grow a page at a time
by name cursor (`ListDir` start_after), so an offset stays valid while
entries are added or removed, and no entry is skipped or repeated. Each entry
is stat'ed (readdirplus: the kernel caches its attributes), a page at a time,
concurrently.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pyfuse3

from client import Client
from client.meta_client import acting_as
from fuse_mount import virt
from fuse_mount.errno_map import fuse_errors
from fuse_mount.inodes import ROOT, InodeMap, is_virtual
from py3fs import errors
from py3fs.proto.messages import DirEntry, Inode, InodeType, ListDirReply, ListDirReq

PAGE = 128  # directory entries fetched and stat'ed per round


@dataclass
class DirHandle:
    ino: int
    path: str
    uid: int
    gid: int
    entries: list[DirEntry] = field(default_factory=list)
    more: bool = True
    after: str = ""


class DirectoryOps:
    client: Client
    inodes: InodeMap
    virt: virt.VirtualDir

    def __init__(self) -> None:
        self._dirs: dict[int, DirHandle] = {}
        self._dir_ids = itertools.count(1)

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        raise NotImplementedError

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if is_virtual(inode):
            self.virt.listing(inode)  # ENOTDIR for an iov link
            handle = DirHandle(inode, "", ctx.uid, ctx.gid, more=False)
        else:
            handle = DirHandle(inode, self.inodes.path(inode), ctx.uid, ctx.gid)
            if inode == ROOT:
                handle.entries.append(
                    DirEntry(virt.NAME, virt.VIRT, InodeType.DIRECTORY)
                )
            # The first page now, so EACCES/ENOTDIR surface at opendir.
            await self._fetch(handle)
        fh = next(self._dir_ids)
        self._dirs[fh] = handle
        return fh

    async def _fetch(self, handle: DirHandle) -> None:
        with acting_as(handle.uid, handle.gid):
            req = ListDirReq(path=handle.path, start_after=handle.after, limit=PAGE)
            reply = await self.client.meta.call("ListDir", req, ListDirReply)
        handle.entries.extend(reply.entries)
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
            while handle.more and len(handle.entries) < pos + PAGE:
                await self._fetch(handle)
            batch = handle.entries[pos : pos + PAGE]
            if not batch:
                return
            nodes = await asyncio.gather(
                *(self._stat_entry(e) for e in batch), return_exceptions=True
            )
            for i, (entry, node) in enumerate(zip(batch, nodes, strict=True), pos + 1):
                if isinstance(node, errors.NotFound):
                    continue  # removed since it was listed
                if isinstance(node, BaseException):
                    raise node
                attr = (
                    node
                    if isinstance(node, pyfuse3.EntryAttributes)
                    else self._attr(node)
                )
                if not pyfuse3.readdir_reply(token, entry.name.encode(), attr, i):
                    return
                if isinstance(node, Inode):
                    self.inodes.remember(node.inode, handle.ino, entry.name)
            pos += len(batch)

    async def _stat_entry(self, entry: DirEntry) -> Inode | pyfuse3.EntryAttributes:
        if entry.inode == virt.VIRT:
            return self.virt.getattr(virt.VIRT)
        return await self.client.stat_inode(entry.inode)

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
