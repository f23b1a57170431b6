"""The namespace checker the crash tests rely on (tests/nscheck.py) finds
planted damage: a dangling dentry, an orphan inode, a wrong parent, counters
that disagree; and passes an undamaged namespace."""

from __future__ import annotations

from pathlib import Path

import pytest
from nscheck import check_namespace

from meta_service.ops.context import OpContext
from meta_service.store import MetaStore
from py3fs.kv import keys
from py3fs.kv.sqlite import SqliteDatabase
from py3fs.proto.messages import MkdirReq, SymlinkReq


@pytest.fixture
def kv(tmp_path: Path) -> str:
    """A namespace with /d, /d/e and the symlink /d/l; returns its KV URL."""
    path = tmp_path / "kv.db"
    db = SqliteDatabase(str(path))
    store = MetaStore(db, OpContext())
    store.ensure_root()
    store.mkdir(MkdirReq(path="/d/e", parents=True))
    store.symlink(SymlinkReq(path="/d/l", target="/elsewhere"))
    db.close()
    return f"sqlite://{path}"


def damage(url: str, fn) -> None:  # type: ignore[no-untyped-def]
    db = SqliteDatabase(url.removeprefix("sqlite://"))
    try:
        db.run(fn)
    finally:
        db.close()


def ino(url: str, parent: int, name: str) -> int:
    ns = check_namespace(url)
    return ns.dentries[(parent, name)].inode


def test_intact_namespace_passes(kv: str) -> None:
    ns = check_namespace(kv)
    assert len(ns.inodes) == 4


def test_dangling_dentry(kv: str) -> None:
    d = ino(kv, 1, "d")
    link = ino(kv, d, "l")
    damage(kv, lambda tr: tr.clear(keys.inode_key(link)))
    with pytest.raises(AssertionError, match="dangling dentry"):
        check_namespace(kv)


def test_orphan_inode(kv: str) -> None:
    d = ino(kv, 1, "d")
    damage(kv, lambda tr: tr.clear(keys.dentry_key(d, "e")))
    with pytest.raises(AssertionError, match="orphan inode"):
        check_namespace(kv)


def test_counters_must_match(kv: str) -> None:
    damage(kv, lambda tr: tr.add(keys.counter_key("files"), 1))
    with pytest.raises(AssertionError, match="counters"):
        check_namespace(kv)
