"""symlink, readlink, and hard links."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from meta_service import inodes
from meta_service.ops import lookup, mkdir
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import MAX_PATH_BYTES
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import (
    Inode,
    InodeType,
    LinkReq,
    PathReq,
    ReadlinkReply,
    SymlinkReq,
)

MAX_LINKS = 65000


def symlink(
    tr: Transaction, ctx: OpContext, req: SymlinkReq, new_id: Callable[[], int]
) -> Inode:
    """Create symlink `path` → `target` (stored verbatim, never resolved here)."""
    if not req.target:
        raise errors.NotFound("empty symlink target")
    if len(req.target.encode()) > MAX_PATH_BYTES or "\0" in req.target:
        raise errors.NameTooLong("symlink target too long")
    parent, name = lookup.resolve_parent(tr, req.path, req, req.at)
    mkdir.check_new_entry(parent, name, req)
    now = ctx.now_ns()
    gid, _ = mkdir.new_owner(parent, req, 0o777, InodeType.SYMLINK)
    node = Inode(
        inode=new_id(),
        type=InodeType.SYMLINK,
        mode=0o777,
        uid=req.uid,
        gid=gid,
        nlink=1,
        length=len(req.target.encode()),
        atime=now,
        mtime=now,
        ctime=now,
        target=req.target,
    )
    mkdir.add_entry(tr, ctx, parent, name, node)
    return node


def readlink(tr: Transaction, ctx: OpContext, req: PathReq) -> ReadlinkReply:
    node = lookup.resolve(tr, req.path, req, follow=False, at=req.at)
    if node.type != InodeType.SYMLINK:
        raise errors.InvalidArgument(f"{req.path!r} is not a symlink")
    return ReadlinkReply(target=node.target)


def link(tr: Transaction, ctx: OpContext, req: LinkReq) -> Inode:
    """Hard link `dst` to the file `src` (not followed if a symlink, as link(2)).
    OperationNotPermitted (EPERM) for a directory; AlreadyExists, TooManyLinks."""
    node = lookup.resolve(tr, req.src, req, follow=False, at=req.src_at)
    if node.type == InodeType.DIRECTORY:
        raise errors.OperationNotPermitted("hard links to directories are not allowed")
    if node.nlink == 0:
        raise errors.NotFound(f"{req.src!r} was removed")
    parent, name = lookup.resolve_parent(tr, req.dst, req, req.dst_at)
    mkdir.check_new_entry(parent, name, req)
    mkdir.add_name(tr, parent, name, node)
    if node.nlink >= MAX_LINKS:
        raise errors.TooManyLinks(f"{req.src!r} has {node.nlink} links")
    now = ctx.now_ns()
    node = msgspec.structs.replace(node, nlink=node.nlink + 1, ctime=now)
    inodes.store(tr, node)
    inodes.entries_changed(tr, parent, now)
    return node
