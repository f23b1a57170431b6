"""Linearizability under kill -9: several clients write unique values to small
files and read them back while each node of the chain (original head, middle,
then tail) is killed and restarted; the whole history goes through the
Wing & Gong checker in tests/lincheck.py (one register per file).

A write that raised may or may not have taken effect: it is recorded with an
unknown end (`math.inf`); a read that raised is dropped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fault_tools import (
    CLIENTS,
    FILES,
    RegisterWorkload,
    all_serving,
    fault_cluster,
    fresh_routing,
    node_down,
    storage_proc,
    wait_routing,
)
from harness import client_for
from lincheck import READ, check


async def test_linearizable_through_kill_of_head_middle_and_tail(
    tmp_path: Path,
) -> None:
    with fault_cluster(tmp_path, targets=1) as cluster:
        clients = [client_for(cluster) for _ in range(CLIENTS)]
        try:
            load = RegisterWorkload(clients)
            initial = await load.setup()
            view = await fresh_routing(clients[0])
            (chain,) = view.chains.values()
            # The chain reorders after each kill (a returning target goes to
            # the end), so pick the victims by node up front.
            victims = [view.targets[t].node_id for t in chain.targets]
            tasks = [asyncio.create_task(load.worker(n)) for n in range(CLIENTS)]
            try:
                for node in victims:
                    await asyncio.sleep(1.0)
                    proc = storage_proc(cluster, node)
                    proc.kill()
                    await wait_routing(clients[0], node_down(node), timeout=10)
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(cluster.restart, proc)
                    await wait_routing(clients[0], all_serving, timeout=30)
                healed = time.monotonic()
                await asyncio.sleep(1.0)
            finally:
                load.stop.set()
                await asyncio.gather(*tasks)
            await load.final_reads()
            assert load.done_after(healed) > 0, "no progress after the last restart"
            checked = check(load.ops, initial)
            reads = sum(op.kind == READ for op in load.ops)
            print(
                f"\n{checked} ops ({checked - reads} writes, {reads} reads, "
                f"{load.failed} failed) by {CLIENTS} clients on {FILES} files, "
                f"kill -9 + restart of nodes {victims}: linearizable"
            )
        finally:
            for c in clients:
                await c.aclose()
