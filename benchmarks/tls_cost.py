"""What TLS on the data plane costs: sequential write and read of one file
through the library client, on a cluster without TLS and on one with it
(`ClusterSpec.tls`, `py3fs cluster up --tls`), in one run, as ratios.

    python benchmarks/tls_cost.py [--size 256MiB] [--block 16MiB] [--rounds 2]

Starts the two local 3-replica clusters one after the other (same host, same
settings but TLS) and alternates them `--rounds` times, keeping each side's
best: on a shared host the best run is the least disturbed one. Writes go
client -> head -> middle -> tail, each hop TLS when it is on; reads come from
one replica.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import uvloop

from client import Client, ClientConfig
from py3fs.cluster import ClusterSpec, LocalCluster
from py3fs.units import parse_size


async def workload(cfg: ClientConfig, total: int, block: int) -> dict[str, float]:
    data = memoryview(os.urandom(block))
    async with Client(cfg) as fs:
        await fs.mkdir("/bench", parents=True)
        start = time.perf_counter()
        async with await fs.open("/bench/tls.bin", "wb") as f:
            left = total
            while left:
                n = min(block, left)
                await f.write(data[:n])
                left -= n
        write = total / (time.perf_counter() - start) / 1e6
        buf = bytearray(block)
        got = 0
        start = time.perf_counter()
        async with await fs.open("/bench/tls.bin", "rb") as f:
            while n := await f.readinto(buf):
                got += n
        read = total / (time.perf_counter() - start) / 1e6
        if got != total:
            raise SystemExit(f"read back {got} bytes of {total}")
        await fs.unlink("/bench/tls.bin")
    return {"write MB/s": write, "read MB/s": read}


def one(tls: bool, total: int, block: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="py3fs-tls-") as tmp:
        cluster = LocalCluster(ClusterSpec(data_dir=Path(tmp), tls=tls))
        cluster.up()
        try:
            cfg = ClientConfig(
                mgmt=cluster.mgmt_addresses,
                token_file=str(cluster.admin_token_file),
                tls_dir=str(cluster.tls_dir) if tls else "",
                max_inflight=64,
            )
            return uvloop.run(workload(cfg, total, block))
        finally:
            cluster.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--block", default="16MiB")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    total, block = parse_size(args.size), parse_size(args.block)
    # This process is the client: TLS only where the run says so.
    os.environ.pop("PY3FS_TLS_DIR", None)
    plain: dict[str, float] = {}
    tls: dict[str, float] = {}
    for _ in range(args.rounds):
        for tls_on, best in ((False, plain), (True, tls)):
            for k, v in one(tls_on, total, block).items():
                best[k] = max(best.get(k, 0.0), v)
    print(
        f"size {args.size}, block {args.block}, 3 replicas, best of {args.rounds}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':<14}{'plain':>10}{'TLS':>10}{'TLS/plain':>11}")
    for k in plain:
        print(f"{k:<14}{plain[k]:>10.0f}{tls[k]:>10.0f}{tls[k] / plain[k]:>10.0%}")


if __name__ == "__main__":
    main()
