"""unlink and rmdir, and dropping one link of an inode (shared with rename)."""

from __future__ import annotations

import stat

import msgspec

from meta_service import dentries, gc, inodes, sessions
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import W, X
from py3fs import errors, ids
from py3fs.kv.base import Transaction
from py3fs.proto.messages import Changed, Inode, InodeType, MetaReq, PathReq


def drop_link(
    tr: Transaction, ctx: OpContext, node: Inode, out: Changed | None = None
) -> None:
    """One name of `node` (a file or symlink) went away. At nlink 0 the inode
    leaves the namespace: a symlink is deleted, a file goes to the GC queue
    (its chunks are removed by gc) unless write sessions keep it open, in which
    case the last close queues it. Records what became of it in `out`."""
    now = ctx.now_ns()
    out = out or Changed()
    node = msgspec.structs.replace(node, nlink=max(0, node.nlink - 1), ctime=now)
    if node.nlink > 0:
        inodes.store(tr, node)
        out.nodes.append(node)
        return
    inodes.count(tr, node.type, -1)
    if node.type != InodeType.FILE:
        inodes.delete(tr, node.inode)
        out.gone.append(node.inode)
        return
    inodes.store(tr, node)
    out.nodes.append(node)  # open handles still see it, with nlink 0
    if not sessions.any_open(tr, node.inode):
        gc.enqueue(tr, node.inode, now // 1_000_000)


def check_sticky(parent: Inode, node: Inode, who: MetaReq) -> None:
    """In a sticky directory only the owner of an entry or of the directory
    (or root) may remove or rename it away."""
    if parent.mode & stat.S_ISVTX and who.uid not in (0, node.uid, parent.uid):
        raise errors.OperationNotPermitted("sticky directory")


def remove_directory(tr: Transaction, node: Inode, out: Changed) -> None:
    """Delete an (empty) directory inode."""
    inodes.delete(tr, node.inode)
    inodes.count(tr, InodeType.DIRECTORY, -1)
    out.gone.append(node.inode)


def unlink(tr: Transaction, ctx: OpContext, req: PathReq) -> Changed:
    """Remove a file or symlink name. IsADirectory for a directory."""
    parent, name = lookup.resolve_parent(tr, req.path, req, req.at)
    if name == "..":
        raise errors.IsADirectory(f"{req.path!r} is a directory")
    lookup.check_access(parent, req, W | X)
    ent = dentries.get(tr, parent.inode, name)
    if ent is None:
        raise errors.NotFound(f"no such file: {req.path!r}")
    if ent.type == InodeType.DIRECTORY:
        raise errors.IsADirectory(f"{req.path!r} is a directory")
    node = inodes.load(tr, ent.inode)
    if node is not None:
        check_sticky(parent, node, req)
    dentries.remove(tr, parent.inode, name)
    out = Changed(dirs=[inodes.entries_changed(tr, parent, ctx.now_ns())])
    # A name whose inode is gone (a dangling entry, found by fsck) just goes.
    if node is not None:
        drop_link(tr, ctx, node, out)
    return out


def rmdir(tr: Transaction, ctx: OpContext, req: PathReq) -> Changed:
    """Remove an empty directory. NotEmpty, NotADirectory; InvalidArgument for
    the root and for a last component of '.'."""
    parent, name = lookup.resolve_parent(tr, req.path, req, req.at)
    if name == "..":
        raise errors.NotEmpty(f"{req.path!r} is not empty")
    lookup.check_access(parent, req, W | X)
    ent = dentries.get(tr, parent.inode, name)
    if ent is None:
        raise errors.NotFound(f"no such directory: {req.path!r}")
    if ent.type != InodeType.DIRECTORY:
        raise errors.NotADirectory(f"{req.path!r} is not a directory")
    if ent.inode == ids.ROOT_INODE:
        raise errors.InvalidArgument("cannot remove the root")
    if not dentries.is_empty(tr, ent.inode):
        raise errors.NotEmpty(f"{req.path!r} is not empty")
    node = inodes.load(tr, ent.inode)
    if node is not None:
        check_sticky(parent, node, req)
    dentries.remove(tr, parent.inode, name)
    out = Changed(dirs=[inodes.entries_changed(tr, parent, ctx.now_ns(), subdirs=-1)])
    if node is not None:  # else a dangling entry (see unlink)
        remove_directory(tr, node, out)
    return out
