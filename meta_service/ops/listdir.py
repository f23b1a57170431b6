"""readdir, paged by name, optionally with `.`/`..` and each entry's inode."""

from __future__ import annotations

from meta_service import dentries, inodes
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import R
from py3fs import errors, ids
from py3fs.kv.base import Transaction
from py3fs.proto.messages import DirEntry, InodeType, ListDirReply, ListDirReq

MAX_PAGE = 10_000


def list_dir(tr: Transaction, ctx: OpContext, req: ListDirReq) -> ListDirReply:
    """Entries after `start_after` in name order, at most `limit` (capped at
    MAX_PAGE); `more` says whether another page follows. With `dots`, the
    first page (no `start_after`) begins with `.` and `..`; with `stat`, the
    reply carries each entry's inode too (one transaction: a consistent view)."""
    node = lookup.resolve(tr, req.path, req, at=req.at)
    if node.type != InodeType.DIRECTORY:
        raise errors.NotADirectory(f"{req.path!r} is not a directory")
    lookup.check_access(node, req, R)
    limit = min(req.limit, MAX_PAGE) if req.limit > 0 else 1000
    entries, more = dentries.listing(tr, node.inode, req.start_after, limit)
    if req.dots and not req.start_after:
        parent = node.parent or ids.ROOT_INODE
        entries = [
            DirEntry(name=".", inode=node.inode, type=InodeType.DIRECTORY),
            DirEntry(name="..", inode=parent, type=InodeType.DIRECTORY),
            *entries,
        ]
    if not req.stat:
        return ListDirReply(entries=entries, more=more)
    found = [
        node if e.inode == node.inode else inodes.load(tr, e.inode) for e in entries
    ]
    found = [n if n is None else lookup.for_caller(n, req) for n in found]
    return ListDirReply(entries=entries, more=more, inodes=found)
