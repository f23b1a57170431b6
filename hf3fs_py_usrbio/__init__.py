"""py3fs's `hf3fs_py_usrbio`: 3FS's USRBIO primitives in pure Python.

Same names, arguments, defaults, results and errno errors as 3FS's compiled
module (see the contract in the project's reference notes); the I/O is carried
out by the USRBIO agent in the py3fs FUSE daemon (`fuse_mount.agent`).
"""

from hf3fs_py_usrbio._ioring import ioring
from hf3fs_py_usrbio._iovec import iovec
from hf3fs_py_usrbio._mount import (
    deregister_fd,
    extract_mount_point,
    force_fsync,
    hardlink,
    punch_hole,
    register_fd,
)

__all__ = [
    "deregister_fd",
    "extract_mount_point",
    "force_fsync",
    "hardlink",
    "ioring",
    "iovec",
    "punch_hole",
    "register_fd",
]
