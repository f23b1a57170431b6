"""mgmtd high availability: kill -9 the primary under load; the standby takes the
lease, the cluster keeps serving and handles a further storage failover."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from fault_tools import (
    HEARTBEAT_TIMEOUT,
    KiB,
    Writer,
    all_serving,
    check_replicas,
    fault_cluster,
    fresh_routing,
    node_down,
    storage_proc,
    wait_routing,
)
from harness import client_for

from py3fs import errors, ids, wire
from py3fs.mgmt_client import MgmtClient
from py3fs.routing import RoutingView

MiB = 1024 * KiB


async def test_standby_takes_over(tmp_path: Path) -> None:
    with fault_cluster(tmp_path, mgmtd=2) as cluster:
        primary, standby = cluster.mgmtds
        fs = client_for(cluster)
        direct = MgmtClient([standby.address], timeout=2.0)
        task: asyncio.Task[None] | None = None
        try:
            # The standby refuses until it holds the lease.
            try:
                await direct.routing()
                raise AssertionError("standby answered as primary")
            except errors.NotPrimary:
                pass
            writer = Writer(fs, "/w.bin", 2 * MiB, 32 * KiB, sequential=False, seed=7)
            task = asyncio.create_task(writer.run())
            await asyncio.sleep(1.0)

            t0 = time.monotonic()
            primary.kill()
            while True:
                try:
                    await direct.routing()
                    break
                except errors.NotPrimary:
                    await asyncio.sleep(0.05)
            takeover = time.monotonic() - t0
            # Lease = heartbeat timeout; the standby polls every third of it.
            assert takeover < HEARTBEAT_TIMEOUT * 1.5 + 1.0
            resumed = await writer.wait_resumed(t0)
            assert not task.done(), task

            # A storage failover under the new primary.
            view = await fresh_routing(fs)
            head = view.chain(min(view.chains)).targets[0]
            proc = storage_proc(cluster, view.targets[head].node_id)
            t1 = time.monotonic()
            proc.kill()
            await wait_routing(fs, node_down(proc.node_id), timeout=10)
            resumed2 = await writer.wait_resumed(t1)
            await asyncio.to_thread(cluster.restart, proc)
            await wait_routing(fs, all_serving, timeout=30)
            writer.stop.set()
            await task
            await writer.verify()
            await check_replicas(fs)
            print(
                f"\n{len(writer.acks)} writes; standby primary {takeover:.2f}s after "
                f"kill -9 of mgmtd; first write started after the kill acked "
                f"{resumed:.2f}s after it; storage "
                f"head kill under the new primary: writes resumed {resumed2:.2f}s"
            )
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await direct.aclose()
            await fs.aclose()


async def test_storage_without_mgmtd_stops_serving(tmp_path: Path) -> None:
    """The storage lease: cut off from mgmtd (SIGSTOP) for half the heartbeat
    timeout, a node refuses reads and writes, and serves again once a heartbeat
    succeeds (SIGCONT)."""
    with fault_cluster(tmp_path, targets=1) as cluster:
        fs = client_for(cluster)
        try:
            await fs.write_file("/x.bin", b"x" * 1000)
            inode = (await fs.stat("/x.bin")).inode

            async def read_tail(view: RoutingView | None = None) -> int:
                view = view or await fresh_routing(fs)
                (chain,) = view.chains.values()
                tail = view.serving_targets(chain.chain_id)[-1]
                io = wire.ReadIO(
                    tail, ids.chunk_id(inode, 0), 0, 1000, chain.chain_id, chain.version
                )
                cap = await fs.storage.cap(inode, False)  # storage checks it
                body, _ = await fs.storage.call(
                    view.target_address(tail),
                    wire.MsgType.READ,
                    wire.ReadReq([io], caps=[cap]),
                )
                assert isinstance(body, wire.ReadReply)
                return body.results[0].code

            before = await fresh_routing(fs)
            assert await read_tail(before) == 0
            assert cluster.mgmtd is not None
            cluster.mgmtd.kill(signal.SIGSTOP)
            try:
                await asyncio.sleep(HEARTBEAT_TIMEOUT / 2 + 0.5)
                # mgmtd is frozen: use the routing from before.
                assert await read_tail(before) == errors.TargetNotServing.code
            finally:
                cluster.mgmtd.kill(signal.SIGCONT)
            async with asyncio.timeout(15):
                while await read_tail() != 0:
                    await asyncio.sleep(0.1)
        finally:
            await fs.aclose()
