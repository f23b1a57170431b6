"""rename: atomic, across directories, replacing the destination when POSIX allows."""

from __future__ import annotations

import msgspec

from meta_service import dentries, inodes
from meta_service.ops import lookup, unlink
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import W, X
from py3fs import errors, ids
from py3fs.faults import fault_point
from py3fs.kv.base import Transaction
from py3fs.proto.messages import Changed, Inode, InodeType, RenameReq


def _check_not_ancestor(tr: Transaction, moved: int, dst_dir: Inode) -> None:
    """InvalidArgument when `dst_dir` is `moved` or lies below it: the move would
    cut the subtree off the root (a loop). Walks parent pointers up to the root."""
    cur = dst_dir
    hops = 0
    while True:
        if cur.inode == moved:
            raise errors.InvalidArgument("cannot move a directory into itself")
        if cur.inode == ids.ROOT_INODE:
            return
        hops += 1
        if hops > 100_000:
            raise errors.MetaError("directory parent chain does not reach the root")
        cur = inodes.get(tr, cur.parent or ids.ROOT_INODE)


def rename(tr: Transaction, ctx: OpContext, req: RenameReq) -> Changed:
    """Move `src` to `dst`. Replaces a file dst, or an empty directory dst when
    src is a directory. Raises NotFound, NotEmpty, IsADirectory (file over dir),
    NotADirectory (dir over file), InvalidArgument (dir into its own subtree, or
    '.'/'..' names), PermissionDenied."""
    src_dir, src_name = lookup.resolve_parent(tr, req.src, req, req.src_at)
    dst_dir, dst_name = lookup.resolve_parent(tr, req.dst, req, req.dst_at)
    if src_name == "..":
        raise errors.InvalidArgument("cannot rename '..'")
    lookup.validate_name(dst_name)
    lookup.check_access(src_dir, req, W | X)
    lookup.check_access(dst_dir, req, W | X)
    src = dentries.get(tr, src_dir.inode, src_name)
    if src is None:
        raise errors.NotFound(f"no such file or directory: {req.src!r}")
    dst = dentries.get(tr, dst_dir.inode, dst_name)
    if dst is not None and req.noreplace:
        raise errors.AlreadyExists(f"{req.dst!r} exists")
    if dst is not None and dst.inode == src.inode:
        return Changed()  # same file (or hard links to one): POSIX says do nothing
    is_dir = src.type == InodeType.DIRECTORY
    if is_dir:
        _check_not_ancestor(tr, src.inode, dst_dir)
    if dst is not None:
        dst_is_dir = dst.type == InodeType.DIRECTORY
        if is_dir and not dst_is_dir:
            raise errors.NotADirectory(f"{req.dst!r} is not a directory")
        if not is_dir and dst_is_dir:
            raise errors.IsADirectory(f"{req.dst!r} is a directory")
        if dst_is_dir and not dentries.is_empty(tr, dst.inode):
            raise errors.NotEmpty(f"{req.dst!r} is not empty")
    node = inodes.get(tr, src.inode)
    unlink.check_sticky(src_dir, node, req)
    replaced = inodes.get(tr, dst.inode) if dst is not None else None
    if replaced is not None:
        unlink.check_sticky(dst_dir, replaced, req)
    now = ctx.now_ns()
    dentries.remove(tr, src_dir.inode, src_name)
    fault_point("meta.rename.src_unlinked")
    dentries.put(tr, dst_dir.inode, dst_name, src.inode, src.type)
    fault_point("meta.rename.dst_linked")
    parent = dst_dir.inode if is_dir else node.parent
    node = msgspec.structs.replace(node, parent=parent, ctime=now)
    inodes.store(tr, node)
    out = Changed(nodes=[node])
    # Parents' times and subdirectory counts: a directory moving between
    # parents moves one nlink; a directory it replaces takes one away.
    gone = 1 if replaced is not None and replaced.type == InodeType.DIRECTORY else 0
    if src_dir.inode == dst_dir.inode:
        out.dirs.append(inodes.entries_changed(tr, src_dir, now, subdirs=-gone))
    else:
        moved = 1 if is_dir else 0
        out.dirs.append(inodes.entries_changed(tr, src_dir, now, subdirs=-moved))
        out.dirs.append(inodes.entries_changed(tr, dst_dir, now, subdirs=moved - gone))
    if replaced is not None:
        if replaced.type == InodeType.DIRECTORY:
            unlink.remove_directory(tr, replaced, out)
        else:
            unlink.drop_link(tr, ctx, replaced, out)
    return out
