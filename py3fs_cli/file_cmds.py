"""User commands over a running cluster: ls, stat, mkdir, put, get, rm, mv, cat, df.

Each opens a `Client` from the cluster file (`--cluster FILE`, else $PY3FS_CLUSTER,
else ./.py3fs/cluster.toml) and runs one coroutine on uvloop. Local files are read
and written inline: the command's loop has nothing else to do meanwhile.
"""

# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat as stat_mod
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import click
import uvloop
from tqdm import tqdm

from client import Client, trash
from py3fs import errors
from py3fs.proto.messages import Inode, InodeType
from py3fs.units import format_size
from py3fs_cli.options import cluster_option

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


# Errors whose errno says it all: the message becomes "<what>: <strerror>".
_PLAIN = (
    errors.NotFound,
    errors.AlreadyExists,
    errors.NotADirectory,
    errors.IsADirectory,
    errors.NotEmpty,
    errors.PermissionDenied,
    errors.OperationNotPermitted,
    errors.TooManySymlinks,
)


@contextlib.contextmanager
def about(what: str) -> Iterator[None]:
    """Name the whole path (and the action) in errors raised inside: the
    services name only what they saw, often just the last component."""
    try:
        yield
    except errors.Py3fsError as exc:
        reason = os.strerror(exc.errno) if isinstance(exc, _PLAIN) else exc.message
        raise type(exc)(f"{what}: {reason}") from None
    except OSError as exc:
        if exc.filename is None:
            raise
        raise OSError(exc.errno, f"{what}: {exc.strerror}") from None


class OctalMode(click.ParamType):
    name = "mode"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        try:
            mode = int(value, 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode such as 755", param, ctx)
        if not 0 <= mode <= 0o7777:
            self.fail(f"mode {value!r} is out of range (0-7777)", param, ctx)
        return mode


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
        with about(f"cannot list {path}"):
            await ls_path(fs, path)

    async def ls_path(fs: Client, path: str) -> None:
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
        with about(f"cannot stat {path}"):
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
        if node.dir_layout:
            lay = node.dir_layout
            size = format_size(lay.chunk_size) if lay.chunk_size else "default"
            click.echo(
                f"new entries: chunk {size}, "
                f"stripe {lay.stripe or 'all'}, table {lay.table_id or 'default'}"
            )
        if node.type == InodeType.SYMLINK:
            click.echo(f"target: {node.target}")

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.option("-p", "parents", is_flag=True, help="Make parents; no error if present.")
@click.option(
    "-m", "mode", type=OctalMode(), default="755", help="Permission bits (octal)."
)
@click.argument("paths", nargs=-1, required=True)
def mkdir(
    cluster_file: str | None, parents: bool, mode: int, paths: tuple[str, ...]
) -> None:
    """Make directories."""

    async def go(fs: Client) -> None:
        for path in paths:
            with about(f"cannot make directory {path}"):
                await fs.mkdir(path, mode, parents=parents)

    _run(cluster_file, go)


def _bar(total: int, desc: str) -> tqdm[Any]:
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=total < PROGRESS_MIN or not sys.stderr.isatty(),
    )


async def _put_file(fs: Client, local: str, remote: str, chunk_size: int) -> int:
    total = os.path.getsize(local)
    buf = bytearray(min(BLOCK, max(total, 1)))
    view = memoryview(buf)
    with open(local, "rb") as src, _bar(total, "put") as bar:
        async with await fs.open(remote, "wb", chunk_size=chunk_size) as f:
            while n := src.readinto(buf):
                await f.write(view[:n])
                bar.update(n)
    return total


async def _is_dir(fs: Client, path: str) -> bool:
    try:
        return (await fs.stat(path)).type == InodeType.DIRECTORY
    except errors.NotFound:
        return False


@click.command()
@cluster_option
@click.option("--chunk-size", default=0, help="Chunk size in bytes (0: default).")
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.argument("local", type=click.Path(exists=True))
@click.argument("remote")
def put(
    cluster_file: str | None, chunk_size: int, recursive: bool, local: str, remote: str
) -> None:
    """Copy a local file (or with -r, a directory) into py3fs. A REMOTE that
    ends in / or is a directory receives LOCAL under its own name."""
    if os.path.isdir(local) and not recursive:
        raise click.UsageError(f"{local} is a directory (use put -r)")

    async def go(fs: Client) -> None:
        dst = remote
        if dst.endswith("/") or await _is_dir(fs, dst):
            dst = posixpath.join(dst, os.path.basename(os.path.normpath(local)))
        if not os.path.isdir(local):
            with about(f"cannot put {local} to {dst}"):
                total = await _put_file(fs, local, dst, chunk_size)
            click.echo(f"{local} -> {dst} ({format_size(total)})", err=True)
            return
        files = total = 0
        for root, dirs, names in os.walk(local):
            dirs.sort()
            rel = os.path.relpath(root, local)
            base = dst if rel == "." else posixpath.join(dst, *rel.split(os.sep))
            with about(f"cannot make directory {base}"):
                await fs.mkdir(base, parents=True)
            for name in sorted(names):
                src = os.path.join(root, name)
                if not os.path.isfile(src):
                    continue  # sockets, fifos, dangling links: nothing to copy
                target = posixpath.join(base, name)
                with about(f"cannot put {src} to {target}"):
                    total += await _put_file(fs, src, target, chunk_size)
                files += 1
        click.echo(f"{local} -> {dst} ({files} files, {format_size(total)})", err=True)

    _run(cluster_file, go)


async def _get_file(fs: Client, remote: str, local: str) -> int:
    async with await fs.open(remote, "rb") as f:
        total = f.length
        buf = bytearray(min(BLOCK, max(total, 1)))
        # Written beside the target and renamed: a failed copy leaves no
        # truncated file under the real name.
        tmp = os.path.join(
            os.path.dirname(local) or ".", f".{os.path.basename(local)}.py3fs-partial"
        )
        try:
            with open(tmp, "wb") as dst, _bar(total, "get") as bar:
                while n := await f.readinto(buf):
                    dst.write(memoryview(buf)[:n])
                    bar.update(n)
            os.replace(tmp, local)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return total


@click.command()
@cluster_option
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.argument("remote")
@click.argument("local", type=click.Path(dir_okay=True))
def get(cluster_file: str | None, recursive: bool, remote: str, local: str) -> None:
    """Copy a file (or with -r, a directory) out of py3fs. A LOCAL directory
    receives REMOTE under its own name."""
    if os.path.isdir(local):
        name = posixpath.basename(remote.rstrip("/")) or "root"
        local = os.path.join(local, name)

    async def go(fs: Client) -> None:
        with about(f"cannot get {remote}"):
            node = await fs.stat(remote)
        if node.type != InodeType.DIRECTORY:
            with about(f"cannot get {remote} to {local}"):
                total = await _get_file(fs, remote, local)
            click.echo(f"{remote} -> {local} ({format_size(total)})", err=True)
            return
        if not recursive:
            raise errors.IsADirectory(f"cannot get {remote}: is a directory (use -r)")
        files = total = 0

        async def walk(src: str, dst: str) -> None:
            nonlocal files, total
            with about(f"cannot get {src} to {dst}"):
                os.makedirs(dst, exist_ok=True)
                entries = [e async for e in fs.iterdir(src)]
            for entry in entries:
                child = posixpath.join(src, entry.name)
                target = os.path.join(dst, entry.name)
                if entry.type == InodeType.DIRECTORY:
                    await walk(child, target)
                elif entry.type == InodeType.FILE:
                    with about(f"cannot get {child} to {target}"):
                        total += await _get_file(fs, child, target)
                    files += 1

        await walk(remote, local)
        click.echo(
            f"{remote} -> {local} ({files} files, {format_size(total)})", err=True
        )

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.argument("remote")
def cat(cluster_file: str | None, remote: str) -> None:
    """Write a file's bytes to standard output."""

    async def go(fs: Client) -> None:
        with about(f"cannot cat {remote}"):
            if (await fs.stat(remote)).type == InodeType.DIRECTORY:
                raise errors.IsADirectory(remote)
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
            with about(f"cannot remove {path}"):
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
    """Rename a file or directory (atomic; replaces a file at DST). A DST that
    ends in / or is a directory receives SRC under its own name."""

    async def go(fs: Client) -> None:
        target = dst
        if target.endswith("/") or await _is_dir(fs, target):
            target = posixpath.join(target, posixpath.basename(src.rstrip("/")))
        with about(f"cannot move {src} to {target}"):
            await fs.rename(src, target)

    _run(cluster_file, go)


@click.command()
@cluster_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def df(cluster_file: str | None, as_json: bool) -> None:
    """Show space and inode usage. Logical space is what files can use (raw
    space divided by the replicas of a chain); raw space is the targets' disks."""

    async def go(fs: Client) -> None:
        st = await fs.statfs()
        view = await fs.routing.get()
        lengths = [len(c.targets) for c in view.chains.values()]
        replicas = max(1, round(sum(lengths) / len(lengths))) if lengths else 1
        used, free = st.used_bytes, st.free_bytes
        rows = {
            "logical": (used + free) // replicas,
            "raw": used + free,
        }
        space = {
            name: {
                "size": size,
                "used": used // (replicas if name == "logical" else 1),
                "avail": free // (replicas if name == "logical" else 1),
            }
            for name, size in rows.items()
        }
        if as_json:
            doc = {
                **space,
                "replicas": replicas,
                "files": st.files,
                "directories": st.directories,
            }
            click.echo(json.dumps(doc, indent=2))
            return
        click.echo(f"{'':<8} {'SIZE':>10} {'USED':>10} {'AVAIL':>10} {'USE%':>5}")
        for name, row in space.items():
            size = row["size"]
            pct = f"{100 * row['used'] / size:.0f}%" if size else "-"
            click.echo(
                f"{name:<8} {format_size(size):>10} {format_size(row['used']):>10} "
                f"{format_size(row['avail']):>10} {pct:>5}"
            )
        click.echo(
            f"replicas {replicas}  files {st.files}  directories {st.directories}"
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
