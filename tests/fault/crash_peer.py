"""A client process for the crash-point tests, run with PY3FS_FAULTS set so it
kills itself at a named point in the middle of a multi-step change:

    python crash_peer.py kvput CLUSTER_FILE STORE SEED N_PAGES
    python crash_peer.py ckpt CLUSTER_FILE DIRECTORY STEP KEEP_LAST

`kvput` puts N_PAGES pages (one batch) of token sequence SEED into STORE;
`ckpt` saves `checkpoint_state()` as step STEP keeping the last KEEP_LAST.
Prints "done" when it got through (the test then knows the point never fired).
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

from client import Client
from kv_cache.page_keys import page_keys
from kv_cache.store import KVCacheStore

PAGE = 16 * 1024  # bytes per KV page in these tests


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(128_000) for _ in range(n)]


def page_data(key: bytes) -> bytes:
    return (key * (PAGE // len(key) + 1))[:PAGE]


def kv_keys(seed: int, n_pages: int) -> list[bytes]:
    return page_keys(tokens(seed, n_pages * 64))


def checkpoint_state(step: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(step)
    return {
        f"layer{i}.w": torch.randn(64 * 1024, generator=g).to(torch.bfloat16)
        for i in range(4)
    }


async def main(argv: list[str]) -> None:
    action, cluster_file = argv[0], argv[1]
    async with Client.from_cluster(cluster_file) as fs:
        if action == "kvput":
            store_name, seed, n = argv[2], int(argv[3]), int(argv[4])
            store = await KVCacheStore(fs, store_name, PAGE).open()
            keys = kv_keys(seed, n)
            await store.put(keys, [page_data(k) for k in keys])
        elif action == "ckpt":
            from kv_cache.checkpoint import CheckpointManager

            directory, step, keep = argv[2], int(argv[3]), int(argv[4])
            # 128 KiB shards: the 4 tensors of 128 KiB make 4 shard files.
            mgr = CheckpointManager(
                fs, directory, keep_last=keep, shard_bytes=128 << 10
            )
            await mgr.save(step, checkpoint_state(step))
        else:
            raise SystemExit(f"unknown action {action!r}")
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
