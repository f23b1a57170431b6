"""pyfuse3 operations over the async py3fs client.

Every request acts as the calling process's uid/gid (`acting_as`), so meta
checks permissions per user; the mount also uses `default_permissions`, so the
kernel checks mode bits first with the caller's supplementary groups (which
meta does not see). Names are UTF-8. Attributes are cached by the kernel for
`timeout` seconds; the page cache is dropped on every open (close-to-open
consistency, as NFS), and kept while the file is open, so mmap works.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import pyfuse3

from client import Client
from client.meta_client import acting_as
from fuse_mount import virt
from fuse_mount.dirs import DirectoryOps
from fuse_mount.errno_map import fuse_errors
from fuse_mount.handles import OpenFiles
from fuse_mount.hooks import UsrbioAgent
from fuse_mount.inodes import ROOT, InodeMap, attributes, is_virtual
from py3fs import errors
from py3fs.proto.messages import Inode, InodeType

FRSIZE = 4096


def _name(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None


@contextmanager
def _as(ctx: pyfuse3.RequestContext) -> Iterator[None]:
    with acting_as(ctx.uid, ctx.gid):
        yield


def _perm(mode: int, ctx: pyfuse3.RequestContext) -> int:
    return mode & ~ctx.umask & 0o7777


class Operations(DirectoryOps, pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self, client: Client, agent: UsrbioAgent, mountpoint: str, timeout: float = 1.0
    ) -> None:
        super().__init__()
        self.client = client
        self.inodes = InodeMap()
        self.files = OpenFiles(client)
        self.virt = virt.VirtualDir(agent, mountpoint, self._remove_tree)
        self.timeout = timeout

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        return attributes(node, self.files.length_hint(node.inode), self.timeout)

    def _entry(self, node: Inode, parent: int, name: str) -> pyfuse3.EntryAttributes:
        self.inodes.remember(node.inode, parent, name)
        return self._attr(node)

    def _path(self, parent: int, name: str) -> str:
        if is_virtual(parent) or (parent == ROOT and name == virt.NAME):
            raise pyfuse3.FUSEError(errno.EPERM)
        return self.inodes.child_path(parent, name)

    # ------------------------------------------------------------ lookups

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        if is_virtual(parent_inode) or (parent_inode == ROOT and text == virt.NAME):
            return self.virt.lookup(parent_inode, text)
        if text in (".", ".."):
            path = self.inodes.path(parent_inode)
            with _as(ctx):
                node = await self.client.stat(
                    os.path.dirname(path) if text == ".." else path
                )
            self.inodes.ref(node.inode)
            return self._attr(node)
        with _as(ctx):
            node = await self.client.stat(self._path(parent_inode, text), follow=False)
        return self._entry(node, parent_inode, text)

    @fuse_errors
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if is_virtual(inode):
            return self.virt.getattr(inode)
        return self._attr(await self.client.stat_inode(inode))

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

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
        shift = 6 if ctx.uid == node.uid else 3 if ctx.gid == node.gid else 0
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
        path = self.inodes.path(inode)
        changes: dict[str, float | int] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            changes["uid_new"] = attr.st_uid
        if fields.update_gid:
            changes["gid_new"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns / 1e9
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns / 1e9
        with _as(ctx):
            node = None
            if fields.update_size:
                node = await self.files.set_length(inode, path, attr.st_size)
            if changes:
                # FUSE names the inode itself: never follow a symlink here.
                node = await self.client.setattr(path, follow=False, **changes)
        if node is None:
            node = await self.client.stat_inode(inode)
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
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        text = _name(name)
        path = self._path(parent_inode, text)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        with _as(ctx):
            handle = await self.files.open(path, flags, perm=_perm(mode, ctx))
        node = handle.file.inode
        await self.files.release(handle.fh)
        return self._entry(node, parent_inode, text)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = _name(name)
        with _as(ctx):
            node = await self.client.mkdir(
                self._path(parent_inode, text), _perm(mode, ctx)
            )
        return self._entry(node, parent_inode, text)

    async def _inode_at(self, parent: int, name: str, path: str) -> int | None:
        ino = self.inodes.entry(parent, name)
        if ino is None:
            try:
                ino = (await self.client.stat(path, follow=False)).inode
            except errors.NotFound:
                return None
        return ino

    async def _pin_if_open(self, parent: int, name: str, path: str) -> None:
        """Keep the data of a file this daemon has open when its name goes."""
        ino = await self._inode_at(parent, name, path)
        if ino is not None and self.files.is_open(ino):
            await self.files.pin(ino, path)

    @fuse_errors
    async def unlink(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        text = _name(name)
        if is_virtual(parent_inode):
            await self.virt.unlink(parent_inode, text)
            return
        path = self._path(parent_inode, text)
        await self._pin_if_open(parent_inode, text, path)
        with _as(ctx):
            await self.client.unlink(path)
        self.inodes.removed(parent_inode, text)

    @fuse_errors
    async def rmdir(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        text = _name(name)
        with _as(ctx):
            await self.client.rmdir(self._path(parent_inode, text))
        self.inodes.removed(parent_inode, text)

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text, dest = _name(name), _name(target)
        if is_virtual(parent_inode):
            with _as(ctx):
                return await self.virt.symlink(parent_inode, text, dest, ctx)
        with _as(ctx):
            node = await self.client.symlink(dest, self._path(parent_inode, text))
        return self._entry(node, parent_inode, text)

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
        src = self._path(parent_inode_old, old)
        dst = self._path(parent_inode_new, new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        with _as(ctx):
            if flags & pyfuse3.RENAME_NOREPLACE:
                # Meta has no no-replace rename: check, then rename. Another
                # client creating `dst` in between is overwritten.
                if await self._inode_at(parent_inode_new, new, dst) is not None:
                    raise pyfuse3.FUSEError(errno.EEXIST)
            else:
                await self._pin_if_open(parent_inode_new, new, dst)
            await self.client.rename(src, dst)
        self.inodes.moved(parent_inode_old, old, parent_inode_new, new)

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
        with _as(ctx):
            node = await self.client.link(
                self.inodes.path(inode), self._path(new_parent_inode, text)
            )
        return self._entry(node, new_parent_inode, text)

    async def _remove_tree(self, path: str, ctx: pyfuse3.RequestContext) -> None:
        """rm-rf: remove `path` recursively, then drop the kernel's entry."""
        parent_path, name = os.path.split(path)
        with _as(ctx):
            parent = await self.client.stat(parent_path)
            await self.client.remove(path, recursive=True)
        self.inodes.removed(parent.inode, name)
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
            handle = await self.files.open(self.inodes.path(inode), flags, ino=inode)
        return self._file_info(handle.fh)

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
        path = self._path(parent_inode, text)
        with _as(ctx):
            handle = await self.files.open(
                path, flags | os.O_CREAT, perm=_perm(mode, ctx)
            )
        return self._file_info(handle.fh), self._entry(
            handle.file.inode, parent_inode, text
        )

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytearray:
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
