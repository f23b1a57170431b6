"""setattr: mode, owner, times, length (truncate/extend sets the length only)."""

from __future__ import annotations

from typing import Any

import msgspec

from meta_service import inodes
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import W
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import Inode, InodeType, SetAttrReq


def set_attr(tr: Transaction, ctx: OpContext, req: SetAttrReq) -> Inode:
    """Change the given attributes, following POSIX ownership rules: chmod needs
    the owner, chown root (or the owner giving the file to its own group), times
    the owner or write permission, length write permission on a file."""
    node = lookup.resolve(tr, req.path, req, req.follow)
    changes: dict[str, Any] = {}
    if req.mode is not None:
        if not lookup.is_owner(node, req):
            raise errors.OperationNotPermitted("only the owner may change the mode")
        changes["mode"] = req.mode & 0o7777
    if req.uid_new is not None and req.uid_new != node.uid:
        if req.uid != 0:
            raise errors.OperationNotPermitted("only root may change the owner")
        changes["uid"] = req.uid_new
    if req.gid_new is not None and req.gid_new != node.gid:
        if req.uid != 0 and not (req.uid == node.uid and req.gid_new == req.gid):
            raise errors.OperationNotPermitted("cannot change the group")
        changes["gid"] = req.gid_new
    if req.atime is not None or req.mtime is not None:
        if not lookup.is_owner(node, req):
            lookup.check_access(node, req, W)
        if req.atime is not None:
            changes["atime"] = req.atime
        if req.mtime is not None:
            changes["mtime"] = req.mtime
    if req.length is not None:
        if node.type == InodeType.DIRECTORY:
            raise errors.IsADirectory("cannot truncate a directory")
        if node.type != InodeType.FILE or req.length < 0:
            raise errors.InvalidArgument("bad truncate")
        lookup.check_access(node, req, W)
        changes["length"] = req.length
        if req.mtime is None:
            changes["mtime"] = ctx.clock()
    if not changes:
        return node
    node = msgspec.structs.replace(node, ctime=ctx.clock(), **changes)
    inodes.store(tr, node)
    return node
