"""User commands over a running cluster: ls, stat, mkdir, put, get, rm, mv, cat, df.

Each opens a `Client` from the cluster file (`--cluster FILE`, else $PY3FS_CLUSTER,
else ./.py3fs/cluster.toml) and runs one coroutine on uvloop. Local files are read
and written inline: the command's loop has nothing else to do meanwhile.
"""

# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import os
import posixpath
import stat as stat_mod
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import uvloop
from tqdm import tqdm

from client import Client
from py3fs import errors, trash
from py3fs.cli.options import cluster_option
from py3fs.proto.messages import Inode, InodeType
from py3fs.units import format_size

T = TypeVar("T")
BLOCK = 64 * 1024 * 1024
PROGRESS_MIN = 16 * 1024 * 1024  # smaller transfers finish before a bar helps


def _absolute(path: str) -> str:
    """`path` normalized, absolute ("//", "/." and "/a/.." are all "/")."""
    return posixpath.normpath("/" + path.strip().lstrip("/"))


def _run(cluster_file: str | None, fn: Callable[[Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Client.from_cluster(cluster_file) as fs:
            return await fn(fs)

    return uvloop.run(main())


def _mode_string(node: Inode) -> str:
    kind = {
        InodeType.FILE: stat_mod.S_IFREG,
        InodeType.DIRECTORY: stat_mod.S_IFDIR,
        InodeType.SYMLINK: stat_mod.S_IFLNK,
    }[node.type]
    return stat_mod.filemode(kind | node.mode)


def _long_line(node: Inode, name: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(node.mtime // 1_000_000_000))
    suffix = f" -> {node.target}" if node.type == InodeType.SYMLINK else ""
    return (
        f"{_mode_string(node)} {node.nlink:>3} {node.uid:>5} {node.gid:>5} "
        f"{node.length:>12} {when} {name}{suffix}"
    )


@click.command()
@cluster_option
@click.option("-l", "long", is_flag=True, help="Long listing.")
@click.option("-a", "show_all", is_flag=True, help="Also show /.trash.")
@click.argument("path", default="/")
def ls(cluster_file: str | None, long: bool, show_all: bool, path: str) -> None:
    """List a directory."""

    async def go(fs: Client) -> None:
        node = await fs.stat(path)
        if node.type != InodeType.DIRECTORY:
            click.echo(_long_line(node, path) if long else path)
            return
        base = path.rstrip("/")
        hide = "" if show_all or _absolute(path) != "/" else trash.TRASH[1:]
        async for entry in fs.iterdir(path):
            if entry.name == hide:
                continue
            if long:
                child = await fs.stat(f"{base}/{entry.name}", follow=False)
                click.echo(_long_line(child, entry.name))
            else:
                slash = "/" if entry.type == InodeType.DIRECTORY else ""
                click.echo(entry.name + slash)

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.argument("path")
def stat(cluster_file: str | None, path: str) -> None:
    """Show a file's inode."""

    async def go(fs: Client) -> None:
        node = await fs.stat(path, follow=False)
        click.echo(f"  path: {path}")
        click.echo(f" inode: {node.inode}  type: {node.type.name.lower()}")
        click.echo(f"  size: {node.length}  links: {node.nlink}")
        click.echo(f"  mode: {_mode_string(node)} ({node.mode:04o})")
        click.echo(f"   uid: {node.uid}  gid: {node.gid}")
        click.echo(f" mtime: {time.ctime(node.mtime // 1_000_000_000)}")
        if node.layout:
            lay = node.layout
            click.echo(
                f"layout: chunk {format_size(lay.chunk_size)}, table {lay.table_id}, "
                f"chains {lay.chains}"
            )
        if node.type == InodeType.SYMLINK:
            click.echo(f"target: {node.target}")

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.option("-p", "parents", is_flag=True, help="Make parents; no error if present.")
@click.option("-m", "mode", default="755", help="Permission bits (octal).")
@click.argument("path")
def mkdir(cluster_file: str | None, parents: bool, mode: str, path: str) -> None:
    """Make a directory."""
    _run(cluster_file, lambda fs: fs.mkdir(path, int(mode, 8), parents=parents))


def _bar(total: int, desc: str) -> tqdm[Any]:
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=total < PROGRESS_MIN or not sys.stderr.isatty(),
    )


@click.command()
@cluster_option
@click.option("--chunk-size", default=0, help="Chunk size in bytes (0: default).")
@click.argument("local", type=click.Path(exists=True, dir_okay=False))
@click.argument("remote")
def put(cluster_file: str | None, chunk_size: int, local: str, remote: str) -> None:
    """Copy a local file into py3fs."""
    total = os.path.getsize(local)
    if remote.endswith("/"):
        remote += os.path.basename(local)

    async def go(fs: Client) -> None:
        buf = bytearray(min(BLOCK, max(total, 1)))
        view = memoryview(buf)
        with open(local, "rb") as src, _bar(total, "put") as bar:
            async with await fs.open(remote, "wb", chunk_size=chunk_size) as f:
                while n := src.readinto(buf):
                    await f.write(view[:n])
                    bar.update(n)
        click.echo(f"{local} -> {remote} ({format_size(total)})", err=True)

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=True))
def get(cluster_file: str | None, remote: str, local: str) -> None:
    """Copy a file out of py3fs."""
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")))

    async def go(fs: Client) -> None:
        async with await fs.open(remote, "rb") as f:
            total = f.length
            buf = bytearray(min(BLOCK, max(total, 1)))
            tmp = f"{local}.py3fs-partial"
            try:
                with open(tmp, "wb") as dst, _bar(total, "get") as bar:
                    while n := await f.readinto(buf):
                        dst.write(memoryview(buf)[:n])
                        bar.update(n)
                os.replace(tmp, local)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        click.echo(f"{remote} -> {local} ({format_size(total)})", err=True)

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.argument("remote")
def cat(cluster_file: str | None, remote: str) -> None:
    """Write a file's bytes to standard output."""

    async def go(fs: Client) -> None:
        async with await fs.open(remote, "rb") as f:
            buf = bytearray(min(BLOCK, max(f.length, 1)))
            while n := await f.readinto(buf):
                sys.stdout.buffer.write(memoryview(buf)[:n])
        sys.stdout.buffer.flush()

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.option("-r", "recursive", is_flag=True, help="Remove directories and contents.")
@click.option(
    "--no-preserve-root",
    "no_preserve_root",
    is_flag=True,
    help="Allow `rm -r /` (empties the whole file system).",
)
@click.option(
    "--permanent",
    is_flag=True,
    help="Delete at once instead of moving to the trash.",
)
@click.argument("paths", nargs=-1, required=True)
def rm(
    cluster_file: str | None,
    recursive: bool,
    no_preserve_root: bool,
    permanent: bool,
    paths: tuple[str, ...],
) -> None:
    """Remove files (and with -r, directories): moved to your trash for
    `trash_days` (cluster file [client], default 7; 0 = no trash) unless
    --permanent; see `py3fs trash`."""
    if recursive and not no_preserve_root:
        for path in paths:
            if _absolute(path) == "/":
                raise click.UsageError(
                    f"refusing to remove {path!r} recursively: it is the root "
                    "(use --no-preserve-root to override)"
                )

    async def go(fs: Client) -> None:
        days = fs.config.trash_days
        for path in paths:
            node = await fs.stat(path, follow=False)
            where = _absolute(path)
            in_trash = where == trash.TRASH or where.startswith(trash.TRASH + "/")
            if permanent or days <= 0 or in_trash or where == "/":
                await fs.remove(path, recursive=recursive)
                continue
            if node.type == InodeType.DIRECTORY and not recursive:
                raise errors.IsADirectory(f"{path} is a directory (use -r)")
            await trash.move_to_trash(fs, path, days)

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.argument("src")
@click.argument("dst")
def mv(cluster_file: str | None, src: str, dst: str) -> None:
    """Rename a file or directory (atomic; replaces a file at DST)."""
    _run(cluster_file, lambda fs: fs.rename(src, dst))


@click.command()
@cluster_option
def df(cluster_file: str | None) -> None:
    """Show space and inode usage."""

    async def go(fs: Client) -> None:
        st = await fs.statfs()
        click.echo(
            f"total {format_size(st.total_bytes)}  used {format_size(st.used_bytes)}  "
            f"free {format_size(st.free_bytes)}  files {st.files}  "
            f"directories {st.directories}"
        )

    _run(cluster_file, go)


@click.group("trash")
def trash_group() -> None:
    """Your trash: what `py3fs rm` removed, until it expires."""


@trash_group.command("ls")
@cluster_option
def trash_ls(cluster_file: str | None) -> None:
    """Entries: id, expiry, where it was removed from."""

    async def go(fs: Client) -> None:
        for e in await trash.list_trash(fs):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.expires))
            click.echo(f"{e.id}  expires {when}  {e.origin}")

    _run(cluster_file, go)


@trash_group.command("restore")
@cluster_option
@click.option("--to", "to", default="", help="Restore here instead.")
@click.argument("entry_id")
def trash_restore(cluster_file: str | None, to: str, entry_id: str) -> None:
    """Move entry ENTRY_ID back where it was removed from."""

    async def go(fs: Client) -> None:
        click.echo(await trash.restore(fs, entry_id, to))

    _run(cluster_file, go)


@trash_group.command("empty")
@cluster_option
@click.option("--expired", is_flag=True, help="Only entries past their expiry.")
def trash_empty(cluster_file: str | None, expired: bool) -> None:
    """Delete your trash entries for good."""

    async def go(fs: Client) -> None:
        n = await trash.empty(fs, expired_only=expired)
        click.echo(f"deleted {n} entr{'y' if n == 1 else 'ies'}")

    _run(cluster_file, go)


COMMANDS = [ls, stat, mkdir, put, get, cat, rm, mv, df, trash_group]
