"""A linearizability-style checker: several clients write unique values to small
files and read them back while storage nodes are killed and restarted.

For every read: the value was written by someone (or is the initial one), its
write had started before the read ended, and no write that completed before the
read began supersedes it (its write did not end before that one started)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
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

FILES = 4
CLIENTS = 3
SIZE = 64  # bytes per value


@dataclass(frozen=True)
class Op:
    kind: str  # "w" | "r"
    file: int
    value: bytes
    start: float
    end: float


def value(text: str) -> bytes:
    return text.encode().ljust(SIZE, b".")


def check(ops: list[Op], initial: dict[int, bytes]) -> int:
    """Raises AssertionError on a violation; returns the number of reads checked."""
    writes: dict[int, dict[bytes, Op]] = {f: {} for f in range(FILES)}
    for f, v in initial.items():
        writes[f][v] = Op("w", f, v, -2.0, -1.0)
    for op in ops:
        if op.kind == "w":
            assert op.value not in writes[op.file], "values must be unique"
            writes[op.file][op.value] = op
    reads = [op for op in ops if op.kind == "r"]
    for r in reads:
        src = writes[r.file].get(r.value)
        assert src is not None, f"file {r.file}: read a value never written: {r}"
        assert src.start < r.end, f"read {r} returned a value written after it"
        for w in writes[r.file].values():
            if w.end < r.start and src.end < w.start:
                raise AssertionError(
                    f"stale read: {r} returned {src} although {w} completed first"
                )
    return len(reads)


async def test_reads_never_go_back_in_time(tmp_path: Path) -> None:
    with fault_cluster(tmp_path, targets=1) as cluster:
        clients = [client_for(cluster) for _ in range(CLIENTS)]
        try:
            initial = {f: value(f"init-{f}") for f in range(FILES)}
            for f, v in initial.items():
                await clients[0].write_file(f"/f{f}", v)
            ops: list[Op] = []
            stop = asyncio.Event()

            async def worker(n: int) -> None:
                fs = clients[n]
                rng = random.Random(n)
                wf = [await fs.open(f"/f{f}", "r+b") for f in range(FILES)]
                rf = [await fs.open(f"/f{f}", "rb") for f in range(FILES)]
                seq = 0
                try:
                    while not stop.is_set():
                        f = rng.randrange(FILES)
                        start = time.monotonic()
                        if rng.random() < 0.5:
                            seq += 1
                            v = value(f"c{n}-{seq}")
                            await wf[f].pwrite(v, 0)
                            ops.append(Op("w", f, v, start, time.monotonic()))
                        else:
                            got = await rf[f].pread(SIZE, 0)
                            ops.append(Op("r", f, got, start, time.monotonic()))
                finally:
                    for h in wf + rf:
                        await h.close()

            tasks = [asyncio.create_task(worker(n)) for n in range(CLIENTS)]
            faults = 0
            for position in (0, 2):  # the head, then the tail
                await asyncio.sleep(1.0)
                view = await fresh_routing(clients[0])
                (chain,) = view.chains.values()
                node = view.targets[chain.targets[position]].node_id
                proc = storage_proc(cluster, node)
                proc.kill()
                faults += 1
                await wait_routing(clients[0], node_down(node), timeout=10)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(cluster.restart, proc)
                await wait_routing(clients[0], all_serving, timeout=30)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)
            reads = check(ops, initial)
            print(
                f"\n{len(ops)} ops ({len(ops) - reads} writes, {reads} reads) by "
                f"{CLIENTS} clients on {FILES} files, {faults} kill -9 + restart: "
                "no stale or invented reads"
            )
        finally:
            for c in clients:
                await c.aclose()


def test_checker_catches_stale_and_invented_reads() -> None:
    init = {f: value(f"init-{f}") for f in range(FILES)}
    a, b = value("a"), value("b")
    good = [Op("w", 0, a, 0, 1), Op("w", 0, b, 2, 3), Op("r", 0, b, 4, 5)]
    assert check(good, init) == 1
    stale = [Op("w", 0, a, 0, 1), Op("w", 0, b, 2, 3), Op("r", 0, a, 4, 5)]
    try:
        check(stale, init)
        raise RuntimeError("stale read not caught")
    except AssertionError:
        pass
    try:
        check([Op("r", 0, value("zz"), 0, 1)], init)
        raise RuntimeError("invented value not caught")
    except AssertionError:
        pass
