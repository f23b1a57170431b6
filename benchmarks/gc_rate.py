"""How fast GC removes unlinked files' chunks, beside how fast clients unlink.

    python benchmarks/gc_rate.py [--files 2000] [--inflight 32]

Starts a local 3-replica cluster (or uses --cluster FILE), creates `--files`
one-byte files with the library client, unlinks them all (`--inflight` at a
time) and then waits until no target holds a chunk of them. Prints unlink/s
and GC files/s (from the first unlink to the last chunk gone).
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
from py3fs import ids, wire
from py3fs.cluster import ClusterSpec, LocalCluster


async def chunks_left(fs: Client, inodes: set[int]) -> int:
    view = await fs.routing.refresh()
    left = 0
    for target in view.targets:
        body, _ = await fs.storage.call(
            view.target_address(target),
            wire.MsgType.LIST_CHUNKS,
            wire.ListChunksReq(target_id=target),
        )
        assert isinstance(body, wire.ListChunksReply)
        left += sum(
            1 for m in body.chunks if ids.split_chunk_id(m.chunk_id)[0] in inodes
        )
    return left


async def run(
    mgmt: list[str], n: int, inflight: int, secret_file: str
) -> tuple[float, float]:
    # The secret signs the chunk listings that tell when GC is done.
    async with Client(ClientConfig(mgmt=mgmt, secret_file=secret_file)) as fs:
        await fs.mkdir("/gc")
        sem = asyncio.Semaphore(inflight)

        async def create(i: int) -> int:
            async with sem:
                async with await fs.open(f"/gc/f{i}", "wb") as f:
                    await f.write(b"x")
                return f.inode.inode

        inodes = set(await asyncio.gather(*(create(i) for i in range(n))))

        async def unlink(i: int) -> None:
            async with sem:
                await fs.unlink(f"/gc/f{i}")

        start = time.perf_counter()
        await asyncio.gather(*(unlink(i) for i in range(n)))
        unlinked = time.perf_counter() - start
        while await chunks_left(fs, inodes):
            await asyncio.sleep(0.2)
        collected = time.perf_counter() - start
        return n / unlinked, n / collected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--cluster", type=Path, help="cluster file of a running cluster")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="py3fs-gcbench-"))
    cluster = None
    try:
        if args.cluster:
            cluster = LocalCluster.load(args.cluster.parent)
        else:
            cluster = LocalCluster(ClusterSpec(data_dir=tmp / "cluster"))
            cluster.up()
        os.environ["PY3FS_TOKEN_FILE"] = str(cluster.admin_token_file)
        unlink_rate, gc_rate = asyncio.run(
            run(
                cluster.mgmt_addresses,
                args.files,
                args.inflight,
                str(cluster.secret_file),
            )
        )
        print(
            f"{args.files} files: unlink {unlink_rate:,.0f}/s, "
            f"GC {gc_rate:,.0f} files/s"
        )
    finally:
        if cluster is not None and not args.cluster:
            cluster.down(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
