"""No torn writes in the chunk engine: storage nodes die by kill -9, and by
crashing themselves at the engine's fault points (between staging and the
commit mark, between writing data and the block table), while one client
appends unaligned blocks and another overwrites small unaligned ranges. Then
every acknowledged write reads back, and every chain's replicas hold the same
bytes, compared byte for byte, not only by digest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fault_tools import (
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
from harness import client_for, list_chunks, mint_capabilities

from client import Client
from py3fs import faults, ids, wire
from py3fs.cluster import LocalCluster
from storage_service.chunk_store import AFTER_STAGE, MID_APPLY

MiB = 1024 * KiB


async def replicas_identical(fs: Client) -> int:
    """Read every chunk from every replica (verified) and compare the bytes;
    returns how many chunks were compared."""
    view = await fresh_routing(fs)
    compared = 0
    for chain in view.chains.values():
        copies: list[dict[bytes, bytes]] = []
        for target in chain.targets:
            data = {}
            for meta in await list_chunks(fs, view, target):
                io = wire.ReadIO(
                    target,
                    meta.chunk_id,
                    0,
                    meta.length,
                    chain.chain_id,
                    chain.version,
                )
                inode = ids.split_chunk_id(meta.chunk_id)[0]
                cap = await fs.storage.cap(inode, False)
                body, payload = await fs.storage.call(
                    view.target_address(target),
                    wire.MsgType.READ,
                    wire.ReadReq([io], caps=[cap]),
                )
                assert isinstance(body, wire.ReadReply)
                assert body.results[0].code == 0, body.results[0].message
                data[meta.chunk_id] = bytes(payload or b"")
            copies.append(data)
        for other in copies[1:]:
            assert other == copies[0], f"chain {chain.chain_id}: replicas differ"
        compared += len(copies[0])
    return compared


async def _crash_and_return(
    fs: Client, cluster: LocalCluster, node: int, point: str | None
) -> None:
    """Kill `node` (or make it crash at `point` soon after it restarts), bring
    it back, wait until every target serves again."""
    proc = storage_proc(cluster, node)
    proc.kill()
    await wait_routing(fs, node_down(node), timeout=10)
    if point is not None:
        # Restarted with the point armed: resync and new writes drive it there.
        proc.env = {faults.ENV: faults.env_value(**{point: "crash@3"})}
        await asyncio.to_thread(cluster.restart, proc)
        async with asyncio.timeout(30):
            while proc.popen is not None and proc.popen.poll() is None:
                await asyncio.sleep(0.05)
        proc.env = {}
        await wait_routing(fs, node_down(node), timeout=10)
    await asyncio.to_thread(cluster.restart, proc)
    await wait_routing(fs, all_serving, timeout=30)


async def test_kill9_during_appends_and_partial_overwrites(tmp_path: Path) -> None:
    with fault_cluster(tmp_path) as cluster:
        fs = client_for(cluster)
        # The checker reads every chunk straight from each replica, as a
        # service would: capabilities for any inode, minted with the secret.
        mint_capabilities(cluster, fs)
        tasks: list[asyncio.Task[None]] = []
        try:
            writers = [
                # Appends of 24 KiB + 13 bytes: each starts mid-block.
                Writer(fs, "/append.bin", 1 << 30, 24 * KiB + 13, True, seed=3),
                # Overwrites of 3000 bytes at 3000-byte steps inside 1 MiB.
                Writer(fs, "/over.bin", 1 * MiB, 3000, sequential=False, seed=4),
            ]
            tasks += [asyncio.create_task(w.run()) for w in writers]
            await asyncio.sleep(0.5)
            view = await fresh_routing(fs)
            nodes = sorted({t.node_id for t in view.targets.values()})
            for node, point in zip(nodes, [None, AFTER_STAGE, MID_APPLY], strict=True):
                t0 = time.monotonic()
                await _crash_and_return(fs, cluster, node, point)
                for w in writers:
                    await w.wait_resumed(t0)
                assert all(not t.done() for t in tasks), "a writer failed"
            for w in writers:
                w.stop.set()
            await asyncio.gather(*tasks)
            for w in writers:
                await w.verify()
            chunks = await check_replicas(fs)
            assert await replicas_identical(fs) == chunks
            # Both self-inflicted crashes came after a commit mark: each restart
            # finished that write from its redo record.
            replays = sum(
                log.read_text(errors="replace").count("replayed committed update")
                for log in cluster.run_dir.glob("storage-*.log")
            )
            assert replays >= 2
            acked = sum(len(w.acks) for w in writers)
            print(
                f"\n{acked} acknowledged writes over 3 crashes; {chunks} chunks "
                f"identical on every replica; {replays} commits replayed"
            )
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await fs.aclose()
