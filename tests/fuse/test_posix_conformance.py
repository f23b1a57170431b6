"""POSIX conformance through a real FUSE mount (issue 9, acceptance 2).

Each behaviour the issue lists is checked as root and, where a user's
rights matter, as an unprivileged user with supplementary groups: a child
process (the system python, stdlib only) that drops to USER/GROUP with
EXTRA as a secondary group before running its snippet.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import Mount

USER = 12345
GROUP = 12345
EXTRA = 12346  # a supplementary group of USER
PY = "/usr/bin/python3"


def run_as(code: str, user: bool, cwd: Path) -> str:
    """Run `code` (stdlib Python) as root or as USER with groups
    (GROUP, EXTRA); returns its stdout, fails the test on a non-zero exit."""

    def drop() -> None:
        os.setgroups([EXTRA])
        os.setgid(GROUP)
        os.setuid(USER)

    result = subprocess.run(
        [PY, "-c", textwrap.dedent(code)],
        preexec_fn=drop if user else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


WHO = pytest.mark.parametrize("user", [False, True], ids=["root", "user"])


# ------------------------------------------------------------ special files


@WHO
def test_fifo_and_socket(mnt: Path, user: bool) -> None:
    out = run_as(
        """
        import os, socket, stat, threading
        os.mkfifo("fifo", 0o644)
        got = []
        t = threading.Thread(target=lambda: got.append(open("fifo", "rb").read()))
        t.start()
        with open("fifo", "wb") as w:
            w.write(b"through the pipe")
        t.join()
        s = socket.socket(socket.AF_UNIX)
        s.bind("sock")
        s.close()
        print(stat.S_ISFIFO(os.stat("fifo").st_mode), got[0].decode(),
              stat.S_ISSOCK(os.stat("sock").st_mode))
        os.unlink("fifo"); os.unlink("sock")
        """,
        user,
        mnt,
    )
    assert out.split() == ["True", "through", "the", "pipe", "True"]


def test_device_nodes_root_only(mnt: Path) -> None:
    os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(mnt / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    st = os.stat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(os.stat(mnt / "blk").st_mode)
    run_as(
        """
        import errno, os, stat
        try:
            os.mknod("dev2", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pass
        else:
            raise SystemExit("a user created a device node")
        """,
        True,
        mnt,
    )


# ------------------------------------------------------------ permissions


def test_supplementary_group_grants_access(mnt: Path) -> None:
    team = mnt / "team"
    team.mkdir()
    (team / "doc").write_text("shared")
    os.chown(team, 0, EXTRA)
    os.chmod(team, 0o770)
    os.chown(team / "doc", 0, EXTRA)
    os.chmod(team / "doc", 0o660)
    out = run_as(
        """
        import os
        print(sorted(os.listdir("team")))
        print(open("team/doc").read())
        open("team/new", "w").close()
        print(os.stat("team/new").st_uid)
        """,
        True,
        mnt,
    )
    assert out.split() == ["['doc']", "shared", str(USER)]


def test_non_owner_write_clears_setuid_setgid(mnt: Path) -> None:
    f = mnt / "suid"
    f.write_bytes(b"0")
    os.chmod(f, 0o6777)
    run_as(
        """
        with open("suid", "r+b") as fh:
            fh.write(b"1")
        """,
        True,
        mnt,
    )
    mode = stat.S_IMODE(os.stat(f).st_mode)
    assert mode & (stat.S_ISUID | stat.S_ISGID) == 0
    assert mode & 0o777 == 0o777
    assert f.read_bytes() == b"1"


def test_ftruncate_on_writable_fd_of_mode_0_file(mnt: Path) -> None:
    out = run_as(
        """
        import os
        fd = os.open("zero", os.O_CREAT | os.O_RDWR, 0)
        os.ftruncate(fd, 1000)
        print(os.fstat(fd).st_size, oct(os.fstat(fd).st_mode & 0o777))
        os.close(fd)
        try:
            os.truncate("zero", 10)
        except PermissionError:
            print("refused")
        """,
        True,
        mnt,
    )
    assert out.split() == ["1000", "0o0", "refused"]


def test_setgid_directory_inheritance(mnt: Path) -> None:
    shared = mnt / "sgid"
    shared.mkdir()
    os.chown(shared, 0, EXTRA)
    os.chmod(shared, 0o2777)
    out = run_as(
        """
        import os, stat
        os.mkdir("sgid/sub")
        open("sgid/file", "w").close()
        for p in ("sgid/sub", "sgid/file"):
            st = os.stat(p)
            print(st.st_gid, bool(st.st_mode & stat.S_ISGID))
        """,
        True,
        mnt,
    )
    assert out.split() == [str(EXTRA), "True", str(EXTRA), "False"]


# ------------------------------------------------------------ directories


@WHO
def test_parent_times_change_with_entries(mnt: Path, user: bool) -> None:
    out = run_as(
        """
        import os, time
        os.mkdir("p")
        open("p/f", "w").close()
        steps = [
            ("create", lambda: open("p/g", "w").close()),
            ("link", lambda: os.link("p/g", "p/h")),
            ("symlink", lambda: os.symlink("g", "p/s")),
            ("rename", lambda: os.rename("p/h", "p/i")),
            ("unlink", lambda: os.unlink("p/i")),
            ("mkdir", lambda: os.mkdir("p/d")),
            ("rmdir", lambda: os.rmdir("p/d")),
        ]
        for name, op in steps:
            before = os.stat("p")
            time.sleep(0.01)
            op()
            after = os.stat("p")
            ok = (after.st_mtime_ns > before.st_mtime_ns
                  and after.st_ctime_ns > before.st_ctime_ns)
            print(name, ok)
        """,
        user,
        mnt,
    )
    assert all(line.endswith("True") for line in out.splitlines()), out


@WHO
def test_directory_nlink_and_dots(mnt: Path, user: bool) -> None:
    out = run_as(
        """
        import os, subprocess
        os.mkdir("n")
        print(os.stat("n").st_nlink)
        for d in ("a", "b", "c"):
            os.mkdir(f"n/{d}")
        open("n/file", "w").close()
        print(os.stat("n").st_nlink)
        os.rmdir("n/c")
        os.rename("n/b", "b-moved")
        print(os.stat("n").st_nlink)
        print(" ".join(subprocess.run(["ls", "-a1", "n"], capture_output=True,
                                      text=True, check=True).stdout.split()))
        print(os.stat("n/.").st_ino == os.stat("n").st_ino,
              os.stat("n/..").st_ino == os.stat(".").st_ino)
        """,
        user,
        mnt,
    )
    lines = out.splitlines()
    assert lines[:3] == ["2", "5", "3"]
    assert lines[3] == ". .. a file"
    assert lines[4] == "True True"


# ------------------------------------------------------------ names and paths


def test_name_too_long(mnt: Path) -> None:
    for op in (
        lambda p: os.stat(p),
        lambda p: os.open(p, os.O_CREAT | os.O_WRONLY, 0o644),
        lambda p: os.mkdir(p),
    ):
        with pytest.raises(OSError, match="too long") as exc:
            op(mnt / ("x" * 256))
        assert exc.value.errno == errno.ENAMETOOLONG
    (mnt / ("y" * 255)).write_text("ok")
    assert (mnt / ("y" * 255)).read_text() == "ok"


def test_paths_longer_than_4096_from_the_fs_root(mnt: Path) -> None:
    """The kernel limits one path argument to 4096 bytes; meta must not limit
    the path from its own root (a deep tree reached by relative steps)."""
    name = "d" * 200
    fd = os.open(mnt, os.O_RDONLY)
    try:
        for _ in range(30):  # 30 x 201 bytes deep
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(wfd, b"deep")
        os.close(wfd)
        assert os.stat("leaf", dir_fd=fd).st_size == 4
        os.rename("leaf", "leaf2", src_dir_fd=fd, dst_dir_fd=fd)
        os.unlink("leaf2", dir_fd=fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------ times and appends


@WHO
def test_integer_nanosecond_times(mnt: Path, user: bool) -> None:
    out = run_as(
        """
        import os
        open("t", "w").close()
        ns = 1_700_000_000_123_456_789
        os.utime("t", ns=(ns, ns + 21))
        st = os.stat("t")
        print(st.st_atime_ns - ns, st.st_mtime_ns - ns)
        """,
        user,
        mnt,
    )
    assert out.split() == ["0", "21"]


def test_o_append_from_two_processes(mnt: Path) -> None:
    n, size = 200, 32
    path = mnt / "log"
    path.write_bytes(b"")

    def appender(tag: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(n):
                os.write(fd, f"{tag}{i:05d}".encode().ljust(size - 1) + b"\n")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=appender, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = path.read_bytes()
    assert len(data) == 2 * n * size
    records = {data[i : i + size] for i in range(0, len(data), size)}
    assert len(records) == 2 * n


def test_size_current_while_open(mnt: Path, mount: Mount) -> None:
    """A second open of a file being written sees its size before close."""
    path = mnt / "growing"
    with open(path, "wb") as w:
        w.write(b"x" * 5000)
        w.flush()
        time.sleep(0.01)
        assert os.stat(path).st_size == 5000
        with open(path, "rb") as r:
            assert os.fstat(r.fileno()).st_size == 5000
            assert len(r.read()) == 5000


def test_size_current_after_usrbio_write_while_open(mnt: Path) -> None:
    """3FS's own USRBIO test: the new size shows while the fd is still open."""
    from multiprocessing.shared_memory import SharedMemory

    from hf3fs_fuse import io as h3io

    mib = 1 << 20
    mp = h3io.extract_mount_point(str(mnt))
    assert mp is not None
    mem = SharedMemory(size=mib, create=True)
    try:
        iov = h3io.make_iovec(mem, mp)
        ring = h3io.make_ioring(mp, 8, for_read=False)
        fd = os.open(mnt / "ring.bin", os.O_RDWR | os.O_CREAT, 0o644)
        h3io.register_fd(fd)
        try:
            assert os.fstat(fd).st_size == 0  # the kernel caches this
            mem.buf[:mib] = b"r" * mib
            ring.prepare(iov[:mib], False, fd, 0)
            done = ring.submit().wait(min_results=1)
            assert done[0].result == mib
            assert h3io.force_fsync(fd) == 0
            assert os.fstat(fd).st_size == mib
            assert os.path.getsize(mnt / "ring.bin") == mib
        finally:
            h3io.deregister_fd(fd)
            os.close(fd)
            del iov, ring
    finally:
        mem.close()
        mem.unlink()
