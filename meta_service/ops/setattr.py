"""setattr: mode, owner, times, length (truncate/extend sets the length only)."""

from __future__ import annotations

import stat
from typing import Any

import msgspec

from meta_service import inodes, sessions
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import W
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import DirLayout, Inode, InodeType, SetAttrReq

_SUID_SGID = stat.S_ISUID | stat.S_ISGID


def _new_mode(node: Inode, req: SetAttrReq, mode: int) -> int:
    """chmod's rules: the owner (or root) sets any bits, but a non-root owner
    outside the file's group loses setgid (chmod(2)); anyone who may write
    the file may clear its setuid/setgid bits and nothing else, which is what
    the kernel asks for when a non-owner writes or truncates it."""
    mode &= 0o7777
    if lookup.is_owner(node, req):
        if (
            req.uid != 0
            and mode & stat.S_ISGID
            and node.type != InodeType.DIRECTORY
            and not lookup.in_group(req, node.gid)
        ):
            mode &= ~stat.S_ISGID
        return mode
    if mode == node.mode & ~_SUID_SGID and node.mode & _SUID_SGID:
        lookup.check_access(node, req, W)
        return mode
    raise errors.OperationNotPermitted("only the owner may change the mode")


def _dir_layout(
    ctx: OpContext, node: Inode, req: SetAttrReq, new: DirLayout
) -> DirLayout | None:
    """A directory's layout for new entries, checked now so that a bad one fails
    here and not at every later create: the owner (or root) sets it, the
    chain table must exist. All fields 0 clears it."""
    if node.type != InodeType.DIRECTORY:
        raise errors.NotADirectory("a layout is set on a directory")
    if not lookup.is_owner(node, req):
        raise errors.OperationNotPermitted("only the owner may set the layout")
    if new.chunk_size < 0 or new.stripe < 0 or new.table_id < 0:
        raise errors.InvalidArgument("layout fields must not be negative")
    if new == DirLayout():
        return None
    view = ctx.routing()
    if view is None:
        raise errors.NoChainTable("no routing information from mgmtd yet")
    if new.table_id and new.table_id not in view.tables:
        # Not NoChainTable: that one is retryable, and this will not heal.
        raise errors.InvalidArgument(f"no chain table {new.table_id}")
    return new


def set_attr(tr: Transaction, ctx: OpContext, req: SetAttrReq) -> Inode:
    """Change the given attributes, following POSIX ownership rules: chmod needs
    the owner, chown root (or the owner giving the file to a group of its own),
    times the owner or write permission, length write permission on a file (or
    an open write session of it: ftruncate)."""
    node = lookup.resolve(tr, req.path, req, req.follow, req.at)
    changes: dict[str, Any] = {}
    if req.mode is not None:
        changes["mode"] = _new_mode(node, req, req.mode)
    owner_changed = False
    if req.uid_new is not None and req.uid_new != node.uid:
        if req.uid != 0:
            raise errors.OperationNotPermitted("only root may change the owner")
        changes["uid"] = req.uid_new
        owner_changed = True
    if req.gid_new is not None and req.gid_new != node.gid:
        if req.uid != 0 and not (
            req.uid == node.uid and lookup.in_group(req, req.gid_new)
        ):
            raise errors.OperationNotPermitted("cannot change the group")
        changes["gid"] = req.gid_new
        owner_changed = True
    if owner_changed and node.type != InodeType.DIRECTORY and req.mode is None:
        # chown clears setuid/setgid (Linux keeps setgid without group x: a
        # mandatory-locking mark).
        mode = node.mode & ~stat.S_ISUID
        if node.mode & stat.S_IXGRP:
            mode &= ~stat.S_ISGID
        changes["mode"] = mode
    if req.atime is not None or req.mtime is not None:
        if not lookup.is_owner(node, req):
            lookup.check_access(node, req, W)
        if req.atime is not None:
            changes["atime"] = req.atime
        if req.mtime is not None:
            changes["mtime"] = req.mtime
    if req.dir_layout is not None:
        changes["dir_layout"] = _dir_layout(ctx, node, req, req.dir_layout)
    now = ctx.now_ns()
    if req.length is not None:
        if node.type == InodeType.DIRECTORY:
            raise errors.IsADirectory("cannot truncate a directory")
        if node.type != InodeType.FILE or req.length < 0:
            raise errors.InvalidArgument("bad truncate")
        if not (req.session_id and sessions.exists(tr, node.inode, req.session_id)):
            lookup.check_access(node, req, W)
        changes["length"] = req.length
        if req.mtime is None:
            changes["mtime"] = now
    if not changes:
        return node
    node = msgspec.structs.replace(node, ctime=now, **changes)
    inodes.store(tr, node)
    return node
