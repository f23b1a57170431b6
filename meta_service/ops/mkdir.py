"""mkdir, and mkdir -p."""

from __future__ import annotations

from collections.abc import Callable

from meta_service import dentries, inodes
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import W, X
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import Inode, InodeType, MetaReq, MkdirReq


def new_directory(
    tr: Transaction,
    ctx: OpContext,
    parent: Inode,
    name: str,
    mode: int,
    who: MetaReq,
    inode_id: int,
) -> Inode:
    """Create directory `name` in `parent` (checked: name valid, parent writable,
    entry absent)."""
    lookup.validate_name(name)
    lookup.check_access(parent, who, W | X)
    if dentries.get(tr, parent.inode, name) is not None:
        raise errors.AlreadyExists(f"{name!r} exists")
    now = ctx.clock()
    # Directories report nlink 1 ("subdirectory count unknown", as btrfs does):
    # keeping the parent's count exact would make every mkdir in a directory
    # conflict on the parent inode.
    node = Inode(
        inode=inode_id,
        type=InodeType.DIRECTORY,
        mode=mode & 0o7777,
        uid=who.uid,
        gid=who.gid,
        nlink=1,
        atime=now,
        mtime=now,
        ctime=now,
        parent=parent.inode,
    )
    inodes.store(tr, node)
    dentries.put(tr, parent.inode, name, inode_id, InodeType.DIRECTORY)
    inodes.count(tr, InodeType.DIRECTORY, +1)
    return node


def ids_needed(req: MkdirReq) -> int:
    """Upper bound of the inode ids `mkdir` may consume."""
    return max(1, len(lookup.split_path(req.path))) if req.parents else 1


def mkdir(
    tr: Transaction, ctx: OpContext, req: MkdirReq, new_id: Callable[[], int]
) -> Inode:
    """The new directory. Without `parents`: AlreadyExists if the path exists,
    NotFound if its parent does not. With `parents`: creates missing ancestors
    and returns the (possibly existing) directory."""
    if not req.parents:
        parent, name = lookup.resolve_parent(tr, req.path, req)
        return new_directory(tr, ctx, parent, name, req.mode, req, new_id())
    comps = lookup.split_path(req.path)
    cur = lookup.root(tr)
    for i, name in enumerate(comps):
        if name == "..":
            cur = lookup.walk(tr, cur, [name], req, follow_last=True)
            continue
        lookup.check_access(cur, req, X)
        ent = dentries.get(tr, cur.inode, name)
        if ent is None:
            cur = new_directory(tr, ctx, cur, name, req.mode, req, new_id())
            continue
        child = lookup.walk(tr, cur, [name], req, follow_last=True)
        if child.type != InodeType.DIRECTORY:
            if i == len(comps) - 1:
                raise errors.AlreadyExists(f"{req.path!r} exists")
            raise errors.NotADirectory(f"{name!r} is not a directory")
        cur = child
    return cur
