"""What data-plane capabilities cost: the same workload on a cluster with them
and on one without, in one run, as a ratio.

    python benchmarks/caps_cost.py [--files 300] [--big-mib 64]

Starts two local 3-replica clusters one after the other (same host, same
settings but `ClusterSpec.capabilities`), and on each measures: small files
(write then read `--files` 4 KiB files: one capability RPC per file and
mode, the worst case) and one big file written and read in 1 MiB pieces
(capabilities cached: only the per-request HMAC check and the signed chain
forwards). Prints MB/s and files/s per cluster and with/without ratios.
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
    args = ap.parse_args()
    without = one(False, args.files, args.big_mib)
    with_caps = one(True, args.files, args.big_mib)
    print(f"{'metric':22} {'without':>10} {'with caps':>10} {'ratio':>7}")
    for k in without:
        print(
            f"{k:22} {without[k]:10.1f} {with_caps[k]:10.1f} "
            f"{with_caps[k] / without[k]:7.2f}"
        )


if __name__ == "__main__":
    main()
