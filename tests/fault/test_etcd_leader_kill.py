"""A py3fs cluster on a 3-member etcd keeps working when the etcd leader is
killed with SIGKILL mid-workload, and loses or repeats no acknowledged operation.

Every operation is one that fails if applied twice (exclusive create, mkdir
without parents, rename of a name that then no longer exists), so a commit that
etcd applied but whose reply was lost, and which a retry then applied again,
would surface as an error in the workload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from etcd_harness import endpoints_of, etcd_cluster
from harness import client_for, running_cluster

from client import Client
from py3fs import errors
from py3fs.etcd_local import wait_for_leader

logger = logging.getLogger(__name__)
WORKERS = 3


async def _one_round(fs: Client, worker: int, i: int) -> None:
    base = f"/w{worker}/d{i}"
    await fs.mkdir(base)
    async with await fs.open(f"{base}/f", "xb") as f:
        await f.write(f"{worker}:{i}".encode())
    await fs.rename(f"{base}/f", f"{base}/g")


async def _wait_for(
    cond: Callable[[], bool], tasks: list[asyncio.Task[None]], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "workload stalled"
        for t in tasks:
            if t.done():
                t.result()  # a failed worker explains itself
                raise AssertionError("a worker stopped early")
        await asyncio.sleep(0.05)


async def test_etcd_leader_kill_mid_workload(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "kv") as members:
        kv = f"etcd://{endpoints_of(members)}"
        with running_cluster(tmp_path / "cluster", kv=kv) as cluster:
            fs = client_for(cluster, retry_timeout=60.0)
            acked: list[tuple[int, int]] = []
            stop = asyncio.Event()

            async def workload(worker: int) -> None:
                await fs.mkdir(f"/w{worker}")
                i = 0
                while not stop.is_set():
                    await _one_round(fs, worker, i)
                    acked.append((worker, i))
                    i += 1

            try:
                tasks = [asyncio.create_task(workload(w)) for w in range(WORKERS)]
                # Kill mid-workload: once every worker is well under way.
                await _wait_for(lambda: len(acked) >= 3 * WORKERS, tasks)
                leader = await asyncio.to_thread(wait_for_leader, members)
                before = len(acked)
                killed_at = time.monotonic()
                leader.kill()
                # The workload must get going again once a new leader is elected.
                await _wait_for(lambda: len(acked) >= before + 2 * WORKERS, tasks)
                resumed = time.monotonic() - killed_at
                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.gather(*tasks)
                logger.warning(
                    "etcd leader %s killed after %d rounds; %d rounds acked after "
                    "resuming in %.2fs; %d rounds in all",
                    leader.name,
                    before,
                    len(acked) - before,
                    resumed,
                    len(acked),
                )

                for worker in range(WORKERS):
                    names = {e.name for e in await fs.listdir(f"/w{worker}")}
                    want = {f"d{i}" for w, i in acked if w == worker}
                    assert names == want, (worker, names ^ want)
                for worker, i in acked:
                    base = f"/w{worker}/d{i}"
                    assert [e.name for e in await fs.listdir(base)] == ["g"]
                    assert await fs.read_file(f"{base}/g") == f"{worker}:{i}".encode()
                    try:
                        await fs.stat(f"{base}/f")
                    except errors.NotFound:
                        pass
                    else:
                        raise AssertionError(f"{base}/f exists after its rename")
            finally:
                stop.set()
                await fs.aclose()
