"""pyfuse3 operations over the async py3fs client.

Every request acts as the calling process's uid, gid and supplementary groups
(`acting_as`), so meta checks permissions per user; the mount also uses
`default_permissions`, so the kernel checks mode bits first. Requests name
inodes as the kernel does: (parent inode, name), or the inode itself; meta
resolves them (`PathAt`), so the daemon keeps no paths. Names are UTF-8.

Caching (ClientConfig entry/attr/negative timeouts, 3FS's defaults): the
kernel keeps names, attributes and "no such name" answers for those times;
what this mount changes it sees at once (every reply carries the new
attributes). The kernel drops a directory's cached attributes when its entries
change, and a file's size and times when it is written: the GETATTR that
follows is answered from `AttrCache`, filled by meta's reply to the change.
An open asks meta (close-to-open consistency, as NFS): when the file changed
since this mount last saw it, the kernel's attributes are dropped and, unless
it is unchanged, its page cache too; pages are kept while the file is open,
so mmap works.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from contextlib import AbstractContextManager

import pyfuse3

from client import Client
from client.meta_client import acting_as
from fuse_mount import virt
from fuse_mount.attrs import AttrCache
from fuse_mount.block_cache import BlockCache
from fuse_mount.dirs import DirectoryOps
from fuse_mount.errno_map import fuse_errors
from fuse_mount.groups import groups_of
from fuse_mount.handles import OpenFiles
from fuse_mount.hooks import UsrbioAgent
from fuse_mount.inodes import (
    ROOT,
    TYPE_OF_MODE,
    attributes,
    is_virtual,
    negative_entry,
)
from fuse_mount.page_store import PageStore
from py3fs import errors
from py3fs.proto.messages import (
    Changed,
    Inode,
    InodeType,
    LinkReq,
    MkdirReq,
    MknodReq,
    PathReq,
    RenameReq,
    SymlinkReq,
)

FRSIZE = 4096


def _name(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None


def _as(ctx: pyfuse3.RequestContext) -> AbstractContextManager[None]:
    return acting_as(ctx.uid, ctx.gid, groups_of(ctx.pid, ctx.uid))


def _perm(mode: int, ctx: pyfuse3.RequestContext) -> int:
    return mode & ~ctx.umask & 0o7777


class Operations(DirectoryOps, pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, client: Client, agent: UsrbioAgent, mountpoint: str) -> None:
        super().__init__()
        self.client = client
        cfg = client.config
        self.attrs = AttrCache(cfg.attr_timeout)
        cache = BlockCache(cfg.read_cache_mib << 20)
        self.pages = PageStore() if cfg.store_pages and cache.enabled else None
        self.files = OpenFiles(client, self.attrs, cache, self.pages)
        self.virt = virt.VirtualDir(agent, mountpoint, self._remove_tree)
        agent.add_length_listener(self.attrs.forget)
        agent.add_length_listener(cache.invalidate)
        self.entry_timeout = cfg.entry_timeout
        self.attr_timeout = cfg.attr_timeout
        self.negative_timeout = cfg.negative_timeout

    def _attr(
        self, node: Inode, timeout: float | None = None, *, read: bool = False
    ) -> pyfuse3.EntryAttributes:
        """The kernel's view of `node`, fresh from meta (kept in the cache: the
        reply to a change, or with `read` to a lookup) or, with `timeout`, from
        the cache with that many seconds left."""
        if timeout is None:
            self.attrs.put(node, read=read)
            timeout = self.attr_timeout
        # Meta's length, or longer where this daemon's handles wrote past it
        # and have not reported yet; never an older length a handle holds
        # while others (USRBIO, other clients) made the file grow.
        hint = self.files.length_hint(node.inode)
        length = None if hint is None else max(hint, node.length)
        return attributes(node, length, timeout, self.entry_timeout)

    def _changed(self, reply: Changed) -> None:
        for node in (*reply.dirs, *reply.nodes):
            self.attrs.put(node)
        for ino in reply.gone:
            self.attrs.forget(ino)

    @staticmethod
    def _check_real(parent: int, name: str) -> None:
        if is_virtual(parent) or (parent == ROOT and name == virt.NAME):
            raise pyfuse3.FUSEError(errno.EPERM)

    # ------------------------------------------------------------ lookups

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        if is_virtual(parent_inode) or (parent_inode == ROOT and text == virt.NAME):
            return self.virt.lookup(parent_inode, text)
        path = "" if text == "." else text
        try:
            with _as(ctx):
                node = await self.client.meta.stat(
                    PathReq(at=parent_inode, path=path, follow=False)
                )
        except errors.NotFound:
            if self.negative_timeout > 0:
                return negative_entry(self.negative_timeout)
            raise
        return self._attr(node, read=True)

    @fuse_errors
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if is_virtual(inode):
            return self.virt.getattr(inode)
        held = self.attrs.get(inode)
        if held is not None:
            return self._attr(*held)
        return self._attr(await self.client.stat_inode(inode), read=True)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, _ in inode_list:
            self.attrs.forget(ino)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if is_virtual(inode):
            return self.virt.readlink(inode)
        node = await self.client.stat_inode(inode)
        if node.type != InodeType.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target.encode()

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only called without default_permissions; mirrors meta's check.
        if ctx.uid == 0 or is_virtual(inode):
            return True
        node = await self.client.stat_inode(inode)
        in_group = ctx.gid == node.gid or node.gid in groups_of(ctx.pid, ctx.uid)
        shift = 6 if ctx.uid == node.uid else 3 if in_group else 0
        return (node.mode >> shift) & mode == mode

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        fs = await self.client.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = FRSIZE
        out.f_frsize = FRSIZE
        out.f_blocks = fs.total_bytes // FRSIZE
        out.f_bfree = fs.free_bytes // FRSIZE
        out.f_bavail = fs.free_bytes // FRSIZE
        # Inodes are not a limited resource in py3fs: report plenty free.
        out.f_files = fs.inodes + (1 << 32)
        out.f_ffree = 1 << 32
        out.f_favail = 1 << 32
        out.f_namemax = 255
        return out

    # ------------------------------------------------------------ changes

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if is_virtual(inode):
            raise pyfuse3.FUSEError(errno.EPERM)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            changes["uid_new"] = attr.st_uid
        if fields.update_gid:
            changes["gid_new"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if list(changes) == ["mtime"] and not fields.update_size:
            # tar sets a file's mtime on the fd it just wrote, before close:
            # the Sync that close sends records it with the length (one RPC
            # less per file). The kernel checked the caller may set it
            # (default_permissions: the owner or CAP_FOWNER).
            held = self.attrs.get(inode)
            deferred = self.files.defer_mtime(
                inode, changes["mtime"], held[0] if held else None
            )
            if deferred is not None:
                self.attrs.put(deferred)
                return self._attr(deferred)
        with _as(ctx):
            node = None
            if fields.update_size:
                node = await self.files.set_length(inode, attr.st_size, fh)
            if changes:
                # FUSE names the inode itself: never follow a symlink here.
                node = await self.client.setattr("", at=inode, follow=False, **changes)
                if "mtime" in changes:
                    self.files.mtime_set(inode, node.mtime)
        if node is None:
            return self._attr(await self.client.stat_inode(inode), read=True)
        return self._attr(node)

    @fuse_errors
    async def mknod(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        self._check_real(parent_inode, text)
        if stat.S_ISREG(mode):
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
            with _as(ctx):
                handle = await self.files.open(
                    parent_inode, text, flags, perm=_perm(mode, ctx)
                )
            node = handle.file.inode
            await self.files.release(handle.fh)
            return self._attr(node)
        kind = TYPE_OF_MODE.get(stat.S_IFMT(mode))
        if kind is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        req = MknodReq(
            at=parent_inode, path=text, type=kind, mode=_perm(mode, ctx), rdev=rdev
        )
        with _as(ctx):
            node = await self.client.meta.mknod(req)
        self.attrs.entry_added(parent_inode, node)
        return self._attr(node)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        self._check_real(parent_inode, text)
        req = MkdirReq(at=parent_inode, path=text, mode=_perm(mode, ctx))
        with _as(ctx):
            node = await self.client.meta.mkdir(req)
        self.attrs.entry_added(parent_inode, node)
        return self._attr(node)

    async def _pin_if_open(self, parent: int, name: str) -> None:
        """Keep the data of a file this daemon has open when its name goes."""
        if not self.files.any_read_only():
            return  # a writer's session already keeps the data
        try:
            node = await self.client.meta.stat(
                PathReq(at=parent, path=name, follow=False)
            )
        except errors.NotFound:
            return
        if self.files.is_open(node.inode):
            await self.files.pin(node.inode)

    @fuse_errors
    async def unlink(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        text = _name(name)
        if is_virtual(parent_inode):
            await self.virt.unlink(parent_inode, text)
            return
        self._check_real(parent_inode, text)
        await self._pin_if_open(parent_inode, text)
        with _as(ctx):
            reply = await self.client.meta.unlink(
                PathReq(at=parent_inode, path=text, follow=False)
            )
        self._changed(reply)

    @fuse_errors
    async def rmdir(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        text = _name(name)
        self._check_real(parent_inode, text)
        with _as(ctx):
            reply = await self.client.meta.rmdir(
                PathReq(at=parent_inode, path=text, follow=False)
            )
        self._changed(reply)

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text, dest = _name(name), _name(target)
        if is_virtual(parent_inode):
            with _as(ctx):
                return await self.virt.symlink(parent_inode, text, dest, ctx)
        self._check_real(parent_inode, text)
        with _as(ctx):
            node = await self.client.meta.symlink(
                SymlinkReq(at=parent_inode, path=text, target=dest)
            )
        self.attrs.entry_added(parent_inode, node)
        return self._attr(node)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old, new = _name(name_old), _name(name_new)
        self._check_real(parent_inode_old, old)
        self._check_real(parent_inode_new, new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        if not noreplace:
            await self._pin_if_open(parent_inode_new, new)
        req = RenameReq(
            src_at=parent_inode_old,
            src=old,
            dst_at=parent_inode_new,
            dst=new,
            noreplace=noreplace,
        )
        with _as(ctx):
            self._changed(await self.client.meta.rename(req))

    @fuse_errors
    async def link(
        self,
        inode: int,
        new_parent_inode: int,
        new_name: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        text = _name(new_name)
        if is_virtual(inode):
            raise pyfuse3.FUSEError(errno.EPERM)
        self._check_real(new_parent_inode, text)
        req = LinkReq(src_at=inode, src="", dst_at=new_parent_inode, dst=text)
        with _as(ctx):
            node = await self.client.meta.link(req)
        self.attrs.entry_added(new_parent_inode, node)
        return self._attr(node)

    async def _remove_tree(self, path: str, ctx: pyfuse3.RequestContext) -> None:
        """rm-rf: remove `path` recursively, then drop the kernel's entry."""
        parent_path, name = os.path.split(path)
        with _as(ctx):
            parent = await self.client.stat(parent_path)
            await self.client.remove(path, recursive=True)
        # Synchronously, so the tree is gone for the caller once symlink
        # returns; in a thread, since the kernel may need this loop meanwhile.
        try:
            await asyncio.to_thread(
                pyfuse3.invalidate_entry, parent.inode, name.encode()
            )
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the kernel had not cached it
                raise

    # ------------------------------------------------------------ files

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        keep = self.files.get(fh).keep_cache
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=keep)

    @fuse_errors
    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if is_virtual(inode):
            raise pyfuse3.FUSEError(errno.EISDIR if inode in virt.DIRS else errno.EPERM)
        with _as(ctx):
            handle = await self.files.open(inode, "", flags)
        node = handle.file.inode
        if node.nlink == 0 and self.files.handles_of(inode) == 1:
            # The kernel's cached name leads to a file another client removed
            # (or replaced): ESTALE makes it look the name up again (as NFS),
            # finding the new file or none. An open of a file this mount
            # holds open (/proc/PID/fd/N) still works.
            await self.files.release(handle.fh)
            raise pyfuse3.FUSEError(errno.ESTALE)
        if self.attrs.changed(node):
            # Another client changed it since the kernel cached its size and
            # times (or this mount holds no copy to tell): drop them, so the
            # reads that follow see the new size (close-to-open consistency).
            await self._invalidate_attrs(inode)
        self.attrs.put(node)
        return self._file_info(handle.fh)

    @staticmethod
    async def _invalidate_attrs(inode: int) -> None:
        # It blocks until the kernel has done it: never on the loop.
        try:
            await asyncio.to_thread(pyfuse3.invalidate_inode, inode, True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the kernel had not cached it
                raise

    @fuse_errors
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = _name(name)
        self._check_real(parent_inode, text)
        with _as(ctx):
            handle = await self.files.open(
                parent_inode, text, flags | os.O_CREAT, perm=_perm(mode, ctx)
            )
        return self._file_info(handle.fh), self._attr(handle.file.inode)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytearray | memoryview:
        return await self.files.read(fh, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.files.write(fh, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self.files.sync(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.files.sync(fh)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self.files.release(fh)

    async def aclose(self) -> None:
        await self.files.close_all()
        if self.pages is not None:
            await asyncio.to_thread(self.pages.close)
