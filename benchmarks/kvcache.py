"""KVCache batch put/get of DeepSeek MLA pages, beside a local file.

    python benchmarks/kvcache.py [--pages 32] [--batch 8] [--replicas 3]

One page holds all layers of one FlashMLA block: 61 layers x 64 tokens x 576
dims x bf16 = 4,497,408 bytes. Starts a local cluster in a temporary directory
(or uses --cluster FILE), puts PAGES pages through a `KVCacheStore` in batches,
checks the cached prefix, gets them back into preallocated buffers, and in the
same run writes and reads the same bytes with one local file (os.pwrite /
os.preadv; reads hit a warm page cache, so they are the ceiling of this
machine's memory path, not a disk). Prints GB/s, pages/s and the settings.

Durability is the same on both sides. By default (as py3fs ships) a put is
acknowledged once every replica holds it in memory and neither side syncs; with
`--fsync` storage fsyncs every write before it acknowledges and the local file is
fsynced after every batch, so each put is on disk when it returns. With
`--cluster`, say which one that cluster runs (`py3fs cluster up --fsync`).

A client on the storage nodes' host reaches them over Unix sockets and reads
pages from their data files (client.local_read); `--tcp` adds a run of the
same puts and gets over loopback TCP only (PY3FS_DATA_UNIX=0), in the same
cluster right after, to show what that buys.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import uvloop

from client import Client, ClientConfig
from kv_cache.page_keys import page_keys
from kv_cache.store import KVCacheStore
from py3fs.cluster import ClusterSpec, LocalCluster

LAYERS, TOKENS, DIM, BF16 = 61, 64, 576, 2
PAGE_BYTES = LAYERS * TOKENS * DIM * BF16


def local_file(
    directory: str, pages: list[bytearray], batch: int, fsync: bool
) -> dict[str, float]:
    """The same pages written to and read from one local file, batch by batch;
    with `fsync`, each batch is on disk before the next starts (as a put)."""
    path = os.path.join(directory, "pages.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for b in range(0, len(pages), batch):
            os.pwritev(fd, pages[b : b + batch], b * PAGE_BYTES)
            if fsync:
                os.fsync(fd)
        write = time.perf_counter() - start
        bufs = [bytearray(PAGE_BYTES) for _ in range(batch)]
        start = time.perf_counter()
        for b in range(0, len(pages), batch):
            n = min(batch, len(pages) - b)
            os.preadv(fd, bufs[:n], b * PAGE_BYTES)
        read = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return {"write_s": write, "read_s": read}


async def store_run(
    mgmt: list[str], pages: list[bytearray], batch: int
) -> dict[str, float]:
    tokens = list(range(len(pages) * TOKENS))
    keys = page_keys(tokens)
    async with Client(ClientConfig(mgmt=mgmt, max_inflight=64)) as fs:
        store = await KVCacheStore(fs, "bench", PAGE_BYTES, batch=batch).open()
        start = time.perf_counter()
        for b in range(0, len(keys), batch):
            await store.put(keys[b : b + batch], pages[b : b + batch])
        put = time.perf_counter() - start
        start = time.perf_counter()
        cached = await store.batch_exists(keys)
        exists = time.perf_counter() - start
        assert cached == len(keys), f"only {cached} of {len(keys)} pages cached"
        bufs = [bytearray(PAGE_BYTES) for _ in range(batch)]
        start = time.perf_counter()
        for b in range(0, len(keys), batch):
            n = min(batch, len(keys) - b)
            ok = await store.get(keys[b : b + n], bufs[:n])
            assert all(ok)
        get = time.perf_counter() - start
        assert bufs[0] == pages[(len(keys) - 1) // batch * batch]
        await store.remove(keys)
    return {"put_s": put, "get_s": get, "exists_s": exists}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="storage fsyncs every write and the local file every batch; "
        "default (as shipped): neither side syncs",
    )
    ap.add_argument("--cluster", help="use this running cluster's cluster.toml")
    ap.add_argument(
        "--tcp",
        action="store_true",
        help="also put and get over loopback TCP only, after the default run",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pages = [bytearray(os.urandom(PAGE_BYTES)) for _ in range(args.pages)]
    total = args.pages * PAGE_BYTES

    with tempfile.TemporaryDirectory(prefix="py3fs-kvbench-") as tmp:
        local = local_file(tmp, pages, args.batch, args.fsync)
        cluster = None
        if args.cluster:
            from client.config import load_client_config

            config = load_client_config(args.cluster)
            mgmt = config.mgmt
            if config.token_file and "PY3FS_TOKEN_FILE" not in os.environ:
                # The cluster's admin token, as `py3fs cluster up` wrote it.
                os.environ["PY3FS_TOKEN_FILE"] = config.token_file
        else:
            spec = ClusterSpec(
                data_dir=Path(tmp) / "cluster", fsync=args.fsync, replicas=args.replicas
            )
            cluster = LocalCluster(spec)
            cluster.up()
            os.environ["PY3FS_TOKEN_FILE"] = str(cluster.admin_token_file)
            mgmt = cluster.mgmt_addresses
        try:
            remote = uvloop.run(store_run(mgmt, pages, args.batch))
            if args.tcp:
                os.environ["PY3FS_DATA_UNIX"] = "0"
                tcp = uvloop.run(store_run(mgmt, pages, args.batch))
                del os.environ["PY3FS_DATA_UNIX"]
        finally:
            if cluster:
                cluster.down()

    rows = {
        "py3fs put": remote["put_s"],
        "py3fs get": remote["get_s"],
        **(
            {"py3fs put, TCP": tcp["put_s"], "py3fs get, TCP": tcp["get_s"]}
            if args.tcp
            else {}
        ),
        "local file write": local["write_s"],
        "local file read": local["read_s"],
    }
    result = {
        "page_bytes": PAGE_BYTES,
        "pages": args.pages,
        "batch": args.batch,
        "replicas": args.replicas,
        "fsync": args.fsync,
        "cpus": os.cpu_count(),
        "batch_exists_ms": remote["exists_s"] * 1000,
        **{
            name.replace(",", "").replace(" ", "_"): {
                "GB/s": total / s / 1e9,
                "pages/s": args.pages / s,
            }
            for name, s in rows.items()
        },
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.pages} MLA pages of {PAGE_BYTES} bytes ({total / 1e6:.0f} MB), "
        f"batch {args.batch}, {args.replicas} replicas, {os.cpu_count()} CPUs"
    )
    sync = "fsync per write, local file fsync per batch" if args.fsync else "no fsync"
    print(f"durability: {sync} (same on both sides)")
    print(f"{'':<20}{'GB/s':>8}{'pages/s':>10}")
    for name, s in rows.items():
        print(f"{name:<20}{total / s / 1e9:>8.2f}{args.pages / s:>10.1f}")
    print(f"batch_exists of {args.pages} keys: {remote['exists_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
