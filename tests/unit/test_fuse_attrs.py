"""The FUSE daemon's attribute cache (fuse_mount.attrs.AttrCache): entries
live `ttl` seconds from their reply, never go back in time, and a parent's
attributes after a create are derived from the child the reply carried."""

from __future__ import annotations

import pytest

pytest.importorskip("pyfuse3", reason="the FUSE mount needs pyfuse3")

from fuse_mount.attrs import AttrCache
from py3fs.proto.messages import Inode, InodeType


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def node(ino: int, ctime: int, **kw: int) -> Inode:
    kind = InodeType.DIRECTORY if kw.pop("dir", 0) else InodeType.FILE
    nlink = kw.pop("nlink", 2 if kind == InodeType.DIRECTORY else 1)
    return Inode(
        inode=ino, type=kind, mode=0o755, uid=0, gid=0, nlink=nlink,
        mtime=ctime, ctime=ctime, **kw,
    )  # fmt: skip


def test_expiry_counts_from_the_reply() -> None:
    clock = Clock()
    cache = AttrCache(30.0, clock)
    cache.put(node(5, 10))
    clock.now += 20
    held = cache.get(5)
    assert held is not None
    assert held[0].ctime == 10
    assert held[1] == pytest.approx(10.0)  # the kernel may keep it 10 s more
    clock.now += 10
    assert cache.get(5) is None
    assert AttrCache(0.0, clock).get(5) is None


def test_an_older_read_does_not_replace_a_change() -> None:
    cache = AttrCache(30.0, Clock())
    cache.put(node(5, 20, length=7))
    cache.put(node(5, 10, length=3), read=True)  # a stat that raced the change
    held = cache.get(5)
    assert held is not None
    assert held[0].length == 7
    # A change reply older than the held one (a release finishing after an
    # unlink of another name): neither is trusted, the next GETATTR asks meta.
    cache.put(node(5, 10, length=4, nlink=2))
    assert cache.get(5) is None
    cache.put(node(5, 30, length=4))  # a newer change replaces
    held = cache.get(5)
    assert held is not None
    assert held[0].length == 4
    cache.forget(5)
    assert cache.get(5) is None


def test_changed_compares_size_and_times() -> None:
    cache = AttrCache(30.0, Clock())
    assert cache.changed(node(5, 10))  # nothing held: the kernel may be stale
    cache.put(node(5, 10, length=3))
    assert not cache.changed(node(5, 10, length=3))
    assert cache.changed(node(5, 10, length=4))
    assert cache.changed(node(5, 11, length=3))


def test_entry_added_derives_the_parent() -> None:
    clock = Clock()
    cache = AttrCache(30.0, clock)
    cache.entry_added(1, node(9, 50, dir=1))  # no parent held: nothing derived
    assert cache.get(1) is None
    cache.put(node(1, 10, dir=1))
    clock.now += 5
    cache.entry_added(1, node(9, 50, dir=1))
    cache.entry_added(1, node(10, 60))
    held = cache.get(1)
    assert held is not None
    parent, left = held
    assert (parent.nlink, parent.mtime, parent.ctime) == (3, 60, 60)
    assert left == pytest.approx(25.0)  # keeps the expiry of what it came from
    # A child older than the parent held (another meta's clock): not derived,
    # the parent is dropped so the kernel's GETATTR asks meta.
    cache.entry_added(1, node(11, 55))
    assert cache.get(1) is None


def test_bounded() -> None:
    cache = AttrCache(30.0, Clock(), max_entries=3)
    for ino in range(1, 6):
        cache.put(node(ino, 1))
    assert [cache.get(i) is not None for i in range(1, 6)] == [0, 0, 1, 1, 1]
