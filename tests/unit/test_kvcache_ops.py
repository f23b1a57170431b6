"""KVCache page index ops against a real sqlite store, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_meta_ops import make_routing

from meta_service.id_alloc import IdAllocator
from meta_service.ops.context import OpContext
from meta_service.store import MetaStore
from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.sqlite import SqliteDatabase
from py3fs.proto.messages import (
    KvEvictReq,
    KvKeysReq,
    KvListReq,
    KvLookupReq,
    KvPageNew,
    KvPutReq,
    KvStageReq,
    KvStoreReq,
    ListDirReq,
    PathReq,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: Path):
    db = SqliteDatabase(str(tmp_path / "meta.db"))
    view = make_routing()
    clock = Clock()
    s = MetaStore(
        db, OpContext(routing=lambda: view, clock=clock), IdAllocator(db, batch=100)
    )
    s.ensure_root()
    s.kv_store_open(KvStoreReq(store="s", page_bytes=10, capacity_bytes=100))
    yield s, clock
    db.close()


def put(s: MetaStore, *names: bytes, length: int = 10) -> list[bool]:
    files = s.kv_page_stage(KvStageReq(store="s", count=len(names))).files
    pages = [
        KvPageNew(key=k, inode=f.inode, length=length)
        for k, f in zip(names, files, strict=True)
    ]
    return s.kv_page_put(KvPutReq(store="s", pages=pages)).added


def listing(s: MetaStore, path: str) -> list[str]:
    return [e.name for e in s.list_dir(ListDirReq(path=path)).entries]


def consistent(s: MetaStore) -> set[bytes]:
    """The index and the pages directory name the same pages and inodes."""
    index = {e.key: e.inode for e in s.kv_page_list(KvListReq(store="s")).entries}
    files = {
        bytes.fromhex(e.name): e.inode
        for e in s.list_dir(ListDirReq(path="/kvcache/s/pages")).entries
    }
    assert index == files
    return set(index)


def test_put_lookup_prefix(env) -> None:
    s, _ = env
    assert put(s, b"a", b"b", b"c") == [True, True, True]
    assert listing(s, "/kvcache/s/.staging") == []
    r = s.kv_page_lookup(KvLookupReq(store="s", keys=[b"a", b"b", b"x", b"c"]))
    assert r.prefix_len == 2
    assert [p.index for p in r.pages] == [0, 1, 3]
    assert all(p.layout is not None and p.length == 10 for p in r.pages)
    r = s.kv_page_lookup(KvLookupReq(store="s", keys=[b"a", b"x", b"c"], prefix=True))
    assert r.prefix_len == 1
    assert len(r.pages) == 1
    assert s.stat(PathReq(path="/kvcache/s/pages/" + b"a".hex())).length == 10
    st = s.kv_store_stats(KvStoreReq(store="s"))
    assert (st.pages, st.used_bytes, st.capacity_bytes) == (3, 30, 100)
    assert consistent(s) == {b"a", b"b", b"c"}


def test_duplicate_put_keeps_first_and_drops_staging(env) -> None:
    s, _ = env
    put(s, b"a")
    first = s.kv_page_lookup(KvLookupReq(store="s", keys=[b"a"])).pages[0].inode
    assert put(s, b"a") == [False]
    assert s.kv_page_lookup(KvLookupReq(store="s", keys=[b"a"])).pages[0].inode == first
    assert listing(s, "/kvcache/s/.staging") == []
    assert s.kv_store_stats(KvStoreReq(store="s")).pages == 1


def test_retried_put_is_idempotent(env) -> None:
    s, _ = env
    (f,) = s.kv_page_stage(KvStageReq(store="s", count=1)).files
    req = KvPutReq(store="s", pages=[KvPageNew(key=b"k", inode=f.inode, length=10)])
    assert s.kv_page_put(req).added == [True]
    assert s.kv_page_put(req).added == [True]  # reply lost, client retried
    assert s.kv_store_stats(KvStoreReq(store="s")).used_bytes == 10


def test_evict_lru_skips_leased(env) -> None:
    s, clock = env
    for k in (b"1", b"2", b"3", b"4"):
        put(s, k)
        clock.now += 1
    s.kv_page_touch(KvKeysReq(store="s", keys=[b"1"]))  # 1 is now the newest
    s.kv_page_lease(KvKeysReq(store="s", keys=[b"2"], ttl=60, holder="h"))
    r = s.kv_page_evict(KvEvictReq(store="s", target_bytes=20))
    assert (r.evicted, r.evicted_bytes) == (2, 20)
    assert consistent(s) == {b"1", b"2"}
    # Released: 2 goes next.
    s.kv_page_lease(KvKeysReq(store="s", keys=[b"2"], ttl=0, holder="h"))
    assert s.kv_page_evict(KvEvictReq(store="s", target_bytes=10)).evicted == 1
    assert consistent(s) == {b"1"}


def test_evict_ttl_and_limit(env) -> None:
    s, clock = env
    put(s, b"a", b"b", b"c")
    clock.now += 100
    put(s, b"d")
    r = s.kv_page_evict(KvEvictReq(store="s", ttl=50, limit=2))
    assert (r.evicted, r.more) == (2, True)
    r = s.kv_page_evict(KvEvictReq(store="s", ttl=50, limit=2))
    assert (r.evicted, r.more) == (1, False)
    assert consistent(s) == {b"d"}
    lookup = s.kv_page_lookup(KvLookupReq(store="s", keys=[b"d"], ttl=50))
    assert lookup.prefix_len == 1


def test_stale_staging_removed(env) -> None:
    s, clock = env
    s.kv_page_stage(KvStageReq(store="s", count=3))
    assert len(listing(s, "/kvcache/s/.staging")) == 3
    r = s.kv_page_evict(KvEvictReq(store="s", staging_ttl=60))
    assert r.staging_removed == 0
    clock.now += 61
    r = s.kv_page_evict(KvEvictReq(store="s", staging_ttl=60))
    assert r.staging_removed == 3
    assert listing(s, "/kvcache/s/.staging") == []


def test_remove_and_gc_queue(env) -> None:
    s, _ = env
    put(s, b"a", b"b")
    s.kv_page_lease(KvKeysReq(store="s", keys=[b"b"], ttl=60, holder="h"))
    assert s.kv_page_remove(KvKeysReq(store="s", keys=[b"a", b"b", b"z"])).count == 1
    assert consistent(s) == {b"b"}
    queued = s.db.run(lambda tr: tr.get_range(*keys.gc_range(10**15)))
    assert len(queued) == 1


def test_bad_requests(env) -> None:
    s, _ = env
    with pytest.raises(errors.NotFound):
        s.kv_page_lookup(KvLookupReq(store="nope", keys=[b"a"]))
    with pytest.raises(errors.InvalidArgument):
        s.kv_store_open(KvStoreReq(store="s", page_bytes=99))
    with pytest.raises(errors.InvalidArgument):
        put(s, b"x" * 101)
    with pytest.raises(errors.NotFound):
        s.kv_page_put(
            KvPutReq(store="s", pages=[KvPageNew(key=b"k", inode=999999, length=1)])
        )
