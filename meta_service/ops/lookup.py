"""Path resolution, name validation, permission checks, and stat.

A request names an object as 3FS's `PathAt`: an inode `at` and a `path`
relative to it (one name from the FUSE mount, "" for `at` itself), or an
absolute path (from the root). Resolution walks dentries from there, needs
search (x) permission on every directory it passes, follows symlinks in
intermediate components (and in the last one when asked), and gives up after
MAX_SYMLINKS expansions with TooManySymlinks (ELOOP, an InvalidArgument). There
is no limit on a path's length: the kernel's is the one that matters; each
name is at most 255 bytes (NameTooLong).
"""

from __future__ import annotations

import msgspec

from meta_service import dentries, inodes
from py3fs import errors, ids
from py3fs.kv.base import Transaction
from py3fs.proto.messages import Inode, InodeReq, InodeType, MetaReq, PathReq

MAX_SYMLINKS = 40
MAX_NAME_BYTES = 255
# Symlink targets only: as Linux, a target is at most one page.
MAX_PATH_BYTES = 4096
R, W, X = 4, 2, 1


def split_path(path: str) -> list[str]:
    """Components of a path ('' and '.' dropped; '..' kept). NameTooLong for a
    component over MAX_NAME_BYTES."""
    if "\0" in path:
        raise errors.InvalidArgument("path contains NUL")
    comps = [c for c in path.split("/") if c not in ("", ".")]
    for c in comps:
        if len(c) * 4 > MAX_NAME_BYTES and len(c.encode()) > MAX_NAME_BYTES:
            raise errors.NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
    return comps


def validate_name(name: str) -> None:
    """A name a new entry may have: EINVAL for ''/'.'/'..'/'/'/NUL, ENAMETOOLONG
    beyond 255 bytes of UTF-8."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise errors.InvalidArgument(f"invalid name {name!r}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise errors.NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")


def in_group(who: MetaReq, gid: int) -> bool:
    return who.gid == gid or gid in who.groups


def check_access(node: Inode, who: MetaReq, want: int) -> None:
    """PermissionDenied unless `who` has all `want` bits (R/W/X) on `node`;
    uid 0 bypasses the check."""
    if who.uid == 0:
        return
    if who.uid == node.uid:
        bits = node.mode >> 6
    elif in_group(who, node.gid):
        bits = node.mode >> 3
    else:
        bits = node.mode
    if (bits & 7) & want != want:
        raise errors.PermissionDenied(f"permission denied on inode {node.inode}")


def is_owner(node: Inode, who: MetaReq) -> bool:
    return who.uid == 0 or who.uid == node.uid


def for_caller(node: Inode, who: MetaReq) -> Inode:
    """`node` as a stat shows it to `who`: the layout (where the data lives)
    only to the owner, root, or a caller with read or write permission. stat
    needs no permission on the file itself (POSIX: search on the path, and
    StatInode names no path), but a file's data is for those who may open it."""
    if node.layout is None or is_owner(node, who):
        return node
    for want in (R, W):
        try:
            check_access(node, who, want)
        except errors.PermissionDenied:
            continue
        return node
    return msgspec.structs.replace(node, layout=None)


def root(tr: Transaction) -> Inode:
    return inodes.get(tr, ids.ROOT_INODE)


def walk(
    tr: Transaction, start: Inode, comps: list[str], who: MetaReq, follow_last: bool
) -> Inode:
    """The inode `comps` lead to from directory `start`. Raises NotFound,
    NotADirectory, PermissionDenied, TooManySymlinks."""
    cur = start
    stack = list(reversed(comps))
    hops = 0
    while stack:
        name = stack.pop()
        if name in ("", "."):
            continue
        if cur.type != InodeType.DIRECTORY:
            raise errors.NotADirectory(f"not a directory: inode {cur.inode}")
        check_access(cur, who, X)
        if name == "..":
            cur = inodes.get(tr, cur.parent or ids.ROOT_INODE)
            continue
        ent = dentries.get(tr, cur.inode, name)
        if ent is None:
            raise errors.NotFound(f"no such file or directory: {name!r}")
        child = inodes.get(tr, ent.inode)
        if child.type == InodeType.SYMLINK and (stack or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise errors.TooManySymlinks("too many levels of symbolic links")
            if child.target.startswith("/"):
                cur = root(tr)
            stack.extend(reversed(child.target.split("/")))
            continue
        cur = child
    return cur


def start(tr: Transaction, at: int, path: str) -> Inode:
    """Where resolving `path` relative to inode `at` begins (InvalidArgument for
    a relative path without an `at`)."""
    if path.startswith("/"):
        return root(tr)
    if at == 0:
        raise errors.InvalidArgument(f"path must be absolute: {path!r}")
    return inodes.get(tr, at)


def resolve(
    tr: Transaction, path: str, who: MetaReq, follow: bool = True, at: int = 0
) -> Inode:
    return walk(tr, start(tr, at, path), split_path(path), who, follow)


def resolve_parent(
    tr: Transaction, path: str, who: MetaReq, at: int = 0
) -> tuple[Inode, str]:
    """The directory that holds the last component of `path` (relative to `at`),
    and that name (not validated: callers that create entries call
    validate_name). The root itself has no parent entry: InvalidArgument."""
    comps = split_path(path)
    if not comps:
        raise errors.InvalidArgument("the root has no parent entry")
    parent = walk(tr, start(tr, at, path), comps[:-1], who, follow_last=True)
    if parent.type != InodeType.DIRECTORY:
        raise errors.NotADirectory(f"not a directory: {path!r}")
    return parent, comps[-1]


def stat(tr: Transaction, req: PathReq) -> Inode:
    return for_caller(resolve(tr, req.path, req, req.follow, req.at), req)


def stat_inode(tr: Transaction, req: InodeReq) -> Inode:
    """Any caller may stat an inode (the mount's getattr does, for the kernel,
    which checked the path); the layout only as `for_caller` allows."""
    return for_caller(inodes.get(tr, req.inode), req)
