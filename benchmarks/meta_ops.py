"""Metadata ops/s through the library client and through a FUSE mount.

    python benchmarks/meta_ops.py [--files 2000] [--procs 1] [--no-mount]

Starts a local 3-replica cluster in a temporary directory (or uses --cluster FILE),
then, in one run: create (open, write 1 byte, close), stat, rename, unlink and
mkdir of `--files` names, first with the async library client (one op at a time,
then `--inflight` at a time), then through a py3fs mount with plain `os` calls
from `--procs` processes. A local directory runs the same `os` loop as a
ceiling. Prints ops/s per line and the mount/local ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from client import Client, ClientConfig
from py3fs.cluster import ClusterSpec, LocalCluster

OPS = ("create", "stat", "rename", "unlink", "mkdir")


# ------------------------------------------------------------ library client


async def _timed(
    n: int, inflight: int, op: Callable[[int], Awaitable[object]]
) -> float:
    sem = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        async with sem:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


async def client_rates(mgmt: list[str], n: int, inflight: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with Client(ClientConfig(mgmt=mgmt)) as fs:
        base = f"/bench-{os.getpid()}-{inflight}"
        await fs.mkdir(base)

        async def create(i: int) -> None:
            async with await fs.open(f"{base}/f{i}", "wb") as f:
                await f.write(b"x")

        out["create"] = await _timed(n, inflight, create)
        out["stat"] = await _timed(n, inflight, lambda i: fs.stat(f"{base}/f{i}"))
        out["rename"] = await _timed(
            n, inflight, lambda i: fs.rename(f"{base}/f{i}", f"{base}/g{i}")
        )
        out["unlink"] = await _timed(n, inflight, lambda i: fs.unlink(f"{base}/g{i}"))
        out["mkdir"] = await _timed(n, inflight, lambda i: fs.mkdir(f"{base}/d{i}"))
        await fs.remove(base, recursive=True)
    return out


# ------------------------------------------------------------ os calls (mount / local)


def _os_worker(root: str, n: int, op: str, barrier: multiprocessing.Barrier) -> None:
    barrier.wait()
    if op == "create":
        for i in range(n):
            fd = os.open(f"{root}/f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    elif op == "stat":
        for i in range(n):
            os.stat(f"{root}/f{i}")
    elif op == "rename":
        for i in range(n):
            os.rename(f"{root}/f{i}", f"{root}/g{i}")
    elif op == "unlink":
        for i in range(n):
            os.unlink(f"{root}/g{i}")
    elif op == "mkdir":
        for i in range(n):
            os.mkdir(f"{root}/d{i}")


def os_rates(base: Path, n: int, procs: int) -> dict[str, float]:
    """Each process works in a directory of its own, `n // procs` names each."""
    per = max(1, n // procs)
    roots = [base / f"p{p}" for p in range(procs)]
    for r in roots:
        r.mkdir(parents=True)
    out = {}
    ctx = multiprocessing.get_context("fork")
    for op in OPS:
        barrier = ctx.Barrier(procs + 1)
        workers = [
            ctx.Process(target=_os_worker, args=(str(r), per, op, barrier))
            for r in roots
        ]
        for w in workers:
            w.start()
        barrier.wait()
        start = time.perf_counter()
        for w in workers:
            w.join()
            if w.exitcode:
                raise RuntimeError(f"{op} worker failed ({w.exitcode})")
        out[op] = per * procs / (time.perf_counter() - start)
    return out


# ------------------------------------------------------------ mount


def mount(cluster_file: Path, where: Path) -> subprocess.Popen[bytes]:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fuse_mount", str(where), "--cluster", str(cluster_file)]
    )
    deadline = time.monotonic() + 30
    while not os.path.ismount(where):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mount did not come up")
        time.sleep(0.05)
    return proc


def unmount(proc: subprocess.Popen[bytes], where: Path) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    if os.path.ismount(where):
        subprocess.run(["fusermount3", "-u", "-z", str(where)], check=False)


def table(rows: dict[str, dict[str, float]]) -> str:
    names = list(rows)
    lines = ["| op | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for op in OPS:
        cells = [f"{rows[name].get(op, 0):,.0f}" for name in names]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--no-mount", action="store_true")
    ap.add_argument("--cluster", type=Path, help="cluster file of a running cluster")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="py3fs-metabench-"))
    cluster = None
    try:
        if args.cluster:
            cluster_file = args.cluster
            cluster = LocalCluster.load(cluster_file.parent)
        else:
            cluster = LocalCluster(ClusterSpec(data_dir=tmp / "cluster", fsync=False))
            cluster.up()
            cluster_file = cluster.cluster_file
        os.environ["PY3FS_TOKEN_FILE"] = str(cluster.admin_token_file)
        mgmt = cluster.mgmt_addresses
        rows: dict[str, dict[str, float]] = {}
        rows["local"] = os_rates(tmp / "local", args.files, args.procs)
        rows["client x1"] = asyncio.run(client_rates(mgmt, args.files, 1))
        rows[f"client x{args.inflight}"] = asyncio.run(
            client_rates(mgmt, args.files, args.inflight)
        )
        if not args.no_mount:
            where = tmp / "mnt"
            proc = mount(cluster_file, where)
            try:
                work = where / f"bench-{os.getpid()}"
                rows[f"mount {args.procs}p"] = os_rates(work, args.files, args.procs)
                shutil.rmtree(work)
            finally:
                unmount(proc, where)
        print(f"ops/s, {args.files} names, {args.procs} process(es)")
        print(table(rows))
    finally:
        if cluster is not None and not args.cluster:
            cluster.down(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
