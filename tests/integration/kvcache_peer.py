"""A second process sharing a KVCache store (run by test_kvcache.py):

    python kvcache_peer.py CLUSTER_FILE STORE put|check SEED N_PAGES

`put` stores the first N_PAGES pages of token sequence SEED; `check` prints how
many leading pages of it the store has and whether they read back intact.
"""

from __future__ import annotations

import asyncio
import json
import sys

from kvcache_common import PAGE, page_data, tokens

from client import Client
from kv_cache.page_keys import page_keys
from kv_cache.store import KVCacheStore


async def main(cluster_file: str, name: str, action: str, seed: int, n: int) -> None:
    async with Client.from_cluster(cluster_file) as fs:
        store = await KVCacheStore(fs, name, PAGE).open()
        keys = page_keys(tokens(seed, n * 64))
        if action == "put":
            await store.put(keys, [page_data(k) for k in keys])
            out = {"put": len(keys)}
        else:
            found = await store.batch_exists(keys)
            bufs = [bytearray(PAGE) for _ in keys[:found]]
            ok = await store.get(keys[:found], bufs)
            intact = all(ok) and all(
                b == page_data(k) for b, k in zip(bufs, keys, strict=False)
            )
            out = {"found": found, "intact": intact}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], int(a[3]), int(a[4])))
