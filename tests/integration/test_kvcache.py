"""Acceptance 1: a KVCache store shared by processes, with exact prefixes, LRU
eviction that spares leased pages, and an index that agrees with the files
after a meta process is killed mid-workload."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvcache_common import PAGE, page_data, tokens
from nscheck import check_namespace

from client import Client
from kv_cache.page_keys import page_keys
from kv_cache.store import KVCacheStore
from py3fs.cluster import LocalCluster

PEER = Path(__file__).with_name("kvcache_peer.py")


def run_peer(cluster: LocalCluster, *args: object) -> dict:
    """Run the peer script in a process of its own; its JSON answer."""
    out = subprocess.run(
        [sys.executable, str(PEER), str(cluster.cluster_file), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


async def check_consistent(fs: Client, store: KVCacheStore) -> set[bytes]:
    """Index entries and page files name the same pages (no orphan file, no
    dangling entry); returns the keys."""
    index = {e.key: e.inode async for e in store.list_pages()}
    files = {
        bytes.fromhex(e.name): e.inode for e in await fs.listdir(f"{store.path}/pages")
    }
    assert index == files
    return set(index)


async def test_two_processes_share_a_store(fs: Client, cluster: LocalCluster) -> None:
    store = await KVCacheStore(fs, "shared", PAGE).open()
    # The other process puts 6 pages of sequence 1; we find them by prefix.
    assert run_peer(cluster, "shared", "put", 1, 6) == {"put": 6}
    keys = page_keys(tokens(1, 8 * 64))
    assert await store.batch_exists(keys) == 6
    bufs = [bytearray(PAGE) for _ in range(8)]
    assert await store.get(keys, bufs) == [True] * 6 + [False] * 2
    assert all(bufs[i] == page_data(keys[i]) for i in range(6))
    # We put sequence 2; the other process finds and reads it.
    keys2 = page_keys(tokens(2, 5 * 64))
    await store.put(keys2, [page_data(k) for k in keys2])
    assert run_peer(cluster, "shared", "check", 2, 7) == {"found": 5, "intact": True}
    m = store.metrics
    assert (m["hits"], m["misses"], m["pages_written"]) == (6, 2, 5)
    assert m["bytes_read"] == 6 * PAGE
    assert m["bytes_written"] == 5 * PAGE


async def test_batch_exists_gives_exact_prefix(fs: Client) -> None:
    import numpy as np

    store = await KVCacheStore(fs, "prefix", PAGE).open()
    base = tokens(3, 10 * 64)
    keys = page_keys(base)
    await store.put(keys[:8], [page_data(k) for k in keys[:8]])
    assert await store.batch_exists(keys) == 8
    assert await store.batch_exists(keys[:5]) == 5
    # Same first 3 pages, then a different token: the chain diverges at page 3.
    other = page_keys([*base[: 3 * 64 + 10], 7, *base[3 * 64 + 11 :]])
    assert other[:3] == keys[:3]
    assert await store.batch_exists(other) == 3
    # A hole ends the prefix even though later pages are cached.
    assert await store.remove([keys[4]]) == 1
    assert await store.batch_exists(keys) == 4
    assert await store.exists(keys[3:7]) == [True, False, True, True]
    # Zero-copy get into a numpy array.
    arr = np.zeros((2, PAGE), dtype=np.uint8)
    assert await store.get(keys[:2], [arr[0], arr[1]]) == [True, True]
    assert arr[1].tobytes() == page_data(keys[1])
    await check_consistent(fs, store)


async def test_lru_eviction_spares_leased_pages(fs: Client) -> None:
    page = 4096
    store = await KVCacheStore(
        fs,
        "lru",
        page,
        capacity_bytes=10 * page,
        high_watermark=0.95,
        low_watermark=0.85,
    ).open()
    keys = page_keys(tokens(4, 11 * 64))
    for k in keys[:9]:  # one put each: distinct access times, oldest first
        await store.put([k], [page_data(k, page)])
    assert (await store.stats()).pages == 9
    assert await store.get([keys[0]], [bytearray(page)]) == [True]  # now newest
    async with store.lease([keys[1]]) as n:
        assert n == 1
        # 11 pages > 9.5 (high): evict the LRU unleased ones down to 8 (<= 8.5).
        await store.put(keys[9:11], [page_data(k, page) for k in keys[9:11]])
        stats = await store.stats()
        assert (stats.pages, stats.used_bytes) == (8, 8 * page)
        present = await store.exists(keys)
        assert present == [True, True, False, False, False] + [True] * 6
        assert store.metrics["evictions"] == 3
    # Released: page 1 is the oldest now and goes first.
    assert await store.evict(7 * page) == 1
    assert await store.exists(keys[:2]) == [True, False]
    await check_consistent(fs, store)


async def test_a_get_releases_its_read_lease(fs: Client) -> None:
    """A get's lease is released as it returns, without the caller waiting
    for it; this handle's next eviction finds the pages unleased, and one
    page read while another holder leases it stays leased by that holder."""
    page = 4096
    store = await KVCacheStore(fs, "release", page, read_lease=300.0).open()
    keys = page_keys(tokens(9, 3 * 64))
    await store.put(keys, [page_data(k, page) for k in keys])
    bufs = [bytearray(page) for _ in keys]
    async with store.lease([keys[0]]):
        for _ in range(3):
            assert await store.get(keys, bufs) == [True] * 3
        # A lease of 300 s not released would keep keys 1 and 2 here.
        assert await store.evict(0) == 2
        assert await store.exists(keys) == [True, False, False]
    assert await store.evict(0) == 1
    async with store:
        pass  # nothing left to release


async def test_index_and_files_agree_after_meta_kill(
    fs: Client, cluster: LocalCluster
) -> None:
    """kill -9 a meta while puts, gets and evictions run; after restart every
    index entry has its file and every file its entry, and pages read back."""
    page = 8192
    store = await KVCacheStore(
        fs, "crash", page, capacity_bytes=40 * page, staging_ttl=0.001, batch=8
    ).open()
    stop = asyncio.Event()
    done: list[float] = []  # completion times of put+get rounds

    async def workload(seed: int) -> None:
        # No exception is swallowed: the kill must be absorbed by the client's
        # retries on the other meta (same request ids), or the test fails.
        n = 0
        while not stop.is_set():
            keys = page_keys(tokens(seed * 1000 + n, 6 * 64))
            await store.put(keys, [page_data(k, page) for k in keys])
            await store.get(keys[:3], [bytearray(page) for _ in range(3)])
            done.append(time.monotonic())
            n += 1

    tasks = [asyncio.create_task(workload(s)) for s in (1, 2)]
    victim = cluster.metas[0]
    try:
        await asyncio.sleep(1.0)
        assert done, "no round finished before the kill"
        victim.kill(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        if not victim.running():
            await asyncio.to_thread(cluster.restart, victim)
    assert any(t > killed for t in done), "no progress after the kill"
    keys = await check_consistent(fs, store)
    assert len(keys) >= 6
    # Staging files of interrupted puts are not pages; gc removes them.
    await store.gc()
    assert await fs.listdir(f"{store.path}/.staging") == []
    keys = await check_consistent(fs, store)
    stats = await store.stats()
    assert stats.pages == len(keys)
    assert stats.used_bytes == len(keys) * page
    ordered = sorted(keys)
    bufs = [bytearray(page) for _ in ordered]
    assert await store.get(ordered, bufs) == [True] * len(ordered)
    assert all(b == page_data(k, page) for b, k in zip(bufs, ordered, strict=True))
    await asyncio.to_thread(check_namespace, cluster.kv_url)


class FakeHostPool:
    """The parts of SGLang's host KV pool that HiCache backends touch: pages of
    `page_size` tokens in one flat buffer, page-first."""

    page_size = 64

    def __init__(self, pages: int, page_bytes: int) -> None:
        self.page_bytes = page_bytes
        self.buf = bytearray(pages * page_bytes)

    def get_data_page(self, index: int, flat: bool = True) -> memoryview:
        start = index // self.page_size * self.page_bytes
        return memoryview(self.buf)[start : start + self.page_bytes]


def test_hicache_adapter(cluster: LocalCluster) -> None:
    from client import ClientConfig
    from kv_cache.hicache import Py3fsHiCacheStorage

    page = 4096
    backend = Py3fsHiCacheStorage(
        name="hicache",
        page_bytes=page,
        client_config=ClientConfig(
            mgmt=cluster.mgmt_addresses, token_file=str(cluster.admin_token_file)
        ),
    )
    try:
        keys = [k.hex() for k in page_keys(tokens(5, 4 * 64))]
        src = FakeHostPool(4, page)
        src.buf[:] = b"".join(page_data(bytes.fromhex(k), page) for k in keys)
        backend.register_mem_pool_host(src)
        assert backend.batch_set_v1(keys[:3], list(range(0, 256))) == [True] * 3
        assert backend.batch_exists(keys) == 3
        assert backend.exists(keys[0])
        assert not backend.exists(keys[3])
        dst = FakeHostPool(4, page)
        backend.register_mem_pool_host(dst)
        assert backend.batch_get_v1(keys[:3], list(range(64, 256 + 64))) == [True] * 3
        # Pages land in host slots 1..3, straight into the pool's buffer.
        assert dst.buf[page:] == src.buf[: 3 * page]
        one = bytearray(page)
        assert backend.get(keys[1], one) is one
        assert one == page_data(bytes.fromhex(keys[1]), page)
        assert backend.get(keys[3], bytearray(page)) is None
        assert backend.set(keys[3], bytearray(page))
        assert backend.get_stats()["pages_written"] == 4
        assert backend.clear()
        assert backend.batch_exists(keys) == 0
    finally:
        backend.close()
