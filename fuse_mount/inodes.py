"""FUSE inodes: numbering and attributes.

A FUSE inode number is the py3fs inode id itself (the root is 1 in both), so
`fstat().st_ino` on the mount names the py3fs inode and the USRBIO agent needs no
table of its own. Meta takes (parent inode, name) as the kernel sends them
(`PathAt`), so the daemon keeps no inode-to-path map.
"""

from __future__ import annotations

import stat

import pyfuse3

from py3fs.proto.messages import Inode, InodeType

ROOT = pyfuse3.ROOT_INODE
# The kernel treats a FUSE inode as an opaque 64-bit number; py3fs allocates
# ids from 1 upwards, so this range is free for the daemon's virtual entries.
VIRTUAL_BASE = 1 << 62
BLKSIZE = 1 << 20  # st_blksize: tools size their buffers by it; FUSE caps at 1 MiB

_TYPE_BITS = {
    InodeType.FILE: stat.S_IFREG,
    InodeType.DIRECTORY: stat.S_IFDIR,
    InodeType.SYMLINK: stat.S_IFLNK,
    InodeType.FIFO: stat.S_IFIFO,
    InodeType.SOCKET: stat.S_IFSOCK,
    InodeType.CHAR_DEVICE: stat.S_IFCHR,
    InodeType.BLOCK_DEVICE: stat.S_IFBLK,
}
# mknod's S_IFMT bits to the inode kinds meta stores.
TYPE_OF_MODE = {bits: kind for kind, bits in _TYPE_BITS.items()}


def is_virtual(ino: int) -> bool:
    return ino >= VIRTUAL_BASE


def negative_entry(timeout: float) -> pyfuse3.EntryAttributes:
    """A lookup answer the kernel caches as "no such entry" for `timeout`
    seconds (st_ino 0)."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = timeout
    return attr


def attributes(
    node: Inode,
    length: int | None = None,
    attr_timeout: float = 1.0,
    entry_timeout: float = 1.0,
) -> pyfuse3.EntryAttributes:
    """The kernel's view of a py3fs inode; `length` overrides the file length
    (it includes writes not yet reported to meta)."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = node.inode
    attr.generation = 0
    attr.entry_timeout = entry_timeout
    attr.attr_timeout = attr_timeout
    attr.st_mode = _TYPE_BITS[node.type] | (node.mode & 0o7777)
    attr.st_nlink = node.nlink
    attr.st_uid = node.uid
    attr.st_gid = node.gid
    attr.st_rdev = node.rdev
    if node.type == InodeType.FILE:
        size = node.length if length is None else length
    elif node.type == InodeType.SYMLINK:
        size = len(node.target.encode())
    elif node.type == InodeType.DIRECTORY:
        size = 4096
    else:
        size = 0
    attr.st_size = size
    attr.st_blksize = BLKSIZE
    attr.st_blocks = (size + 511) // 512
    attr.st_atime_ns = node.atime
    attr.st_mtime_ns = node.mtime
    attr.st_ctime_ns = node.ctime
    return attr


def virtual_attributes(
    ino: int, mode: int, size: int = 0, uid: int = 0
) -> pyfuse3.EntryAttributes:
    """Attributes of a daemon-served entry (no caching: its contents change
    without the kernel seeing namespace operations)."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = ino
    attr.entry_timeout = 0
    attr.attr_timeout = 0
    attr.st_mode = mode
    attr.st_nlink = 2 if stat.S_ISDIR(mode) else 1
    attr.st_uid = uid
    attr.st_gid = 0
    attr.st_size = size
    attr.st_blksize = BLKSIZE
    return attr
