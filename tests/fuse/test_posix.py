"""POSIX behaviour through a real FUSE mount (issue 4, acceptance 2)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Mount, fuse_mounted

NOBODY = 65534
MIB = 1 << 20


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command as uid/gid 65534 (coreutils: the venv's Python may sit
    in a directory that user cannot enter)."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return subprocess.run(
        list(argv), preexec_fn=drop, capture_output=True, text=True, timeout=60
    )


def refused(*argv: str) -> bool:
    result = as_nobody(*argv)
    denied = ("Permission denied", "Operation not permitted")
    return result.returncode != 0 and any(d in result.stderr for d in denied)


def test_mountinfo_shows_hf3fs(mount: Mount) -> None:
    assert fuse_mounted(mount.path)
    with open("/proc/self/mountinfo") as fh:
        line = next(x for x in fh if f" {mount.path} " in x)
    assert line.split(" - ")[1].split()[:2] == ["fuse.hf3fs", "hf3fs"]


def test_virtual_directory(mount: Mount) -> None:
    virt = mount.path / "3fs-virt"
    assert "3fs-virt" in os.listdir(mount.path)
    assert sorted(os.listdir(virt)) == ["iovs", "rm-rf"]
    assert stat.S_IMODE(virt.stat().st_mode) == 0o555
    assert stat.S_IMODE((virt / "iovs").stat().st_mode) == 0o777
    assert stat.S_IMODE((virt / "rm-rf").stat().st_mode) == 0o777
    with pytest.raises(PermissionError):
        (virt / "other").mkdir()


def test_rm_rf(mount: Mount, mnt: Path) -> None:
    tree = mnt / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(5):
        (tree / "a" / f"f{i}").write_bytes(b"x" * 100)
    (tree / "a" / "b" / "deep").write_text("deep")
    os.symlink(str(tree), mount.path / "3fs-virt" / "rm-rf" / "job1")
    assert not tree.exists()
    assert os.listdir(mnt) == []
    assert os.listdir(mount.path / "3fs-virt" / "rm-rf") == []
    with pytest.raises(OSError, match="cross-device") as err:
        os.symlink("/elsewhere", mount.path / "3fs-virt" / "rm-rf" / "job2")
    assert err.value.errno == errno.EXDEV


def test_copy_tree_and_diff(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = __import__("random").Random(4)
    for d in ("", "a", "a/b", "c", "a/b/empty"):
        (src / d).mkdir(parents=True, exist_ok=True)
    sizes = [0, 1, 4095, 4096, 65537, 1 * MIB + 3, 5 * MIB + 7]
    for i, size in enumerate(sizes):
        where = ("", "a", "a/b", "c")[i % 4]
        (src / where / f"f{i}.bin").write_bytes(rng.randbytes(size))
    os.symlink("f0.bin", src / "link")
    subprocess.run(["cp", "-r", str(src), str(mnt / "cp")], check=True)
    subprocess.run(["diff", "-r", str(src), str(mnt / "cp")], check=True)
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-a", f"{src}/", str(mnt / "rsync")], check=True)
        subprocess.run(["diff", "-r", str(src), str(mnt / "rsync")], check=True)


def test_readdir_pages(mnt: Path) -> None:
    names = {f"entry-{i:04d}" for i in range(300)}  # more than one page
    for name in names:
        (mnt / name).touch()
    assert set(os.listdir(mnt)) == names
    assert {e.name for e in os.scandir(mnt) if e.is_file()} == names


def test_rename_over_existing(mnt: Path) -> None:
    (mnt / "a").write_bytes(b"new contents")
    (mnt / "b").write_bytes(b"old")
    os.rename(mnt / "a", mnt / "b")
    assert not (mnt / "a").exists()
    assert (mnt / "b").read_bytes() == b"new contents"


def test_rename_noreplace(mnt: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    (mnt / "a").write_bytes(b"a")
    (mnt / "b").write_bytes(b"b")
    at_fdcwd, noreplace = -100, 1
    rc = libc.renameat2(
        at_fdcwd, bytes(mnt / "a"), at_fdcwd, bytes(mnt / "b"), noreplace
    )
    assert rc == -1
    assert ctypes.get_errno() == errno.EEXIST
    assert (mnt / "b").read_bytes() == b"b"
    rc = libc.renameat2(
        at_fdcwd, bytes(mnt / "a"), at_fdcwd, bytes(mnt / "c"), noreplace
    )
    assert rc == 0
    assert (mnt / "c").read_bytes() == b"a"


@pytest.mark.parametrize("mode", ["rb", "r+b"])
def test_read_unlinked_open_file(mnt: Path, mode: str) -> None:
    data = os.urandom(3 * MIB)
    (mnt / "f").write_bytes(data)
    (mnt / "g").write_bytes(b"replacement")
    with open(mnt / "f", mode) as fh, open(mnt / "g", "rb") as gh:
        os.unlink(mnt / "f")
        os.unlink(mnt / "g")
        assert not (mnt / "f").exists()
        # Give meta's GC (0.2 s interval in tests) every chance to remove it.
        time.sleep(1.5)
        assert fh.read() == data
        assert gh.read() == b"replacement"
        assert os.fstat(fh.fileno()).st_size == len(data)


def test_read_file_replaced_by_rename(mnt: Path) -> None:
    (mnt / "f").write_bytes(b"first")
    (mnt / "tmp").write_bytes(b"second")
    with open(mnt / "f", "rb") as fh:
        os.rename(mnt / "tmp", mnt / "f")
        time.sleep(1.5)  # GC would have run by now
        assert fh.read() == b"first"
    assert (mnt / "f").read_bytes() == b"second"


def test_hard_links(mnt: Path) -> None:
    (mnt / "a").write_bytes(b"shared")
    os.link(mnt / "a", mnt / "b")
    assert os.stat(mnt / "a").st_nlink == 2
    assert os.stat(mnt / "a").st_ino == os.stat(mnt / "b").st_ino
    with open(mnt / "b", "ab") as fh:
        fh.write(b" data")
    assert (mnt / "a").read_bytes() == b"shared data"
    os.unlink(mnt / "a")
    assert os.stat(mnt / "b").st_nlink == 1
    assert (mnt / "b").read_bytes() == b"shared data"


def test_symlinks(mnt: Path) -> None:
    (mnt / "target").write_bytes(b"via link")
    os.symlink("target", mnt / "rel")
    os.symlink(str(mnt / "target"), mnt / "abs")
    os.symlink("missing", mnt / "dangling")
    assert os.readlink(mnt / "rel") == "target"
    assert (mnt / "rel").read_bytes() == b"via link"
    assert (mnt / "abs").read_bytes() == b"via link"
    assert stat.S_ISLNK(os.lstat(mnt / "rel").st_mode)
    assert not (mnt / "dangling").exists()
    assert os.path.islink(mnt / "dangling")


def test_truncate_down_and_up(mnt: Path) -> None:
    path = mnt / "t"
    path.write_bytes(b"a" * 10_000)
    os.truncate(path, 100)
    assert path.read_bytes() == b"a" * 100
    os.truncate(path, 5000)
    assert path.read_bytes() == b"a" * 100 + bytes(4900)
    with open(path, "r+b") as fh:
        fh.write(b"b" * 8000)
        fh.flush()
        os.ftruncate(fh.fileno(), 10)
        fh.seek(0, os.SEEK_END)
        assert fh.tell() == 10
    assert path.read_bytes() == b"b" * 10
    assert path.stat().st_size == 10


def test_truncate_across_chunks(mnt: Path) -> None:
    path = mnt / "big"
    data = os.urandom(9 * MIB)  # three 4 MiB chunks
    path.write_bytes(data)
    os.truncate(path, MIB + 5)
    os.truncate(path, 9 * MIB)
    got = path.read_bytes()
    assert got[: MIB + 5] == data[: MIB + 5]
    assert got[MIB + 5 :] == bytes(9 * MIB - MIB - 5)


def test_o_trunc_drops_old_contents(mnt: Path) -> None:
    path = mnt / "f"
    path.write_bytes(b"x" * 5000)
    path.write_bytes(b"y" * 10)  # open(O_TRUNC)
    os.truncate(path, 5000)
    assert path.read_bytes() == b"y" * 10 + bytes(4990)


def test_sparse_file(mnt: Path) -> None:
    path = mnt / "sparse"
    with open(path, "wb") as fh:
        fh.seek(10 * MIB)
        fh.write(b"end")
    assert path.stat().st_size == 10 * MIB + 3
    with open(path, "rb") as fh:
        assert fh.read(MIB) == bytes(MIB)
        fh.seek(10 * MIB - 5)
        assert fh.read() == bytes(5) + b"end"


def test_append_from_two_processes(mnt: Path) -> None:
    path = mnt / "log"
    writer = textwrap.dedent(
        """
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        for i in range(200):
            os.write(fd, f"{sys.argv[2]}-{i:05d}".ljust(63).encode() + b"\\n")
        os.close(fd)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), tag])
        for tag in ("A", "B")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 400
    expected = {f"{t}-{i:05d}".ljust(63) for t in "AB" for i in range(200)}
    assert {line.decode() for line in lines} == expected
    for tag in "AB":  # each writer's records stay in its own order
        mine = [x for x in lines if x.startswith(tag.encode())]
        assert mine == sorted(mine)


def test_mmap_read(mnt: Path) -> None:
    data = os.urandom(2 * MIB + 123)
    (mnt / "m").write_bytes(data)
    with (
        open(mnt / "m", "rb") as fh,
        mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm,
    ):
        assert len(mm) == len(data)
        assert mm[:4096] == data[:4096]
        assert mm[MIB : MIB + 10] == data[MIB : MIB + 10]
        assert mm[:] == data


def test_attributes(mnt: Path) -> None:
    path = mnt / "f"
    path.write_bytes(b"x")
    os.chmod(path, 0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.chown(path, 1234, 5678)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(path, (1_000_000, 2_000_000))
    st = path.stat()
    assert (st.st_atime, st.st_mtime) == (1_000_000, 2_000_000)


def test_errors(mnt: Path) -> None:
    with pytest.raises(FileNotFoundError):
        (mnt / "missing").read_bytes()
    (mnt / "f").write_bytes(b"")
    with pytest.raises(FileExistsError):
        os.open(mnt / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    (mnt / "d").mkdir()
    (mnt / "d" / "x").touch()
    with pytest.raises(OSError, match="not empty") as err:
        os.rmdir(mnt / "d")
    assert err.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError):
        os.open(mnt / "d", os.O_WRONLY)
    with pytest.raises(NotADirectoryError):
        (mnt / "f" / "x").touch()


def test_non_root_refused_by_mode_bits(mnt: Path) -> None:
    (mnt / "private").mkdir(mode=0o700)
    (mnt / "private" / "secret").write_bytes(b"s")
    (mnt / "readonly").mkdir(mode=0o755)
    (mnt / "readonly" / "public").write_bytes(b"p")
    os.chmod(mnt / "readonly" / "public", 0o644)
    (mnt / "mine").write_bytes(b"m")
    os.chmod(mnt / "mine", 0o600)
    assert refused("ls", str(mnt / "private"))
    assert refused("cat", str(mnt / "private" / "secret"))
    assert refused("cat", str(mnt / "mine"))
    assert refused("touch", str(mnt / "readonly" / "new"))
    assert refused("rm", "-f", str(mnt / "readonly" / "public"))
    assert refused("chmod", "777", str(mnt / "readonly" / "public"))
    assert refused("sh", "-c", f"echo x >> {mnt}/readonly/public")
    assert as_nobody("cat", str(mnt / "readonly" / "public")).stdout == "p"
    assert as_nobody("sh", "-c", f"echo n > {mnt}/nobody-file").returncode == 0
    st = (mnt / "nobody-file").stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert (mnt / "readonly" / "public").read_bytes() == b"p"


def test_statfs(mount: Mount) -> None:
    st = os.statvfs(mount.path)
    assert st.f_bsize > 0
    assert st.f_frsize > 0
    assert st.f_blocks > 0
    assert 0 <= st.f_bavail <= st.f_blocks
    assert st.f_namemax == 255
    out = subprocess.run(
        ["df", "-P", str(mount.path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[1].startswith("hf3fs ")
