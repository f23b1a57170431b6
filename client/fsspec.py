"""An fsspec filesystem for `py3fs://` URLs, so pandas, pyarrow, Hugging Face
datasets, Ray and DuckDB read and write py3fs directly (no FUSE mount).

    import pandas as pd
    df.to_parquet("py3fs:///data/table.parquet")          # cluster from $PY3FS_CLUSTER
    pd.read_parquet("py3fs:///data/table.parquet",
                    storage_options={"cluster": "/etc/py3fs/cluster.toml"})

    fs = fsspec.filesystem("py3fs", mgmt=["10.0.0.1:8000"])
    with fs.open("/data/blob.bin", "rb") as f:
        f.seek(1 << 20); head = f.read(4096)               # ranged reads

Registered under the `fsspec.specs` entry point (see pyproject.toml), so
`fsspec.filesystem("py3fs")` finds it once py3fs is installed. A URL's path is
absolute in py3fs's namespace: `py3fs:///a/b` and `py3fs://a/b` both name `/a/b`.
The cluster comes from `cluster` (a cluster file), `mgmt` (addresses), or the
usual cluster-file lookup (`client.config.cluster_file`); the identity from
`token` (a token `py3fs admin user add` printed) or `token_file`, else the
usual lookup (`py3fs.auth.find_token`: $PY3FS_TOKEN, $PY3FS_TOKEN_FILE, ...).

    fs = fsspec.filesystem("py3fs", mgmt=["10.0.0.1:8000"], token="p3t_...")

`Py3fsFileSystem` is an `AsyncFileSystem`: its coroutines run on fsspec's IO
loop (or the caller's, with `asynchronous=True`), where it builds its `Client`
on first use, since gRPC channels bind to the loop that made them. Reads of an
open file fetch only the requested block range; writes are buffered into
`block_size` pieces written at their offsets, and the length is published on
close, like any py3fs writer. py3fs errors surface as the matching `OSError`
(FileNotFoundError, IsADirectoryError, ...), as fsspec users expect.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fsspec.asyn import AsyncFileSystem, sync, sync_wrapper
from fsspec.spec import AbstractBufferedFile

from client.client import Client, File
from client.config import ClientConfig, load_client_config, with_token
from py3fs import errors
from py3fs.proto.messages import Inode, InodeType

T = TypeVar("T")
DEFAULT_BLOCK = 4 << 20  # one request per 4 MiB: py3fs moves big I/Os best


def _oserror(exc: errors.Py3fsError, path: str) -> OSError:
    # OSError(errno, ...) builds the errno's subclass (ENOENT: FileNotFoundError).
    return OSError(exc.errno or 5, str(exc), path)


def _translated(
    fn: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Turn py3fs errors into OSErrors naming the method's path argument."""

    @functools.wraps(fn)
    async def wrapper(self: Py3fsFileSystem, path: Any, *args: Any, **kw: Any) -> T:
        try:
            return await fn(self, path, *args, **kw)
        except errors.Py3fsError as exc:
            raise _oserror(exc, str(path)) from exc

    return wrapper


class Py3fsFileSystem(AsyncFileSystem):
    protocol = "py3fs"
    root_marker = "/"
    async_impl = True
    # Instances are cached per arguments; one Client per loop is what we want.
    cachable = True

    def __init__(
        self,
        cluster: str | None = None,
        mgmt: list[str] | str | None = None,
        client_config: ClientConfig | None = None,
        block_size: int = DEFAULT_BLOCK,
        auto_mkdir: bool = True,
        token: str | None = None,
        token_file: str | None = None,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        if client_config is None:
            if mgmt:
                addrs = [mgmt] if isinstance(mgmt, str) else list(mgmt)
                client_config = ClientConfig(mgmt=addrs)
            else:
                client_config = load_client_config(cluster)
        self.client_config = with_token(client_config, token, token_file)
        self.blocksize = block_size
        self.auto_mkdir = auto_mkdir
        self._client: Client | None = None

    # ------------------------------------------------------------ plumbing

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        path = str(path)
        if path.startswith("py3fs://"):
            path = path[len("py3fs://") :]
        path = "/" + path.strip("/")
        return path

    def unstrip_protocol(self, name: str) -> str:
        return "py3fs://" + self._strip_protocol(name)

    @property
    def client(self) -> Client:
        """The client, made on first use in the loop running our coroutines."""
        if self._client is None:
            self._client = Client(self.client_config)
        return self._client

    async def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    close = sync_wrapper(_close)

    @staticmethod
    def _details(path: str, node: Inode) -> dict[str, Any]:
        kind = {
            InodeType.FILE: "file",
            InodeType.DIRECTORY: "directory",
            InodeType.SYMLINK: "other",
        }[node.type]
        fmt = {
            InodeType.FILE: stat.S_IFREG,
            InodeType.DIRECTORY: stat.S_IFDIR,
            InodeType.SYMLINK: stat.S_IFLNK,
        }[node.type]
        return {
            "name": path,
            "size": node.length if node.type == InodeType.FILE else 0,
            "type": kind,
            "mode": fmt | node.mode,
            "uid": node.uid,
            "gid": node.gid,
            "nlink": node.nlink,
            "mtime": node.mtime,
            "created": node.ctime,
            "ino": node.inode,
        }

    # ------------------------------------------------------------ namespace

    @_translated
    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._details(path, await self.client.stat(path))

    @_translated
    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        node = await self.client.stat(path)
        if node.type != InodeType.DIRECTORY:
            return [self._details(path, node)] if detail else [path]
        base = path.rstrip("/")
        names = [f"{base}/{e.name}" for e in await self.client.listdir(path)]
        if not detail:
            return names
        nodes = await asyncio.gather(
            *(self.client.stat(n, follow=False) for n in names), return_exceptions=True
        )
        out = []
        for n, node in zip(names, nodes, strict=True):
            if isinstance(node, errors.NotFound):
                continue  # removed between the listing and its stat: gone
            if isinstance(node, BaseException):
                raise node
            out.append(self._details(n, node))
        return out

    @_translated
    async def _mkdir(
        self, path: str, create_parents: bool = True, **kwargs: Any
    ) -> None:
        await self.client.mkdir(self._strip_protocol(path), parents=create_parents)

    @_translated
    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        try:
            await self.client.mkdir(path, parents=True)
        except errors.AlreadyExists:
            node = await self.client.stat(path)
            if not exist_ok or node.type != InodeType.DIRECTORY:
                raise

    @_translated
    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        await self.client.unlink(self._strip_protocol(path))

    @_translated
    async def _rmdir(self, path: str) -> None:
        await self.client.rmdir(self._strip_protocol(path))

    async def _rm(
        self,
        path: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        paths = path if isinstance(path, list) else [path]
        for p in paths:
            p = self._strip_protocol(p)
            if maxdepth is None and not self._has_magic(p):
                try:
                    await self.client.remove(p, recursive=recursive)
                except errors.Py3fsError as exc:
                    raise _oserror(exc, p) from exc
                continue
            expanded = await self._expand_path(
                p, recursive=recursive, maxdepth=maxdepth
            )
            # Deepest first, so directories are empty when their turn comes.
            for q in sorted(expanded, key=lambda s: s.count("/"), reverse=True):
                try:
                    await self.client.remove(q, recursive=False)
                except errors.Py3fsError as exc:
                    raise _oserror(exc, q) from exc

    @staticmethod
    def _has_magic(path: str) -> bool:
        return any(c in path for c in "*?[")

    @_translated
    async def _mv_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        await self.client.rename(
            self._strip_protocol(path1), self._strip_protocol(path2)
        )

    async def _mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """One path: a rename in meta (one transaction), whole directories
        included. Lists and globs: copy, then remove, as fsspec does."""
        single = isinstance(path1, str) and isinstance(path2, str)
        if single and maxdepth is None and not self._has_magic(path1):
            await self._mv_file(path1, path2)
            return
        await self._copy(
            path1, path2, recursive=recursive, maxdepth=maxdepth, on_error="raise"
        )
        await self._rm(path1, recursive=recursive)

    mv = sync_wrapper(_mv)

    @_translated
    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if (await self.client.stat(src)).type == InodeType.DIRECTORY:
            # fsspec's recursive copy hands directories here too.
            await self._makedirs(dst, exist_ok=True)
            return
        async with (
            await self.client.open(src, "rb") as fin,
            await self._open_handle(dst, "wb") as fout,
        ):
            buf = bytearray(self.blocksize)
            while n := await fin.readinto(buf):
                await fout.write(memoryview(buf)[:n])

    # ------------------------------------------------------------ whole files

    @_translated
    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kw: Any
    ) -> bytes:
        path = self._strip_protocol(path)
        async with await self.client.open(path, "rb") as f:
            if start is None and end is None:
                return await f.read()
            size = f.length if (start or 0) < 0 or (end or 0) < 0 else 0
            lo = 0 if start is None else (size + start if start < 0 else start)
            hi = f.length if end is None else (size + end if end < 0 else end)
            return await f.pread(max(0, hi - lo), max(0, lo))

    @_translated
    async def _pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        async with await self._open_handle(self._strip_protocol(path), "wb") as f:
            await f.write(value)

    # Local files are read and written off the loop (to_thread): disks block.

    @_translated
    async def _get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        if await asyncio.to_thread(os.path.isdir, lpath):
            return
        out = await asyncio.to_thread(open, lpath, "wb")
        try:
            async with await self.client.open(self._strip_protocol(rpath), "rb") as f:
                buf = bytearray(self.blocksize)
                while n := await f.readinto(buf):
                    await asyncio.to_thread(out.write, memoryview(buf)[:n])
        finally:
            await asyncio.to_thread(out.close)

    @_translated
    async def _put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        if await asyncio.to_thread(os.path.isdir, lpath):
            await self._makedirs(rpath, exist_ok=True)
            return
        src = await asyncio.to_thread(open, lpath, "rb")
        try:
            async with await self._open_handle(rpath, "wb") as f:
                while chunk := await asyncio.to_thread(src.read, self.blocksize):
                    await f.write(chunk)
        finally:
            await asyncio.to_thread(src.close)

    # ------------------------------------------------------------ open files

    async def _open_handle(self, path: str, mode: str) -> File:
        """Open `path`; a coroutine, so the client is made on (and bound to)
        our loop. With `auto_mkdir`, writing under a missing directory creates
        it first, as object stores behave and dataframe writers expect."""
        try:
            return await self.client.open(path, mode)
        except errors.NotFound:
            parent = path.rsplit("/", 1)[0]
            if mode == "rb" or not self.auto_mkdir or not parent:
                raise
        try:
            await self.client.mkdir(parent, parents=True)
        except errors.AlreadyExists:
            pass  # a concurrent writer made it: fine
        return await self.client.open(path, mode)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Py3fsBufferedFile:
        return Py3fsBufferedFile(
            self,
            self._strip_protocol(path),
            mode,
            block_size=block_size or self.blocksize,
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )


class Py3fsBufferedFile(AbstractBufferedFile):
    """fsspec's buffered file over a py3fs `File`: reads fetch byte ranges with
    `pread`; writes go out a block at a time, in order, through one write
    session (an `ab` session starts at the file's end), whose close publishes
    the length."""

    fs: Py3fsFileSystem

    def __init__(self, fs: Py3fsFileSystem, path: str, mode: str = "rb", **kw: Any):
        self._handle: File | None = None
        super().__init__(fs, path, mode, **kw)

    def _run(self, coro: Awaitable[T]) -> T:
        try:
            return sync(self.fs.loop, lambda: coro)
        except errors.Py3fsError as exc:
            raise _oserror(exc, self.path) from exc

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=end)

    def _initiate_upload(self) -> None:
        self._handle = self._run(self.fs._open_handle(self.path, self.mode))

    def _upload_chunk(self, final: bool = False) -> bool:
        assert self._handle is not None
        data = self.buffer.getbuffer()
        try:
            if data.nbytes:
                self._run(self._handle.write(data))
        finally:
            data.release()
        if final:
            self._run(self._handle.close())
        return True
