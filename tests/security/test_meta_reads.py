"""Meta's read RPCs show a file's data only to who may use it (issue 11).

Before: `StatInode` (and stat, and a readdir with attributes) handed any
user the layout of another user's 0600 file, the first step of reading it
straight from storage; and a KVCache store's page index answered every user:
anyone could look pages up (getting their layouts) and remove or evict
another user's pages. Now the layout is shown only to the owner, root, or a
caller with read or write permission (the attributes stay visible, as POSIX
stat wants), and a store is shared exactly as its directory is: R to look
pages up, W to add, remove or evict them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import pytest
from harness import add_user, client_for, running_cluster

from client import Client, ClientConfig
from py3fs import errors
from py3fs.cluster import LocalCluster
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
)

SECRET = b"root only" * 100
KEY = b"k" * 32


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("metareads")) as c:
        yield c


@pytest.fixture(scope="module")
def mallory_token(cluster: LocalCluster) -> str:
    return add_user(cluster, "mallory", 2100)


def user(cluster: LocalCluster, token: str) -> Client:
    # Claims uid 0; only the token counts.
    return Client(ClientConfig(mgmt=cluster.mgmt_addresses, token=token, uid=0))


async def test_stat_shows_layout_only_to_who_may_read(
    cluster: LocalCluster, mallory_token: str
) -> None:
    async with client_for(cluster) as root:
        await root.mkdir("/shown", mode=0o755)
        await root.write_file("/shown/secret", SECRET)
        await root.chmod("/shown/secret", 0o600)
        await root.write_file("/shown/public", b"p" * 10)
        node = await root.stat("/shown/secret")
        assert node.layout is not None
        await root.mkdir("/shown/mine", mode=0o777)
    async with user(cluster, mallory_token) as mallory:
        by_inode = await mallory.stat_inode(node.inode)
        assert by_inode.layout is None
        # The attributes stay visible: stat needs no permission on the file.
        assert (by_inode.length, by_inode.mode, by_inode.uid) == (len(SECRET), 0o600, 0)
        assert (await mallory.stat("/shown/secret")).layout is None
        listing = await mallory.meta.list_dir(ListDirReq(path="/shown", stat=True))
        shown = {
            e.name: n for e, n in zip(listing.entries, listing.inodes, strict=True)
        }
        assert shown["secret"] is not None
        assert shown["secret"].layout is None
        assert shown["public"] is not None
        assert shown["public"].layout is not None
        assert (await mallory.stat("/shown/public")).layout is not None
        with pytest.raises(errors.PermissionDenied):
            await mallory.read_file("/shown/secret")
        # Her own 0600 file and a mode-0 one she owns: she sees their layouts.
        await mallory.write_file("/shown/mine/own", b"m")
        await mallory.chmod("/shown/mine/own", 0o000)
        own = await mallory.stat("/shown/mine/own")
        assert own.layout is not None
        assert (await mallory.stat_inode(own.inode)).layout is not None
    async with client_for(cluster) as root:
        assert await root.read_file("/shown/secret") == SECRET


async def test_kv_store_is_shared_as_its_directory(
    cluster: LocalCluster, mallory_token: str
) -> None:
    async with client_for(cluster) as root:
        info = await root.meta.kv_store_open(KvStoreReq(store="rootcache"))
        staged = await root.meta.kv_page_stage(KvStageReq(store="rootcache", count=1))
        page = staged.files[0]
        assert page.layout is not None
        await root.files.write(page.inode, page.layout, 0, b"v" * 64)
        put = KvPutReq(
            store="rootcache", pages=[KvPageNew(key=KEY, inode=page.inode, length=64)]
        )
        assert (await root.meta.kv_page_put(put)).added == [True]
    async with user(cluster, mallory_token) as mallory:
        # The store's directory is 0755: she may look pages up, not change them.
        found = await mallory.meta.kv_page_lookup(
            KvLookupReq(store="rootcache", keys=[KEY])
        )
        assert [p.inode for p in found.pages] == [page.inode]
        meta = mallory.meta
        refused: list[Callable[[], Awaitable[object]]] = [
            lambda: meta.kv_page_remove(KvKeysReq(store="rootcache", keys=[KEY])),
            lambda: meta.kv_page_evict(KvEvictReq(store="rootcache", target_bytes=0)),
            lambda: meta.kv_page_stage(KvStageReq(store="rootcache", count=1)),
            lambda: meta.kv_store_open(KvStoreReq(store="rootcache", capacity_bytes=1)),
        ]
        for call in refused:
            with pytest.raises(errors.PermissionDenied):
                await call()
    async with client_for(cluster) as root:
        await root.chmod(info.path, 0o700)
    async with user(cluster, mallory_token) as mallory:
        meta = mallory.meta
        reads: list[Callable[[], Awaitable[object]]] = [
            lambda: meta.kv_page_lookup(KvLookupReq(store="rootcache", keys=[KEY])),
            lambda: meta.kv_page_list(KvListReq(store="rootcache")),
            lambda: meta.kv_store_stats(KvStoreReq(store="rootcache")),
        ]
        for read in reads:
            with pytest.raises(errors.PermissionDenied):
                await read()
    async with client_for(cluster) as root:
        found = await root.meta.kv_page_lookup(
            KvLookupReq(store="rootcache", keys=[KEY])
        )
        assert [p.inode for p in found.pages] == [page.inode]
        assert await root.read_file(f"{info.path}/pages/{KEY.hex()}") == b"v" * 64
