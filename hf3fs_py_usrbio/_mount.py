"""Mount discovery and fd registration: 3FS's module functions over a py3fs mount."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource

from client.usrbio.fds import FdEntry, FdTable

FS_TYPE = "fuse.hf3fs"
CHECK_ENV = "HF3FS_USRBIO_DONT_CHECKFS_FOR_MP"
MAX_PATH = 4096
fds = FdTable()


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _mount_points() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount of this process."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            found.append((_unescape(fields[4]), fields[fields.index("-") + 1]))
    return found


def extract_mount_point(path: str) -> str | None:
    """The py3fs mount `path` is on, or None. A missing path raises RuntimeError
    (as upstream's boost::filesystem error does through pybind)."""
    if len(os.fsencode(path)) > MAX_PATH:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
    try:
        canon = os.path.realpath(path, strict=True)
    except OSError as exc:
        raise RuntimeError(f"canonical: {exc.strerror}: {path!r}") from None
    check_fs = os.environ.get(CHECK_ENV) != "yes"
    best = None
    for mp, fstype in _mount_points():
        if os.path.basename(mp) == "3fs-virt":
            mp = os.path.dirname(mp)
        elif check_fs and fstype != FS_TYPE:
            continue
        inside = canon == mp or canon.startswith(mp.rstrip("/") + "/")
        if not inside or (best is not None and len(mp) <= len(best)):
            continue
        if os.path.isdir(os.path.join(mp, "3fs-virt")):
            best = mp
    return best


def _on_mount(fd: int) -> bool:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        return extract_mount_point(path) is not None
    except (OSError, RuntimeError):
        return False


def register_fd(fd: int, flags: int = 0) -> None:
    """Make `fd` usable in `ioring.prepare`. OSError(EBADF) when the fd is not
    on a py3fs mount, OSError(EINVAL) when it is registered already."""
    if fd < 0 or fd >= resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    if not _on_mount(fd):
        raise OSError(errno.EBADF, "fd is not on a 3FS mount")
    ino = os.fstat(fd).st_ino
    accmode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    # The dup keeps the file open (and its inode alive) while registered.
    dup = os.dup(fd)
    try:
        fds.add(fd, FdEntry(ino, accmode, dup))
    except OSError:
        os.close(dup)
        raise


def deregister_fd(fd: int) -> None:
    """Forget `fd`; never raises (callers pass closed or unknown fds)."""
    entry = fds.remove(fd)
    if entry is not None and isinstance(entry.owner, int):
        with contextlib.suppress(OSError):
            os.close(entry.owner)


def force_fsync(fd: int) -> int:
    """Make `stat` show the length written through rings: py3fs already does
    when the completion is posted, so this is an fsync."""
    try:
        os.fsync(fd)
    except OSError:
        return -1
    return 0


def hardlink(target: str, link_name: str) -> None:
    os.link(target, link_name)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(
    file: str | int, start: list[int], end: list[int], flags: int = 0
) -> None:
    """Deallocate [start[i], end[i]) of a file given by name or fd.
    RuntimeError if the lists differ in length or hold over 1000 ranges."""
    if len(start) != len(end) or len(start) > 1000:
        raise RuntimeError("punch_hole: bad range lists")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(file, os.O_WRONLY) if isinstance(file, str) else file
    try:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        for a, b in zip(start, end, strict=True):
            if b > a and libc.fallocate(fd, mode, a, b - a) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
    finally:
        if isinstance(file, str):
            os.close(fd)
