"""Failover time with default settings, and false failovers under load.

    python benchmarks/failover.py [--trials 3] [--load-seconds 20] [--writers 4]

Starts a local cluster with the launcher's defaults (3 storage nodes, 3 replicas,
fsync on, mgmtd's default failure timeout) in a temporary directory, then:

1. Load: `--writers` clients write 4 MiB files as fast as they can for
   `--load-seconds`; every routing change during that time is a false failover
   (no process died). Prints MB/s and the count (want 0).
2. Failover, `--trials` times: one writer appends 64 KiB blocks and records when
   each write is acknowledged; the storage node holding the head of the file's
   chain is killed with SIGKILL; the time from the kill to the first write
   acknowledged after it is the failover time (writes resume). The node is then
   restarted (`cluster up` restarts only what is down) and its targets resync
   before the next trial.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from client import Client, ClientConfig
from py3fs.cluster import ClusterSpec, LocalCluster
from py3fs.procs import log_tail
from py3fs.routing import RoutingView

BLOCK = 64 * 1024
FILE = 4 * 1024 * 1024


async def routing(fs: Client) -> RoutingView:
    return await fs.mgmt.routing()


async def all_serving(fs: Client, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        view = await routing(fs)
        if all(t.state == "serving" for t in view.targets.values()):
            return
        if time.monotonic() > deadline:
            states = {t.target_id: t.state for t in view.targets.values()}
            raise TimeoutError(f"targets did not all return to serving: {states}")
        await asyncio.sleep(0.2)


async def load_phase(fs: Client, seconds: float, writers: int) -> tuple[float, int]:
    """MB/s written and the number of routing changes seen meanwhile."""
    start_view = await routing(fs)
    changes = 0
    last = start_view.version
    stop = time.monotonic() + seconds
    written = 0
    payload = memoryview(os.urandom(FILE))

    async def writer(n: int) -> None:
        nonlocal written
        i = 0
        while time.monotonic() < stop:
            await fs.write_file(f"/load/{n}-{i % 8}", payload)
            written += FILE
            i += 1

    async def watch() -> None:
        nonlocal changes, last
        while time.monotonic() < stop:
            view = await routing(fs)
            if view.version != last:
                offline = [t for t in view.targets.values() if t.state != "serving"]
                if offline:
                    changes += 1
                    print(f"  false failover: {[t.target_id for t in offline]}")
                last = view.version
            await asyncio.sleep(0.1)

    await fs.mkdir("/load", parents=True)
    t0 = time.monotonic()
    await asyncio.gather(watch(), *(writer(n) for n in range(writers)))
    return written / (time.monotonic() - t0) / 1e6, changes


async def failover_trial(cluster: LocalCluster, fs: Client, trial: int) -> float:
    path = f"/failover-{trial}.bin"
    f = await fs.open(path, "wb")
    block = memoryview(os.urandom(BLOCK))
    acks: list[float] = []
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await f.write(block)
            acks.append(time.monotonic())

    task = asyncio.create_task(writer())
    await asyncio.sleep(1.0)
    node = await fs.stat(path)
    assert node.layout is not None
    view = await routing(fs)
    head = view.head(node.layout.chains[0])
    victim = next(
        p for p in cluster.storages if p.node_id == view.targets[head].node_id
    )
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    while not acks or acks[-1] <= killed_at:
        await asyncio.sleep(0.01)
        if time.monotonic() - killed_at > 120:
            raise TimeoutError("writes did not resume within 120 s")
    resumed = next(t for t in acks if t > killed_at) - killed_at
    await asyncio.sleep(0.5)
    stop.set()
    await task
    await f.close()
    print(f"trial {trial + 1}: writes resumed {resumed:.2f} s after kill -9")
    await asyncio.to_thread(cluster.up)  # restarts only the killed node
    try:
        await all_serving(fs)
    except TimeoutError:
        print(log_tail(victim.log_file, 15))
        raise
    return resumed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="py3fs-failover-") as tmp:
        cluster = LocalCluster(ClusterSpec(data_dir=Path(tmp)))
        await asyncio.to_thread(cluster.up)
        try:
            timeout = cluster.spec.heartbeat_timeout
            print(
                f"cluster: 3 storage x 4 targets, 3 replicas, failure timeout {timeout}"
            )
            async with Client(ClientConfig(mgmt=cluster.mgmt_addresses)) as fs:
                mbps, false = await load_phase(fs, args.load_seconds, args.writers)
                print(
                    f"load: {args.writers} writers x {args.load_seconds:g}s, "
                    f"{mbps:.0f} MB/s, false failovers: {false}"
                )
                times = []
                for trial in range(args.trials):
                    t = await failover_trial(cluster, fs, trial)
                    times.append(t)
                print(
                    f"failover: median {statistics.median(times):.2f} s, "
                    f"max {max(times):.2f} s over {len(times)} trials"
                )
        finally:
            await asyncio.to_thread(cluster.down)


if __name__ == "__main__":
    asyncio.run(main())
