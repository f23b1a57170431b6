"""open/create (layout assignment, write sessions, O_TRUNC), close and sync."""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from meta_service import dentries, gc, inodes, sessions
from meta_service.ops import lookup, mkdir
from meta_service.ops.context import OpContext
from meta_service.ops.lookup import R, W, X
from py3fs import errors
from py3fs.kv.base import Transaction
from py3fs.proto.messages import (
    AppendReply,
    AppendReq,
    CloseReq,
    DirLayout,
    Empty,
    Inode,
    InodeType,
    Layout,
    MetaReq,
    OpenReply,
    OpenReq,
    RenewReq,
    SyncReq,
)

TABLE_ID = 1


def make_layout(
    ctx: OpContext, chunk_size: int, stripe: int, table_id: int = 0
) -> Layout:
    """`stripe` chains (0: all) of chain table `table_id` (0: the default one),
    starting at a random offset so files spread over the chains. Raises
    NoChainTable (retryable) before mgmtd has the table."""
    view = ctx.routing()
    if view is None:
        raise errors.NoChainTable("no routing information from mgmtd yet")
    table = view.table(table_id or TABLE_ID)
    if not table.chains:
        raise errors.NoChainTable(f"chain table {table.table_id} has no chains")
    if chunk_size < 0 or stripe < 0:
        raise errors.InvalidArgument("chunk size and stripe must not be negative")
    n = len(table.chains)
    off = ctx.rng.randrange(n)
    rotated = table.chains[off:] + table.chains[:off]
    count = stripe if 0 < stripe <= n else n
    return Layout(
        chunk_size=chunk_size or ctx.chunk_size,
        table_id=table.table_id,
        table_version=table.version,
        chains=rotated[:count],
    )


def _create(
    tr: Transaction, ctx: OpContext, req: OpenReq, parent: Inode, name: str, new_id: int
) -> tuple[Inode, Inode]:
    """The new file and its directory's new attributes."""
    lookup.validate_name(name)
    lookup.check_access(parent, req, W | X)
    # What the request asks for wins; the rest comes from the directory's layout.
    inherited = parent.dir_layout or DirLayout()
    layout = make_layout(
        ctx,
        req.chunk_size or inherited.chunk_size,
        req.stripe or inherited.stripe,
        inherited.table_id,
    )
    now = ctx.now_ns()
    gid, mode = mkdir.new_owner(parent, req, req.mode, InodeType.FILE)
    node = Inode(
        inode=new_id,
        type=InodeType.FILE,
        mode=mode,
        uid=req.uid,
        gid=gid,
        nlink=1,
        atime=now,
        mtime=now,
        ctime=now,
        layout=layout,
    )
    return node, mkdir.add_entry(tr, ctx, parent, name, node)


def is_write(flags: int) -> bool:
    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR) or bool(
        flags & os.O_TRUNC
    )


def open_file(
    tr: Transaction, ctx: OpContext, req: OpenReq, new_id: Callable[[], int]
) -> OpenReply:
    """Open (or with O_CREAT create) `req.path`. A write open returns a session id
    that `close` ends. Raises NotFound, AlreadyExists (O_CREAT|O_EXCL),
    IsADirectory (write open of a directory), PermissionDenied, NoChainTable."""
    write = is_write(req.flags)
    created = False
    new_parent = None  # the directory's attributes after a create
    truncated_from = 0
    if req.flags & os.O_CREAT:
        parent, name = lookup.resolve_parent(tr, req.path, req, req.at)
        if name == "..":
            raise errors.IsADirectory(f"{req.path!r} is a directory")
        lookup.check_access(parent, req, X)
        ent = dentries.get(tr, parent.inode, name)
        if ent is None:
            node, new_parent = _create(tr, ctx, req, parent, name, new_id())
            created = True
        elif req.flags & os.O_EXCL:
            raise errors.AlreadyExists(f"{req.path!r} exists")
        else:
            node = lookup.walk(tr, parent, [name], req, follow_last=True)
    else:
        node = lookup.resolve(tr, req.path, req, at=req.at)
    if node.type == InodeType.DIRECTORY:
        if write:
            raise errors.IsADirectory(f"{req.path!r} is a directory")
        lookup.check_access(node, req, R)
        return OpenReply(inode=node)
    if not created:
        acc = req.flags & os.O_ACCMODE
        want = (R if acc in (os.O_RDONLY, os.O_RDWR) else 0) | (W if write else 0)
        lookup.check_access(node, req, want)
        if req.flags & os.O_TRUNC and node.length:
            # The opener drops the old bytes from storage (OpenReply.truncated_from).
            truncated_from = node.length
            now = ctx.now_ns()
            node = msgspec.structs.replace(node, length=0, mtime=now, ctime=now)
            inodes.store(tr, node)
    if not write:
        return OpenReply(inode=node, parent=new_parent)
    session_id = sessions.create(tr, node.inode, req.client_id, ctx.clock(), req.lease)
    return OpenReply(
        inode=node,
        session_id=session_id,
        truncated_from=truncated_from,
        parent=new_parent,
    )


def _update_length(
    tr: Transaction, ctx: OpContext, node: Inode, req: CloseReq | SyncReq
) -> Inode:
    """Adopt the writer's length; the writes make the mtime now, unless the
    writer set the mtime since its last write (`req.mtime`), which only the
    owner may do (as utimensat)."""
    if req.length < 0:
        return node
    now = ctx.now_ns()
    mtime = req.mtime if req.mtime >= 0 and lookup.is_owner(node, req) else now
    node = msgspec.structs.replace(
        node, length=max(node.length, req.length), mtime=mtime, ctime=now
    )
    inodes.store(tr, node)
    return node


def close(tr: Transaction, ctx: OpContext, req: CloseReq) -> Inode:
    """End a write session, adopting the reported length if it is larger. When
    the file was unlinked and this was its last session, queue it for GC. A
    session that is already gone (a retried close) is not an error."""
    node = inodes.get(tr, req.inode)
    _may_set_length(tr, node, req, req.session_id)
    node = _update_length(tr, ctx, node, req)
    if (
        req.session_id
        and sessions.remove(tr, node.inode, req.session_id)
        and node.nlink == 0
        and not sessions.any_open(tr, node.inode)
    ):
        gc.enqueue(tr, node.inode, int(ctx.clock() * 1000))
    return node


def sync(tr: Transaction, ctx: OpContext, req: SyncReq) -> Inode:
    """Adopt the reported length (if larger) without ending the session."""
    node = inodes.get(tr, req.inode)
    _may_set_length(tr, node, req, "")
    return _update_length(tr, ctx, node, req)


def _may_set_length(
    tr: Transaction, node: Inode, req: MetaReq, session_id: str
) -> None:
    """Only a writer reports a length: the holder of a live write session of
    the file, or a caller with write permission on it. Otherwise anyone could
    set any file's length (and make a truncate walk 2^40 bytes of chunks)."""
    if session_id and sessions.exists(tr, node.inode, session_id):
        return
    if sessions.held_by(tr, node.inode, req.client_id):
        return
    lookup.check_access(node, req, W)


def append(tr: Transaction, ctx: OpContext, req: AppendReq) -> AppendReply:
    """Reserve `req.size` bytes at the end of the file for an O_APPEND write:
    the length grows now, in the same transaction that reads it, so two
    clients' appends never land on the same bytes. Needs a live write session
    of the file (BadFileHandle otherwise)."""
    node = inodes.get(tr, req.inode)
    if node.type != InodeType.FILE or req.size < 0:
        raise errors.InvalidArgument("append to a non-file or of a negative size")
    if not sessions.exists(tr, node.inode, req.session_id):
        raise errors.BadFileHandle(f"no write session {req.session_id!r}")
    offset = node.length
    if req.size:
        now = ctx.now_ns()
        node = msgspec.structs.replace(
            node, length=offset + req.size, mtime=now, ctime=now
        )
        inodes.store(tr, node)
    return AppendReply(offset=offset, inode=node)


def renew(tr: Transaction, ctx: OpContext, req: RenewReq) -> Empty:
    if req.ttl > 0:
        sessions.renew(tr, req.client_id, ctx.clock() + req.ttl)
    return Empty()
