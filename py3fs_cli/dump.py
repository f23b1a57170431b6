"""`py3fs dump` / `py3fs load`: the namespace as JSON lines, and back.

A dump is the metadata only — names, types, permissions, owners, times, lengths,
symlink targets, hard links, chunk sizes, directory layouts — not file data,
which stays in storage. The first line is a header; then one object per name,
parents before children, in name order, so two dumps of the same namespace are
equal byte for byte. `load` recreates the tree through the client on any cluster
(files get their length as holes) and sets modes, owners and times last, so a
directory's mtime is not disturbed by the names created in it.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec

from client import Client
from py3fs import errors
from py3fs.proto.messages import DirLayout, Inode, InodeType

FORMAT = "py3fs-namespace-dump"
VERSION = 1
_TYPES = {
    InodeType.DIRECTORY: "dir",
    InodeType.FILE: "file",
    InodeType.SYMLINK: "symlink",
}


def _record(path: str, node: Inode) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "path": path,
        "type": _TYPES[node.type],
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "mtime": node.mtime,
        "atime": node.atime,
    }
    if node.type == InodeType.FILE:
        rec["length"] = node.length
        if node.layout is not None:
            rec["chunk_size"] = node.layout.chunk_size
    elif node.type == InodeType.SYMLINK:
        rec["target"] = node.target
    elif node.type == InodeType.DIRECTORY and node.dir_layout is not None:
        rec["layout"] = msgspec.to_builtins(node.dir_layout)
    return rec


async def dump(fs: Client, root: str = "/") -> AsyncIterator[dict[str, Any]]:
    """The header, then a record per name under `root` (root first)."""
    yield {"format": FORMAT, "version": VERSION, "root": root}
    seen: dict[int, str] = {}
    node = await fs.stat(root, follow=False)
    yield _record("/", node)
    stack = [(root, "/")]
    while stack:
        real, rel = stack.pop()
        entries = sorted([e async for e in fs.iterdir(real)], key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            child = posixpath.join(real, entry.name)
            child_rel = posixpath.join(rel, entry.name)
            node = await fs.stat(child, follow=False)
            if node.type == InodeType.FILE and node.nlink > 1:
                if node.inode in seen:
                    yield {"path": child_rel, "type": "link", "to": seen[node.inode]}
                    continue
                seen[node.inode] = child_rel
            yield _record(child_rel, node)
            if node.type == InodeType.DIRECTORY:
                subdirs.append((child, child_rel))
        # Depth first in name order: push in reverse so the first pops first.
        stack.extend(reversed(subdirs))


async def load(fs: Client, records: Iterable[dict[str, Any]], root: str = "/") -> int:
    """Recreate dumped names under `root`; returns how many were created. Raises
    InvalidArgument for something that is not a dump, AlreadyExists when a name
    is taken."""
    it = iter(records)
    header = next(it, None)
    if not header or header.get("format") != FORMAT:
        raise errors.InvalidArgument("not a py3fs namespace dump")
    if header.get("version") != VERSION:
        raise errors.InvalidArgument(f"dump version {header.get('version')} unknown")
    attrs: list[tuple[str, dict[str, Any]]] = []
    created = 0
    for rec in it:
        path = (
            posixpath.join(root, rec["path"].lstrip("/"))
            if rec["path"] != "/"
            else root
        )
        kind = rec["type"]
        if kind == "dir":
            if path != root:
                await fs.mkdir(path, rec["mode"])
                created += 1
            if "layout" in rec:
                # Before its children are created, so that they inherit it.
                await fs.setattr(path, dir_layout=DirLayout(**rec["layout"]))
        elif kind == "file":
            async with await fs.open(
                path, "wb", perm=rec["mode"], chunk_size=rec.get("chunk_size", 0)
            ):
                pass
            if rec["length"]:
                await fs.setattr(path, length=rec["length"])
            created += 1
        elif kind == "symlink":
            await fs.symlink(rec["target"], path)
            created += 1
        elif kind == "link":
            await fs.link(posixpath.join(root, rec["to"].lstrip("/")), path)
            created += 1
            continue
        else:
            raise errors.InvalidArgument(f"unknown record type {kind!r}")
        attrs.append((path, rec))
    # Children first, so setting a directory's times is the last change to it.
    for path, rec in reversed(attrs):
        changes = {
            "uid_new": rec["uid"],
            "gid_new": rec["gid"],
            "atime": rec["atime"],
            "mtime": rec["mtime"],
        }
        if rec["type"] == "symlink":
            # The link itself, not its target; its mode is fixed (lrwxrwxrwx).
            await fs.setattr(path, follow=False, **changes)
        else:
            await fs.setattr(path, mode=rec["mode"], **changes)
    return created


def encode(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"))
