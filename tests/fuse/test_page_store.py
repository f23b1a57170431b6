"""Small reads fill the kernel's page cache (fuse_mount.page_store).

A 4 KiB read makes the mount fetch its whole 64 KiB block; the mount then
hands the block's other pages to the kernel (FUSE_NOTIFY_STORE), so later
reads in the block reach no daemon. A store lands later than the mount
decides it (from a thread), so these tests slow it down (fault points
`mount.page_store.before` and `mount.read.after_fetch`, one mount each) and
check that it never lands over newer bytes: each fails if its rule in
fuse_mount/handles.py is removed. Residency is read with mincore(2) on a
mapping of the file (FUSE has no RWF_NOWAIT).
"""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mount, start_mount
from harness import client_for

from py3fs import faults
from py3fs.cluster import LocalCluster

PAGE = 4096
BLOCK = 64 * 1024
DELAY = 1.5  # how long a slowed store or fetch waits, seconds
SETTLE = 2 * DELAY + 1  # long enough for any slowed store to have landed
SLOW_STORE = pytest.mark.parametrize(
    "slow_mount", ["mount.page_store.before"], indirect=True
)
# The fetch slowed so an open overtakes it; its store slowed so that, were it
# made, it would land after the kernel dropped the pages at that open (which
# waits for the READ under way).
SLOW_FETCH = pytest.mark.parametrize(
    "slow_mount", ["mount.read.after_fetch+mount.page_store.before"], indirect=True
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_ubyte),
]


def resident(path: Path, size: int) -> list[bool]:
    """Which pages of the first `size` bytes of `path` the kernel caches."""
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            vec = (ctypes.c_ubyte * (-(-size // PAGE)))()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return [bool(v & 1) for v in vec]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def wait_for(check: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def slow_mount(
    fuse_cluster: LocalCluster, request: pytest.FixtureRequest
) -> Iterator[Mount]:
    """A mount of its own whose first store or fetch is slowed (the points,
    joined by "+", are the fixture's parameter)."""
    points = {name: f"delay:{DELAY}" for name in request.param.split("+")}
    env = {faults.ENV: faults.env_value(**points)}
    base = Path(tempfile.mkdtemp(prefix="py3fs-pagestore-"))
    base.chmod(0o755)
    try:
        m = start_mount(fuse_cluster, base / "mnt", base / "mount.log", env)
        try:
            yield m
        finally:
            m.stop()
        text = m.log.read_text()
        assert "Traceback" not in text, text[-4000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _dir(mount: Mount, name: str) -> Path:
    d = mount.path / name
    d.mkdir()
    return d


def _fresh_reader(f: Path) -> int:
    """An fd of `f` with the kernel's cached pages dropped and no read-ahead,
    so every read is the daemon's (FUSE asks for just that page)."""
    fd = os.open(f, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


def cluster_path(mount: Mount, local: Path) -> str:
    return "/" + str(local.relative_to(mount.path))


def test_small_read_fills_the_rest_of_its_block(mount: Mount, mnt: Path) -> None:
    """One 4 KiB read brings its whole 64 KiB block into the page cache (and
    no more); an O_DIRECT read brings nothing."""
    data = random.Random(1).randbytes(4 * BLOCK)
    f = mnt / "f"
    f.write_bytes(data)
    fd = _fresh_reader(f)
    try:
        assert not any(resident(f, len(data)))
        assert os.pread(fd, PAGE, BLOCK + 3 * PAGE) == data[BLOCK + 3 * PAGE :][:PAGE]
        want = [BLOCK <= i * PAGE < 2 * BLOCK for i in range(len(data) // PAGE)]
        assert wait_for(lambda: resident(f, len(data)) == want), resident(f, len(data))
        # Served by the kernel now: the same bytes.
        assert os.pread(fd, BLOCK, BLOCK) == data[BLOCK : 2 * BLOCK]
    finally:
        os.close(fd)
    dfd = os.open(f, os.O_RDONLY | os.O_DIRECT)
    try:
        os.posix_fadvise(dfd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = mmap.mmap(-1, PAGE)
        os.preadv(dfd, [buf], 2 * BLOCK)
        assert bytes(buf) == data[2 * BLOCK : 2 * BLOCK + PAGE]
        time.sleep(SETTLE)  # a store, were there one, would have landed
        assert not any(resident(f, len(data))[2 * BLOCK // PAGE : 3 * BLOCK // PAGE])
    finally:
        os.close(dfd)


def test_short_file_keeps_its_size(mount: Mount, mnt: Path) -> None:
    """A store stops at the end of the file: a small read of a 10,000-byte
    file leaves its size (and its bytes) as they are."""
    data = random.Random(2).randbytes(10_000)
    f = mnt / "short"
    f.write_bytes(data)
    fd = _fresh_reader(f)
    try:
        assert os.pread(fd, 100, 0) == data[:100]
        assert wait_for(lambda: all(resident(f, len(data))))
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, 20_000, 0) == data
    finally:
        os.close(fd)


@SLOW_STORE
def test_open_for_write_waits_for_stores_under_way(slow_mount: Mount) -> None:
    """A store queued before an open for writing lands before that open
    returns, so it cannot overwrite what is written through it (rule: an
    open waits for the inode's stores under way)."""
    d = _dir(slow_mount, "open-waits")
    data = random.Random(3).randbytes(BLOCK)
    f = d / "f"
    f.write_bytes(data)
    fd = _fresh_reader(f)
    try:
        assert os.pread(fd, PAGE, 0) == data[:PAGE]  # its store is slowed
        new = b"N" * PAGE
        with open(f, "r+b", buffering=0) as w:
            assert os.pwrite(w.fileno(), new, PAGE) == PAGE
            time.sleep(SETTLE)
            assert os.pread(fd, PAGE, PAGE) == new
    finally:
        os.close(fd)
    with open(f, "rb") as fh:
        assert fh.read() == data[:PAGE] + new + data[2 * PAGE :]


@SLOW_STORE
def test_no_store_while_open_for_writing(slow_mount: Mount) -> None:
    """A small read while the file is open for writing on this mount stores
    nothing, so a write right after it cannot be overwritten by the read's
    (older) block (rule: no store while a writable handle is open)."""
    d = _dir(slow_mount, "writer-open")
    data = random.Random(4).randbytes(BLOCK)
    f = d / "f"
    f.write_bytes(data)
    with open(f, "r+b", buffering=0) as w:
        fd = _fresh_reader(f)
        try:
            assert os.pread(fd, PAGE, 0) == data[:PAGE]
            new = b"W" * PAGE
            assert os.pwrite(w.fileno(), new, 2 * PAGE) == PAGE
            time.sleep(SETTLE)
            assert os.pread(fd, PAGE, 2 * PAGE) == new
        finally:
            os.close(fd)


@SLOW_STORE
def test_other_clients_write_shows_at_next_open(
    slow_mount: Mount, fuse_cluster: LocalCluster
) -> None:
    """Another client rewrites the file while a store of its old bytes is
    under way: the next open on this mount reads the new bytes, also after
    the store had time to land (close-to-open: an open waits for stores
    under way before the kernel drops the file's pages)."""
    d = _dir(slow_mount, "other-client")
    rng = random.Random(5)
    data = rng.randbytes(BLOCK)
    f = d / "f"
    f.write_bytes(data)
    fd = _fresh_reader(f)
    try:
        assert os.pread(fd, PAGE, 0) == data[:PAGE]  # its store is slowed
    finally:
        os.close(fd)
    new = rng.randbytes(BLOCK)

    async def rewrite() -> None:
        async with client_for(fuse_cluster) as fs:
            await fs.write_file(cluster_path(slow_mount, f), new)

    asyncio.run(rewrite())
    with open(f, "rb", buffering=0) as fh:
        time.sleep(SETTLE)
        assert os.pread(fh.fileno(), PAGE, 5 * PAGE) == new[5 * PAGE : 6 * PAGE]
        assert fh.read() == new


@SLOW_FETCH
def test_fetch_overtaken_by_an_open_is_not_stored(
    slow_mount: Mount, fuse_cluster: LocalCluster
) -> None:
    """A small read's fetch brings the old bytes, another client rewrites the
    file, and an open on this mount finds it changed, all before the fetch
    returns: its (old) block is not stored over the pages the new open reads
    (rule: no store after an invalidation since the fetch began)."""
    d = _dir(slow_mount, "overtaken")
    rng = random.Random(6)
    data = rng.randbytes(BLOCK)
    f = d / "f"
    f.write_bytes(data)
    new = rng.randbytes(BLOCK)

    async def rewrite() -> None:
        async with client_for(fuse_cluster) as fs:
            await fs.write_file(cluster_path(slow_mount, f), new)

    fd = _fresh_reader(f)
    try:
        reader = threading.Thread(target=os.pread, args=(fd, PAGE, 0))
        reader.start()
        time.sleep(DELAY / 3)  # its fetch is done (old bytes), its store not decided
        asyncio.run(rewrite())
        with open(f, "rb", buffering=0) as fh:
            reader.join(timeout=30)
            assert not reader.is_alive()
            time.sleep(SETTLE)
            assert os.pread(fh.fileno(), PAGE, 5 * PAGE) == new[5 * PAGE : 6 * PAGE]
            assert fh.read() == new
    finally:
        os.close(fd)


def test_random_reads_during_writes_never_go_back(mount: Mount, mnt: Path) -> None:
    """Readers pick random pages while a writer rewrites random pages (and
    opens and closes its handle, so stores happen in between): a read
    returns a page at least as new as the last write of it that returned
    before the read began."""
    pages = 64
    f = mnt / "race"
    f.write_bytes(b"".join(_page(p, 0) for p in range(pages)))
    done = [0] * pages  # version of the last write of each page that returned
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        rng = random.Random(7)
        version = 0
        while not stop.is_set():
            with open(f, "r+b", buffering=0) as w:
                for _ in range(rng.randrange(1, 20)):
                    version += 1
                    p = rng.randrange(pages)
                    os.pwrite(w.fileno(), _page(p, version), p * PAGE)
                    done[p] = version
            time.sleep(rng.random() / 50)  # readers store while it is closed

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set() and not errors:
            fd = _fresh_reader(f)
            try:
                for _ in range(50):
                    p = rng.randrange(pages)
                    floor = done[p]
                    got = os.pread(fd, PAGE, p * PAGE)
                    page, version = _parse(got)
                    if page != p or version < floor:
                        errors.append(f"page {p}: read {page}@{version}, had {floor}")
                        return
            finally:
                os.close(fd)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]


def _page(p: int, version: int) -> bytes:
    head = f"{p}:{version}:".encode()
    return (head * (PAGE // len(head) + 1))[:PAGE]


def _parse(page: bytes) -> tuple[int, int]:
    p, version, _ = page.split(b":", 2)
    if _page(int(p), int(version)) != page:
        return -1, -1  # torn or foreign bytes
    return int(p), int(version)
