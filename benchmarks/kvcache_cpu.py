"""CPU seconds per GB of KV cache puts or gets, per process, on a running cluster.

    python benchmarks/kvcache_cpu.py get|put SECONDS DATA_DIR/cluster.toml

Loops `KVCacheStore.get` (or `put` then `remove`) of 8 MLA pages (4,497,408
bytes each) for SECONDS and prints GB/s and, for the client and every cluster
process (utime + stime from /proc), the CPU seconds it spent per GB moved. On a
shared host, where wall-clock rates swing 2x between identical runs, the CPU
figures are what an A/B comparison (old and new code, alternating) can trust.
`STORE` and `CS` (chunk size) in the environment pick the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import uvloop

from client import Client
from client.config import load_client_config
from kv_cache.page_keys import page_keys
from kv_cache.store import KVCacheStore

PAGE = 61 * 64 * 576 * 2


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_pids(cluster_file: str) -> dict[str, int]:
    py3fs = os.path.join(os.path.dirname(sys.executable), "py3fs")
    data_dir = os.path.dirname(cluster_file)
    status = subprocess.check_output(
        [py3fs, "cluster", "status", "--data-dir", data_dir, "--json"]
    )
    return {f"{p['role']}-{p['node_id']}": p["pid"] for p in json.loads(status)}


async def run(
    mode: str, seconds: float, cluster_file: str, pids: dict[str, int]
) -> None:
    cfg = load_client_config(cluster_file)
    if cfg.token_file:
        os.environ.setdefault("PY3FS_TOKEN_FILE", cfg.token_file)
    pages = [bytearray(os.urandom(PAGE)) for _ in range(8)]
    async with Client(cfg) as fs:
        name = os.environ.get("STORE", "cpu")
        chunk = int(os.environ.get("CS", "0"))
        store = await KVCacheStore(fs, name, PAGE, batch=8, chunk_size=chunk).open()
        keys = page_keys(list(range(8 * 64)))
        await store.remove(keys)
        if mode == "get":
            await store.put(keys, pages)
        bufs = [bytearray(PAGE) for _ in range(8)]
        before = {k: cpu(p) for k, p in pids.items()}
        mine = time.process_time()
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            if mode == "put":
                await store.put(keys, pages)
                await store.remove(keys)
            else:
                assert all(await store.get(keys, bufs))
            n += 8
        elapsed = time.perf_counter() - start
        after = {k: cpu(p) for k, p in pids.items()}
        mine = time.process_time() - mine
        await store.remove(keys)
    gb = n * PAGE / 1e9
    per = " ".join(f"{k} {(after[k] - before[k]) / gb:.2f}" for k in pids)
    print(
        f"{mode}: {gb / elapsed:.2f} GB/s, {n} pages in {elapsed:.1f} s; "
        f"CPU s per GB: client {mine / gb:.2f} {per}"
    )


if __name__ == "__main__":
    path = sys.argv[3]
    uvloop.run(run(sys.argv[1], float(sys.argv[2]), path, cluster_pids(path)))
