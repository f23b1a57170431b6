"""Helpers for fault tests: a fast-failing cluster, workload writers that keep a
model of every acknowledged write, routing waits and replica comparisons."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import FAST, list_chunks, running_cluster
from lincheck import READ, WRITE, Op

from client import Client
from py3fs import errors
from py3fs.cluster import LocalCluster
from py3fs.procs import ServiceProc
from py3fs.proto.messages import TargetState
from py3fs.routing import RoutingView

KiB = 1024
HEARTBEAT_TIMEOUT = 2.0  # s: mgmtd declares a silent node dead after this


@contextmanager
def fault_cluster(data_dir: Path, **overrides: Any) -> Iterator[LocalCluster]:
    """3 storage nodes x 2 targets, 3 replicas, 1 meta, small chunks, 2 s failure
    detection with 0.25 s heartbeats (storage leases last 1 s)."""
    extra = {
        "meta": FAST["meta"],
        "storage": ["--heartbeat-interval", "0.25s"],
    }
    fields: dict[str, Any] = {
        "meta": 1,
        "targets": 2,
        "chunk_size": "256KiB",
        "heartbeat_timeout": f"{HEARTBEAT_TIMEOUT}s",
        "extra": extra,
    }
    fields.update(overrides)
    with running_cluster(data_dir, **fields) as cluster:
        yield cluster


def storage_proc(cluster: LocalCluster, node_id: int) -> ServiceProc:
    return next(p for p in cluster.storages if p.node_id == node_id)


async def fresh_routing(fs: Client) -> RoutingView:
    """Routing straight from mgmtd (the cache's `refresh()` alone may return
    the cached view)."""
    return await fs.routing.refresh(await fs.routing.get())


async def wait_routing(
    fs: Client, predicate: Callable[[RoutingView], bool], timeout: float
) -> tuple[RoutingView, float]:
    """Poll mgmtd until `predicate(view)`; returns the view and seconds waited."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            view = await fresh_routing(fs)
            if predicate(view):
                return view, time.monotonic() - start
            await asyncio.sleep(0.05)


def all_serving(view: RoutingView) -> bool:
    return all(t.state == TargetState.SERVING for t in view.targets.values()) and all(
        view.nodes[n].up for n in {t.node_id for t in view.targets.values()}
    )


def node_down(node_id: int) -> Callable[[RoutingView], bool]:
    def check(view: RoutingView) -> bool:
        return not view.nodes[node_id].up

    return check


async def check_replicas(fs: Client) -> int:
    """Every chain's targets hold the same chunks with equal versions and CRC32C;
    returns the number of chunks compared."""
    view = await fresh_routing(fs)
    compared = 0
    for chain in view.chains.values():
        copies = []
        for t in chain.targets:
            metas = await list_chunks(fs, view, t)
            copies.append(
                {m.chunk_id: (m.committed_ver, m.crc, m.length) for m in metas}
            )
        first = copies[0]
        for other, t in zip(copies[1:], chain.targets[1:], strict=True):
            assert other == first, (
                f"chain {chain.chain_id}: target {t} differs from {chain.targets[0]}"
            )
        compared += len(first)
    return compared


_RESYNC = re.compile(
    r"resync of target (\d+) done: (\d+) chunks \((\d+) bytes\).*in ([\d.]+)s"
)


def resync_log(cluster: LocalCluster) -> list[tuple[int, int, int, float]]:
    """(target, chunks, bytes, seconds) of every completed resync, from the logs."""
    out = []
    for log in cluster.run_dir.glob("storage-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            try:
                msg = json.loads(line).get("msg", "")
            except ValueError:
                msg = line
            if m := _RESYNC.search(msg):
                out.append((int(m[1]), int(m[2]), int(m[3]), float(m[4])))
    return out


@dataclass
class Writer:
    """Writes blocks to one file, one at a time, and keeps the acknowledged
    content; `acks` holds (start, end) of every acknowledged write."""

    fs: Client
    path: str
    size: int
    block: int
    sequential: bool
    seed: int = 0
    model: bytearray = field(default_factory=bytearray)
    acks: list[tuple[float, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        rng = random.Random(self.seed)
        async with await self.fs.open(self.path, "wb") as f:
            pos = 0
            while not self.stop.is_set():
                if self.sequential:
                    if pos >= self.size:
                        pos = 0  # wrap: overwrite from the start
                    offset = pos
                    pos += self.block
                else:
                    offset = rng.randrange(0, self.size // self.block) * self.block
                data = rng.randbytes(self.block)
                start = time.monotonic()
                await f.pwrite(data, offset)
                self.acks.append((start, time.monotonic()))
                end = offset + len(data)
                if len(self.model) < end:
                    self.model.extend(bytes(end - len(self.model)))
                self.model[offset:end] = data
                await asyncio.sleep(0)

    async def wait_resumed(self, t0: float, timeout: float = 20.0) -> float:
        """Seconds from `t0` to the first ack of a write started after it,
        waiting for one if needed."""
        async with asyncio.timeout(timeout):
            while (got := self.resumed_after(t0)) is None:
                await asyncio.sleep(0.05)
        return got

    def resumed_after(self, t0: float) -> float | None:
        """Seconds from `t0` to the first ack of a write started after it."""
        ends = [end for start, end in self.acks if start >= t0]
        return min(ends) - t0 if ends else None

    async def verify(self) -> None:
        back = await self.fs.read_file(self.path)
        assert len(back) == len(self.model), self.path
        assert back == bytes(self.model), f"{self.path}: acknowledged data lost"


# ------------------------------------------------ register histories (lincheck)

FILES = 4
CLIENTS = 3
SIZE = 64  # bytes per value


def value(text: str) -> bytes:
    return text.encode().ljust(SIZE, b".")


class RegisterWorkload:
    """CLIENTS clients, each writing and reading random files, one op at a
    time, recording every op with its invoke/complete time."""

    def __init__(
        self, clients: list[Client], prefix: str = "/f", first_id: int = 0
    ) -> None:
        self.clients = clients
        self.prefix = prefix
        # Client numbers in values and ops start here, so workloads of other
        # processes on the same files write values of their own.
        self.first_id = first_id
        self.ops: list[Op] = []
        self.failed = 0
        self.failures: list[tuple[float, float]] = []  # (start, end) of errors
        self.stop = asyncio.Event()

    async def setup(self) -> dict[int, bytes]:
        initial = {f: value(f"init-{f}") for f in range(FILES)}
        for f, v in initial.items():
            await self.clients[0].write_file(f"{self.prefix}{f}", v)
        return initial

    async def worker(self, n: int) -> None:
        fs = self.clients[n]
        rng = random.Random(n)
        wf = [await fs.open(f"{self.prefix}{f}", "r+b") for f in range(FILES)]
        rf = [await fs.open(f"{self.prefix}{f}", "rb") for f in range(FILES)]
        seq = 0
        try:
            while not self.stop.is_set():
                f = rng.randrange(FILES)
                start = time.monotonic()
                if rng.random() < 0.5:
                    seq += 1
                    v = value(f"c{self.first_id + n}-{seq}")
                    try:
                        await wf[f].pwrite(v, 0)
                        end = time.monotonic()
                    except errors.Py3fsError:
                        self.failed += 1
                        self.failures.append((start, time.monotonic()))
                        end = math.inf  # may or may not have taken effect
                    self.ops.append(
                        Op(WRITE, f, v, start, end, client=self.first_id + n)
                    )
                else:
                    try:
                        got = await rf[f].pread(SIZE, 0)
                    except errors.Py3fsError:
                        self.failed += 1
                        self.failures.append((start, time.monotonic()))
                        continue
                    self.ops.append(
                        Op(READ, f, got, start, time.monotonic(), self.first_id + n)
                    )
        finally:
            for h in wf + rf:
                await h.close()

    async def final_reads(self) -> None:
        """Every client reads every file once more after the workload stopped:
        an acknowledged write that was lost shows up as a stale final read."""
        for n, fs in enumerate(self.clients):
            for f in range(FILES):
                start = time.monotonic()
                got = await fs.read_file(f"{self.prefix}{f}")
                self.ops.append(Op(READ, f, got, start, time.monotonic(), n))

    def done_after(self, t0: float) -> int:
        """Operations that completed after `t0` (the workload made progress)."""
        return sum(1 for op in self.ops if t0 < op.end < math.inf)
