"""What data-plane capabilities cost: the same workload on a cluster with them
and on one without, in one run, as a ratio.

    python benchmarks/caps_cost.py [--files 300] [--big-mib 64] [--rounds 2]

Starts two local 3-replica clusters one after the other (same host, same
settings but `ClusterSpec.capabilities`), and on each measures: small files
(write then read `--files` 4 KiB files: one capability RPC per file and
mode, the worst case) and one big file written and read in 1 MiB pieces
(capabilities cached: only the per-request HMAC check and the signed chain
forwards). Alternates the clusters `--rounds` times and keeps each side's
best. Prints MB/s and files/s per cluster and with/without ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from client import Client, ClientConfig
from py3fs import caps, wire
from py3fs.cluster import ClusterSpec, LocalCluster

MiB = 1 << 20


async def workload(mgmt: list[str], files: int, big_mib: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with Client(ClientConfig(mgmt=mgmt, max_inflight=64)) as fs:
        await fs.mkdir("/b")
        small = os.urandom(4096)
        sem = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            async with sem:
                await fs.write_file(f"/b/f{i}", small)

        async def get(i: int) -> None:
            async with sem:
                assert await fs.read_file(f"/b/f{i}") == small

        t = time.perf_counter()
        await asyncio.gather(*(put(i) for i in range(files)))
        out["small write files/s"] = files / (time.perf_counter() - t)
        t = time.perf_counter()
        await asyncio.gather(*(get(i) for i in range(files)))
        out["small read files/s"] = files / (time.perf_counter() - t)

        piece = os.urandom(MiB)
        t = time.perf_counter()
        async with await fs.open("/b/big", "wb") as f:
            for _ in range(big_mib):
                await f.write(piece)
        out["big write MB/s"] = big_mib * MiB / 1e6 / (time.perf_counter() - t)
        t = time.perf_counter()
        async with await fs.open("/b/big", "rb") as f:
            while await f.read(MiB):
                pass
        out["big read MB/s"] = big_mib * MiB / 1e6 / (time.perf_counter() - t)
    return out


def one(capabilities: bool, files: int, big_mib: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="py3fs-caps-"))
    cluster = LocalCluster(
        ClusterSpec(data_dir=tmp, fsync=False, capabilities=capabilities)
    )
    try:
        cluster.up()
        os.environ["PY3FS_TOKEN_FILE"] = str(cluster.admin_token_file)
        return asyncio.run(workload(cluster.mgmt_addresses, files, big_mib))
    finally:
        cluster.down()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--big-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    # Alternate the two clusters and keep each side's best: on a shared host
    # the first run pays for cold caches and one-off load.
    without: dict[str, float] = {}
    with_caps: dict[str, float] = {}
    for _ in range(args.rounds):
        for caps_on, best in ((False, without), (True, with_caps)):
            for k, v in one(caps_on, args.files, args.big_mib).items():
                best[k] = max(best.get(k, 0.0), v)
    keys = caps.Keys(b"bench")
    # A capability for a chunk range, as storage checks a chunk of a write.
    cap = keys.issue(42, True, first_chunk=0, end_chunk=1024)
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        keys.check(cap, 42, write=True, chunk=7)
    check_us = (time.perf_counter() - t) / n * 1e6
    fwd = wire.WriteReq(
        chain_id=1,
        chain_ver=1,
        target_id=101,
        chunk_id=b"x" * 12,
        offset=0,
        chunk_size=4 << 20,
        data_crc=0,
        client_id="c" * 32,
        request_id=1,
        update_ver=2,
    )
    t = time.perf_counter()
    for _ in range(n // 10):
        keys.verify(keys.sign(fwd))
    sign_us = (time.perf_counter() - t) / (n // 10) * 1e6
    print(
        f"storage capability check: {check_us:.1f} us/request; "
        f"forward sign+verify: {sign_us:.1f} us/hop"
    )
    print(f"{'metric':22} {'without':>10} {'with caps':>10} {'ratio':>7}")
    for k in without:
        print(
            f"{k:22} {without[k]:10.1f} {with_caps[k]:10.1f} "
            f"{with_caps[k] / without[k]:7.2f}"
        )


if __name__ == "__main__":
    main()
