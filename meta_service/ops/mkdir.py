"""mkdir (and mkdir -p), mknod, and the ownership rules every new inode follows."""

from __future__ import annotations

import stat
from collections.abc import Callable

from meta_service import dentries, inodes
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import W, X
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import Inode, InodeType, MetaReq, MkdirReq, MknodReq


def new_owner(
    parent: Inode, who: MetaReq, mode: int, kind: InodeType
) -> tuple[int, int]:
    """(gid, mode) of a new inode in `parent`: in a setgid directory it takes
    the directory's group, and a new directory keeps the setgid bit (BSD group
    semantics, as Linux does for setgid directories). A non-member creating a
    setgid file there loses the bit, as on Linux."""
    mode &= 0o7777
    if parent.mode & stat.S_ISGID:
        gid = parent.gid
        if kind == InodeType.DIRECTORY:
            mode |= stat.S_ISGID
        elif mode & stat.S_ISGID and who.uid != 0 and not lookup.in_group(who, gid):
            mode &= ~stat.S_ISGID
        return gid, mode
    return who.gid, mode


def check_new_entry(parent: Inode, name: str, who: MetaReq) -> None:
    """`name` may be added to `parent`: valid, parent writable. Whether the
    name is free is the insert's to find (`add_entry`, `add_name`): one
    statement instead of a read and a write."""
    lookup.validate_name(name)
    lookup.check_access(parent, who, W | X)


def add_name(tr: Transaction, parent: Inode, name: str, node: Inode) -> None:
    """Enter `node` under `name` in `parent`; AlreadyExists if taken."""
    if not dentries.insert(tr, parent.inode, name, node.inode, node.type):
        raise errors.AlreadyExists(f"{name!r} exists")


def add_entry(
    tr: Transaction, ctx: OpContext, parent: Inode, name: str, node: Inode
) -> Inode:
    """Store new inode `node` under `name` in `parent` and account for it;
    returns the parent's new attributes. AlreadyExists if the name is taken."""
    add_name(tr, parent, name, node)
    inodes.store(tr, node)
    inodes.count(tr, node.type, +1)
    is_dir = node.type == InodeType.DIRECTORY
    return inodes.entries_changed(tr, parent, node.ctime, subdirs=1 if is_dir else 0)


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
    check_new_entry(parent, name, who)
    now = ctx.now_ns()
    gid, mode = new_owner(parent, who, mode, InodeType.DIRECTORY)
    node = Inode(
        inode=inode_id,
        type=InodeType.DIRECTORY,
        mode=mode,
        uid=who.uid,
        gid=gid,
        nlink=2,
        atime=now,
        mtime=now,
        ctime=now,
        parent=parent.inode,
        dir_layout=parent.dir_layout,
    )
    add_entry(tr, ctx, parent, name, node)
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
        parent, name = lookup.resolve_parent(tr, req.path, req, req.at)
        return new_directory(tr, ctx, parent, name, req.mode, req, new_id())
    comps = lookup.split_path(req.path)
    cur = lookup.start(tr, req.at, req.path)
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


_SPECIAL = {
    InodeType.FIFO,
    InodeType.SOCKET,
    InodeType.CHAR_DEVICE,
    InodeType.BLOCK_DEVICE,
}


def mknod(
    tr: Transaction, ctx: OpContext, req: MknodReq, new_id: Callable[[], int]
) -> Inode:
    """A FIFO, socket or device node. Devices need root (EPERM otherwise), as
    mknod(2) without CAP_MKNOD."""
    if req.type not in _SPECIAL:
        raise errors.InvalidArgument(f"mknod of type {req.type!r}")
    if req.type in (InodeType.CHAR_DEVICE, InodeType.BLOCK_DEVICE) and req.uid != 0:
        raise errors.OperationNotPermitted("only root may create device nodes")
    parent, name = lookup.resolve_parent(tr, req.path, req, req.at)
    check_new_entry(parent, name, req)
    now = ctx.now_ns()
    gid, mode = new_owner(parent, req, req.mode, req.type)
    node = Inode(
        inode=new_id(),
        type=req.type,
        mode=mode,
        uid=req.uid,
        gid=gid,
        nlink=1,
        atime=now,
        mtime=now,
        ctime=now,
        rdev=req.rdev,
    )
    add_entry(tr, ctx, parent, name, node)
    return node
