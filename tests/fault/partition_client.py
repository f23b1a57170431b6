"""A client process for test_partitions.py, run inside a lab namespace of its
own so that its links can be cut while the test's clients keep theirs:

    python partition_client.py CLUSTER_FILE PREFIX FIRST_ID STOP_FILE OUT_FILE

Runs one register worker (tests/fault_tools.RegisterWorkload, client number
FIRST_ID) on the files PREFIX0.. until STOP_FILE exists (it creates
STOP_FILE.running once it has done a few operations), then writes its history
as JSON lines to OUT_FILE (plus one "error" line per failed operation). Short
retry and call timeouts (2 s, 1 s), so that writes caught by a long cut may
fail (outcome unknown) rather than wait it out.
Times are time.monotonic(), which all processes on the host share.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from pathlib import Path

from fault_tools import RegisterWorkload

from client import Client, ClientConfig
from client.config import load_client_config


def _end(t: float) -> float | None:
    return None if math.isinf(t) else t


async def main(
    cluster_file: str, prefix: str, first_id: int, stop: str, out: str
) -> None:
    base = load_client_config(cluster_file)
    fs = Client(
        ClientConfig(
            mgmt=base.mgmt,
            token_file=base.token_file,
            retry_timeout=2.0,
            call_timeout=1.0,
        )
    )
    try:
        load = RegisterWorkload([fs], prefix, first_id)

        async def watch() -> None:
            # STOP_FILE + ".running" tells the test this client is under way.
            while len(load.ops) < 5:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(Path(stop + ".running").touch)
            while not await asyncio.to_thread(os.path.exists, stop):
                await asyncio.sleep(0.05)
            load.stop.set()

        await asyncio.gather(load.worker(0), watch())
    finally:
        await fs.aclose()
    lines = [
        json.dumps([op.kind, op.key, op.value.hex(), op.start, _end(op.end)])
        for op in load.ops
    ] + [json.dumps(["error", None, "", start, end]) for start, end in load.failures]
    await asyncio.to_thread(Path(out).write_text, "".join(f"{x}\n" for x in lines))
    print(f"{len(load.ops)} ops, {load.failed} failed", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], int(a[2]), a[3], a[4]))
