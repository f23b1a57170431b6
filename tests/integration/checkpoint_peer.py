"""Save a large checkpoint from a process of its own (test_checkpoint.py kills
it midway):

    python checkpoint_peer.py CLUSTER_FILE DIRECTORY STEP MIB
"""

from __future__ import annotations

import asyncio
import sys

import torch

from client import Client
from kv_cache.checkpoint import CheckpointManager


async def main(cluster_file: str, directory: str, step: int, mib: int) -> None:
    n = mib * (1 << 20) // 2 // 8
    sd = {f"layer{i}.w": torch.ones(n, dtype=torch.bfloat16) for i in range(8)}
    async with Client.from_cluster(cluster_file) as fs:
        mgr = CheckpointManager(fs, directory, shard_bytes=mib << 18, concurrency=2)
        await mgr.save(step, sd)
    print("saved", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], int(a[2]), int(a[3])))
