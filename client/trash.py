"""A user's operations on the trash (layout in py3fs.trash): `py3fs rm` moves
what it removes here; `py3fs trash` lists, restores and empties it."""

from __future__ import annotations

import posixpath
import secrets
import time
from typing import TYPE_CHECKING

from py3fs import errors
from py3fs.proto.messages import MetaReq
from py3fs.trash import DEFAULT_DAYS, ORIGIN, TRASH, Entry, expiry_of

if TYPE_CHECKING:
    from client.client import Client

__all__ = ["DEFAULT_DAYS", "ORIGIN", "TRASH", "Entry", "expiry_of"]


async def user_dir(fs: Client) -> str:
    """This caller's trash directory; meta makes it on first use."""
    return (await fs.meta.trash_dir(MetaReq())).path


async def move_to_trash(fs: Client, path: str, days: float = DEFAULT_DAYS) -> str:
    """Move `path` (a file or a whole tree) into the caller's trash; returns
    the entry id."""
    path = posixpath.normpath("/" + path.lstrip("/"))
    if path == "/" or path == TRASH or path.startswith(TRASH + "/"):
        raise errors.InvalidArgument(f"cannot move {path} to the trash")
    await fs.stat(path, follow=False)  # NotFound before anything is made
    base = await user_dir(fs)
    entry_id = f"{int(time.time() + days * 86400)}-{secrets.token_hex(4)}"
    entry = f"{base}/{entry_id}"
    await fs.mkdir(entry, mode=0o700)
    await fs.write_file(f"{entry}/{ORIGIN}", path.encode())
    name = posixpath.basename(path)
    if name == ORIGIN:
        name += "~"
    await fs.rename(path, f"{entry}/{name}")
    return entry_id


async def list_trash(fs: Client) -> list[Entry]:
    base = await user_dir(fs)
    out = []
    for e in await fs.listdir(base):
        expires = expiry_of(e.name)
        if expires is None:
            continue
        entry = f"{base}/{e.name}"
        try:
            origin = (await fs.read_file(f"{entry}/{ORIGIN}")).decode()
            names = [x.name for x in await fs.listdir(entry) if x.name != ORIGIN]
        except errors.NotFound:
            # meta's trash reaper may delete an expired entry while we list it
            continue
        if names:
            out.append(Entry(e.name, origin, expires, names[0]))
    return sorted(out, key=lambda x: x.expires)


async def restore(fs: Client, entry_id: str, to: str = "") -> str:
    """Move the entry's item back to where it was (or to `to`); returns the path."""
    for entry in await list_trash(fs):
        if entry.id == entry_id:
            base = await user_dir(fs)
            dest = to or entry.origin
            if await fs.exists(dest):
                raise errors.AlreadyExists(f"{dest} exists; restore with --to PATH")
            await fs.rename(f"{base}/{entry.id}/{entry.name}", dest)
            await fs.remove(f"{base}/{entry.id}", recursive=True)
            return dest
    raise errors.NotFound(f"no trash entry {entry_id}")


async def empty(fs: Client, expired_only: bool = False) -> int:
    """Delete the caller's trash entries for good; returns how many."""
    base = await user_dir(fs)
    n = 0
    now = time.time()
    for e in await fs.listdir(base):
        expires = expiry_of(e.name)
        if expired_only and (expires is None or expires > now):
            continue
        await fs.remove(f"{base}/{e.name}", recursive=True)
        n += 1
    return n
