"""Linearizability under kill -9: several clients write unique values to small
files and read them back while each node of the chain (original head, middle,
then tail) is killed and restarted; the whole history goes through the
Wing & Gong checker in tests/lincheck.py (one register per file).

A write that raised may or may not have taken effect: it is recorded with an
unknown end (`math.inf`); a read that raised is dropped."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

from fault_tools import (
    all_serving,
    fault_cluster,
    fresh_routing,
    node_down,
    storage_proc,
    wait_routing,
)
from harness import client_for
from lincheck import READ, WRITE, Op, check

from client import Client
from py3fs import errors

FILES = 4
CLIENTS = 3
SIZE = 64  # bytes per value


def value(text: str) -> bytes:
    return text.encode().ljust(SIZE, b".")


class Workload:
    """CLIENTS clients, each writing and reading random files, one op at a
    time, recording every op with its invoke/complete time."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.ops: list[Op] = []
        self.failed = 0
        self.stop = asyncio.Event()

    async def setup(self) -> dict[int, bytes]:
        initial = {f: value(f"init-{f}") for f in range(FILES)}
        for f, v in initial.items():
            await self.clients[0].write_file(f"/f{f}", v)
        return initial

    async def worker(self, n: int) -> None:
        fs = self.clients[n]
        rng = random.Random(n)
        wf = [await fs.open(f"/f{f}", "r+b") for f in range(FILES)]
        rf = [await fs.open(f"/f{f}", "rb") for f in range(FILES)]
        seq = 0
        try:
            while not self.stop.is_set():
                f = rng.randrange(FILES)
                start = time.monotonic()
                if rng.random() < 0.5:
                    seq += 1
                    v = value(f"c{n}-{seq}")
                    try:
                        await wf[f].pwrite(v, 0)
                        end = time.monotonic()
                    except errors.Py3fsError:
                        self.failed += 1
                        end = math.inf  # may or may not have taken effect
                    self.ops.append(Op(WRITE, f, v, start, end, client=n))
                else:
                    try:
                        got = await rf[f].pread(SIZE, 0)
                    except errors.Py3fsError:
                        self.failed += 1
                        continue
                    self.ops.append(Op(READ, f, got, start, time.monotonic(), n))
        finally:
            for h in wf + rf:
                await h.close()

    def done_after(self, t0: float) -> int:
        """Operations that completed after `t0` (the workload made progress)."""
        return sum(1 for op in self.ops if t0 < op.end < math.inf)


async def test_linearizable_through_kill_of_head_middle_and_tail(
    tmp_path: Path,
) -> None:
    with fault_cluster(tmp_path, targets=1) as cluster:
        clients = [client_for(cluster) for _ in range(CLIENTS)]
        try:
            load = Workload(clients)
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
