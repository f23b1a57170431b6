"""CPU per read: what one random (or sequential) read costs the client library
and the storage nodes, measured from outside on a running local cluster.

    python benchmarks/read_cpu.py --data-dir DIR --path /f [--reads 20000]
        [--bs 4096] [--jobs 4] [--seq]

`DIR` is a `py3fs cluster up --data-dir` folder (its cluster.toml and its
processes' pids); `--path` a file already in it (e.g. one fio wrote through a
mount). `--jobs` tasks read `--bs` pieces at random aligned offsets (or one
after the other with `--seq`) through `client.File`, on uvloop as the mount
does. Prints reads/s and the CPU seconds (user + system) the client process
and all storage processes spent per read. On a shared host the CPU figures
are steadier than the rates, which wait on whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from client import Client

TICK = os.sysconf("SC_CLK_TCK")


def storage_pids(data_dir: str) -> list[int]:
    cmd = [sys.executable, "-m", "py3fs", "cluster", "status", "--json"]
    out = subprocess.run(
        [*cmd, "--data-dir", data_dir],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [r["pid"] for r in json.loads(out) if r.get("role") == "storage"]


def cpu_of(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of `pids` together."""
    user = system = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) / TICK
        system += int(fields[12]) / TICK
    return user, system


async def run(args: argparse.Namespace) -> dict[str, float]:
    cluster = os.path.join(args.data_dir, "cluster.toml")
    async with Client.from_cluster(cluster) as fs:
        f = await fs.open(args.path, "rb")
        size = f.length
        blocks = size // args.bs
        per_job = args.reads // args.jobs

        async def job(j: int) -> None:
            rng = random.Random(j)
            buf = bytearray(args.bs)
            pos = j * (blocks // args.jobs)
            for _ in range(per_job):
                pos = (pos + 1) % blocks if args.seq else rng.randrange(blocks)
                await f.preadinto(buf, pos * args.bs)

        await job(0)  # connections and capability in place before timing
        pids = storage_pids(args.data_dir)
        s0, c0, t0 = cpu_of(pids), os.times(), time.perf_counter()
        await asyncio.gather(*(job(j) for j in range(args.jobs)))
        s1, c1, t1 = cpu_of(pids), os.times(), time.perf_counter()
        await f.close()
    n = per_job * args.jobs
    return {
        "reads": n,
        "reads/s": n / (t1 - t0),
        "MB/s": n * args.bs / 1e6 / (t1 - t0),
        "client us/read": ((c1.user - c0.user) + (c1.system - c0.system)) * 1e6 / n,
        "storage user us/read": (s1[0] - s0[0]) * 1e6 / n,
        "storage sys us/read": (s1[1] - s0[1]) * 1e6 / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--bs", type=int, default=4096)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--seq", action="store_true")
    args = p.parse_args()
    res = uvloop.run(run(args))  # as the mount and the USRBIO agent
    print("  ".join(f"{k} {v:,.1f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
