"""The py3fs client: namespace operations through meta, file data through storage.

    async with Client.from_cluster() as fs:
        await fs.write_file("/data/a.bin", payload)
        async with await fs.open("/data/a.bin") as f:
            head = await f.read(4096)

File data is striped over the file's chains (see `client.striping`) and moved with
parallel chunk I/O; the file length is reported to meta on fsync and close.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec

from client.config import ClientConfig, load_client_config
from client.file_io import FileIO, ReadAhead
from client.meta_client import MetaClient
from client.routing_cache import RoutingCache
from client.storage_client import StorageClient
from py3fs import auth, caps, errors
from py3fs.mgmt_client import MgmtClient
from py3fs.proto.messages import (
    AppendReq,
    CapReq,
    CloseReq,
    DirEntry,
    Inode,
    InodeReq,
    InodeType,
    LinkReq,
    ListDirReply,
    ListDirReq,
    MetaReq,
    MkdirReq,
    OpenReply,
    OpenReq,
    PathReq,
    RenameReq,
    SetAttrReq,
    StatFsReply,
    SymlinkReq,
    SyncReq,
    WhoAmIReply,
)
from py3fs.tls import Tls

_MODES = {
    "rb": os.O_RDONLY,
    "r+b": os.O_RDWR,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "a+b": os.O_RDWR | os.O_CREAT | os.O_APPEND,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def open_flags(mode: str) -> int:
    try:
        return _MODES[mode if "b" in mode else mode + "b"]
    except KeyError:
        raise errors.InvalidArgument(f"unsupported open mode {mode!r}") from None


class Client:
    """Async client. Use `async with`; `aclose` releases every connection."""

    def __init__(self, config: ClientConfig) -> None:
        if not config.mgmt:
            raise errors.InvalidArgument("client needs at least one mgmt address")
        self.config = config
        self.client_id = uuid.uuid4().hex
        keys = caps.Keys.load_if_readable(config.secret_file)
        tls = Tls.load(config.tls_dir)
        self.mgmt = MgmtClient(config.mgmt, keys=keys, tls=tls)
        self.routing = RoutingCache(self.mgmt, config.routing_max_age)
        self.meta = MetaClient(
            self.routing,
            self.client_id,
            uid=config.uid,
            gid=config.gid,
            token=config.token or auth.find_token(config.token_file),
            retry_timeout=config.retry_timeout,
            call_timeout=config.call_timeout,
            session_lease=config.session_lease,
            tls=tls,
        )
        self.storage = StorageClient(
            self.routing,
            self.client_id,
            max_inflight=config.max_inflight,
            retry_timeout=config.retry_timeout,
            call_timeout=config.call_timeout,
            capability=self._capability,
            tool_keys=keys,
            tls=tls,
        )
        # File data: the one inode-level API every layer above uses.
        self.files = FileIO(self)

    async def _capability(self, inode: int, write: bool) -> tuple[bytes, float]:
        reply = await self.meta.capability(CapReq(inode=inode, write=write))
        return reply.cap, reply.ttl

    async def open_inode(self, req: OpenReq) -> OpenReply:
        """Meta's Open, keeping the capability it hands out for the storage
        client (so the first read or write asks meta nothing more)."""
        reply = await self.meta.open(req)
        self.storage.remember_cap(
            reply.inode.inode, bool(reply.session_id), reply.cap, reply.cap_ttl
        )
        return reply

    @classmethod
    def from_cluster(cls, path: str | None = None, **overrides: Any) -> Client:
        """A client for the cluster described by a cluster file (see
        `client.config.cluster_file` for where it is looked for)."""
        return cls(load_client_config(path, **overrides))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.storage.aclose()
        await self.meta.aclose()
        await self.mgmt.aclose()

    # ------------------------------------------------------------ namespace

    async def stat(self, path: str, *, follow: bool = True) -> Inode:
        return await self.meta.stat(PathReq(path=path, follow=follow))

    async def stat_inode(self, inode: int) -> Inode:
        return await self.meta.stat_inode(InodeReq(inode=inode))

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except errors.NotFound:
            return False
        return True

    async def mkdir(
        self, path: str, mode: int = 0o755, *, parents: bool = False
    ) -> Inode:
        req = MkdirReq(path=path, mode=mode, parents=parents)
        return await self.meta.mkdir(req)

    async def iterdir(self, path: str, page: int = 1000) -> AsyncIterator[DirEntry]:
        """Entries of a directory in name order, fetched a page at a time."""
        after = ""
        while True:
            reply = await self._list_page(path, after, page)
            for entry in reply.entries:
                yield entry
            if not reply.more or not reply.entries:
                return
            after = reply.entries[-1].name

    async def _list_page(self, path: str, after: str, limit: int) -> ListDirReply:
        req = ListDirReq(path=path, start_after=after, limit=limit)
        return await self.meta.list_dir(req)

    async def listdir(self, path: str, page: int = 1000) -> list[DirEntry]:
        return [e async for e in self.iterdir(path, page)]

    async def rename(self, src: str, dst: str) -> None:
        await self.meta.rename(RenameReq(src=src, dst=dst))

    async def unlink(self, path: str) -> None:
        await self.meta.unlink(PathReq(path=path, follow=False))

    async def rmdir(self, path: str) -> None:
        await self.meta.rmdir(PathReq(path=path, follow=False))

    async def remove(self, path: str, *, recursive: bool = False) -> int:
        """Remove a file, symlink or (with `recursive`) a whole tree; returns the
        number of entries removed."""
        node = await self.stat(path, follow=False)
        if node.type != InodeType.DIRECTORY:
            await self.unlink(path)
            return 1
        if not recursive:
            raise errors.IsADirectory(f"{path} is a directory (use recursive)")
        removed = 0
        base = path.rstrip("/")
        # List a page, remove it, list again: removing while paging would skip names.
        while entries := (await self._list_page(path, "", 1000)).entries:
            for entry in entries:
                removed += await self.remove(f"{base}/{entry.name}", recursive=True)
        if base:
            await self.rmdir(path)
            removed += 1
        return removed

    async def symlink(self, target: str, path: str) -> Inode:
        return await self.meta.symlink(SymlinkReq(path=path, target=target))

    async def readlink(self, path: str) -> str:
        reply = await self.meta.readlink(PathReq(path=path, follow=False))
        return reply.target

    async def link(self, src: str, dst: str) -> Inode:
        return await self.meta.link(LinkReq(src=src, dst=dst))

    async def setattr(self, path: str, **changes: Any) -> Inode:
        """Change mode, uid_new, gid_new, atime, mtime or length."""
        return await self.meta.set_attr(SetAttrReq(path=path, **changes))

    async def chmod(self, path: str, mode: int) -> Inode:
        return await self.setattr(path, mode=mode)

    async def truncate(self, path: str, length: int) -> Inode:
        """Set the length; bytes past it are dropped from storage, so extending
        the file later reads zeros there."""
        old = await self.stat(path)
        node = await self.setattr(path, length=length)
        if length < old.length and node.layout is not None:
            await self.files.truncate(node.inode, node.layout, length, old.length)
        return node

    async def whoami(self) -> WhoAmIReply:
        """The uid, gid and groups meta derives from this client's token."""
        return await self.meta.whoami(MetaReq())

    async def statfs(self) -> StatFsReply:
        return await self.meta.stat_fs(MetaReq())

    # ------------------------------------------------------------ file data

    async def open(
        self,
        path: str,
        mode: str = "rb",
        *,
        perm: int = 0o644,
        chunk_size: int = 0,
        stripe: int = 0,
    ) -> File:
        flags = open_flags(mode)
        req = OpenReq(
            path=path, flags=flags, mode=perm, chunk_size=chunk_size, stripe=stripe
        )
        reply = await self.open_inode(req)
        if reply.truncated_from and reply.inode.layout is not None:
            await self.files.truncate(
                reply.inode.inode, reply.inode.layout, 0, reply.truncated_from
            )
        return File(self, path, flags, reply)

    async def write_file(self, path: str, data: Any, **kwargs: Any) -> int:
        async with await self.open(path, "wb", **kwargs) as f:
            # Written and put on disk in one round: the close then has no
            # flush to wait for.
            n = await f.pwrite(data, 0, sync=True)
            f.pos = n
            return n

    async def read_file(self, path: str) -> bytes:
        async with await self.open(path, "rb") as f:
            return await f.read()


class File:
    """An open py3fs file: a position, the inode and its layout, a write session."""

    def __init__(self, client: Client, path: str, flags: int, reply: OpenReply) -> None:
        self._client = client
        self.path = path
        self.flags = flags
        self.inode = reply.inode
        self.session_id = reply.session_id
        self._written_end = -1
        self._unflushed = False  # written since the last flush to disk
        self._ahead = ReadAhead(client.files)
        self.closed = False
        self.pos = self.inode.length if flags & os.O_APPEND else 0

    @property
    def readable(self) -> bool:
        return (self.flags & os.O_ACCMODE) in (os.O_RDONLY, os.O_RDWR)

    @property
    def writable(self) -> bool:
        return (self.flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)

    @property
    def length(self) -> int:
        return max(self.inode.length, self._written_end)

    def forget_writes_past(self, length: int) -> None:
        """The file was truncated to `length`: writes beyond it must no longer
        raise the length this handle reports on fsync and close."""
        self._written_end = min(self._written_end, length)

    @property
    def written(self) -> bool:
        return self._written_end >= 0

    def _check(self, write: bool) -> None:
        if self.closed:
            raise errors.BadFileHandle(f"{self.path}: file is closed")
        if write and not self.writable:
            raise errors.BadFileHandle(f"{self.path}: not open for writing")
        if not write and not self.readable:
            raise errors.BadFileHandle(f"{self.path}: not open for reading")

    async def __aenter__(self) -> File:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        if base + offset < 0:
            raise errors.InvalidArgument("seek before the start of the file")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    async def refresh(self) -> Inode:
        """Re-read the inode (length may have grown through another client)."""
        node = await self._client.stat_inode(self.inode.inode)
        if node.layout is None:
            # Meta hides the layout from a caller who may no longer read the
            # file (chmod since open); it never changes, and storage decides.
            node = msgspec.structs.replace(node, layout=self.inode.layout)
        self.inode = node
        return self.inode

    async def preadinto(self, buf: Any, offset: int) -> int:
        """Read into `buf` from `offset`; returns bytes read (short at EOF)."""
        self._check(write=False)
        view = memoryview(buf).cast("B")
        if offset + view.nbytes > self.length and not self.writable:
            await self.refresh()
        assert self.inode.layout is not None
        return await self._ahead.read(
            self.inode.inode,
            self.inode.layout,
            offset,
            view,
            length=self.length,
            session=bool(self.session_id),
        )

    async def pread(self, size: int, offset: int) -> bytes:
        buf = bytearray(max(0, size))
        n = await self.preadinto(buf, offset)
        del buf[n:]
        return bytes(buf)

    async def readinto(self, buf: Any) -> int:
        n = await self.preadinto(buf, self.pos)
        self.pos += n
        return n

    async def read(self, size: int = -1) -> bytes:
        if size < 0:
            if not self.writable:
                await self.refresh()
            size = max(0, self.length - self.pos)
        data = await self.pread(size, self.pos)
        self.pos += len(data)
        return data

    async def pwrite(
        self, data: Any, offset: int, *, sync: bool = False, stream: bool = False
    ) -> int:
        """Write `data` at `offset`; returns once every replica holds it. With
        `sync` also on their disks (one round instead of a write and a flush,
        for the last write before a close or fsync); `stream` as in
        `FileIO.write`."""
        self._check(write=True)
        view = memoryview(data).cast("B")
        if view.nbytes:
            assert self.inode.layout is not None
            await self._ahead.invalidate()
            await self._client.files.write(
                self.inode.inode,
                self.inode.layout,
                offset,
                view,
                sync=sync,
                stream=stream,
            )
            self._written_end = max(self._written_end, offset + view.nbytes)
            self._unflushed = self._unflushed or not sync
        return view.nbytes

    async def write(self, data: Any) -> int:
        if self.flags & os.O_APPEND:
            return await self.append(data)
        n = await self.pwrite(data, self.pos)
        self.pos += n
        return n

    async def flush_data(self) -> None:
        """Put what this handle wrote on disk on every replica (a write returns
        once every replica holds it in memory; see StorageConfig.fsync)."""
        if self._unflushed:
            assert self.inode.layout is not None
            await self._client.files.flush(self.inode.layout)
            self._unflushed = False

    async def append(self, data: Any) -> int:
        """Write at the end of the file, atomically with respect to every other
        appender: meta reserves the range (the length grows at once), then the
        data goes there."""
        self._check(write=True)
        view = memoryview(data).cast("B")
        req = AppendReq(
            inode=self.inode.inode, session_id=self.session_id, size=view.nbytes
        )
        reply = await self._client.meta.append(req)
        self.inode = reply.inode
        n = await self.pwrite(view, reply.offset)
        self.pos = reply.offset + n
        return n

    async def fsync(self, *, length: int = -1, mtime: int = -1) -> None:
        """Make what was written durable: the data on every replica's disk, the
        length in meta (at least `length`: a caller's sync write still under
        way, see fuse_mount.handles.OpenFiles.sync), with `mtime` (ns) instead
        of now if given (set by the caller after its last write)."""
        self._check(write=True)
        req = SyncReq(
            inode=self.inode.inode,
            length=max(self._written_end, length),
            mtime=mtime,
        )
        self.inode = await self._flush_beside(self._client.meta.sync(req))

    async def _flush_beside(self, meta_call: Awaitable[Inode]) -> Inode:
        """Flush the data while `meta_call` (Sync or Close) records the length:
        every replica acknowledged the writes, so the length may be recorded
        while they go to disk. Returns when both are done; the first failure
        is raised."""
        flushed, node = await asyncio.gather(
            self.flush_data(), meta_call, return_exceptions=True
        )
        for outcome in (flushed, node):
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(node, Inode)
        return node

    async def close(self, *, report: bool = True, mtime: int = -1) -> None:
        """Flush and end the write session, reporting the length (unless the
        caller's last fsync already did and nothing was written since: not
        `report`, so the mtime stays as that fsync or a later utimensat left
        it), with `mtime` as in `fsync`."""
        if self.closed:
            return
        self.closed = True
        await self._ahead.aclose()
        if not self.session_id:
            await self.flush_data()
            return
        req = CloseReq(
            inode=self.inode.inode,
            session_id=self.session_id,
            length=self._written_end if report else -1,
            mtime=mtime,
        )
        self.inode = await self._flush_beside(self._client.meta.close(req))
