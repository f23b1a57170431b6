"""readdir, paged by name."""

from __future__ import annotations

from meta_service import dentries
from meta_service.ops import lookup
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import R
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import InodeType, ListDirReply, ListDirReq

MAX_PAGE = 10_000


def list_dir(tr: Transaction, ctx: OpContext, req: ListDirReq) -> ListDirReply:
    """Entries after `start_after` in name order, at most `limit` (capped at
    MAX_PAGE); `more` says whether another page follows."""
    node = lookup.resolve(tr, req.path, req)
    if node.type != InodeType.DIRECTORY:
        raise errors.NotADirectory(f"{req.path!r} is not a directory")
    lookup.check_access(node, req, R)
    limit = min(req.limit, MAX_PAGE) if req.limit > 0 else 1000
    entries, more = dentries.listing(tr, node.inode, req.start_after, limit)
    return ListDirReply(entries=entries, more=more)
