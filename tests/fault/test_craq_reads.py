"""CRAQ's apportioned query, made deterministic with a delay point: the tail is
held after applying a new chunk version (data and block table on disk) and before
recording it as committed (what it answers when asked). A read of the dirty chunk
at the head must never return the old version once anyone has read the new one.

Found by the linearizability checker (tests/lincheck.py) on the format-1 engine,
where the tail served a renamed-in version before recording it; the format-2
engine holds readers of a rewritten chunk at a gate until the commit is recorded,
and these tests keep both halves of that promise."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from fault_tools import (
    all_serving,
    check_replicas,
    fault_cluster,
    fresh_routing,
    storage_proc,
    wait_routing,
)
from harness import client_for
from nscheck import check_namespace, check_no_orphan_chunks

from py3fs import errors, faults, ids, wire
from py3fs.routing import RoutingView

HOLD = 3.0  # s the tail sits between applying a version and recording it
APPLIED = "storage.chunk_commit.after_apply"
OLD, NEW = b"O" * 64, b"N" * 64


async def read_at(fs, view: RoutingView, target: int, chain: int, cid: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """Read 64 bytes of chunk `cid` at `target` itself (no client routing)."""
    io = wire.ReadIO(
        target_id=target,
        chunk_id=cid,
        offset=0,
        length=64,
        chain_id=chain,
        chain_ver=view.chain(chain).version,
    )
    cap = await fs.storage.cap(ids.split_chunk_id(cid)[0], False)
    body, payload = await fs.storage.call(
        view.target_address(target),
        wire.MsgType.READ,
        wire.ReadReq(ios=[io], caps=[cap]),
    )
    assert isinstance(body, wire.ReadReply)
    (res,) = body.results
    if res.code:
        raise errors.error_from_code(res.code, res.message)
    return bytes(payload or b"")[: res.length]


async def test_head_read_while_tail_mid_commit(tmp_path: Path) -> None:
    with fault_cluster(tmp_path, targets=1) as cluster:
        fs = client_for(cluster)
        try:
            await fs.write_file("/r", OLD)
            node = await fs.stat("/r")
            assert node.layout is not None
            chain_id = node.layout.chains[0]
            cid = ids.chunk_id(node.inode, 0)
            view = await fresh_routing(fs)
            tail = view.chain(chain_id).targets[-1]
            # Restart the tail with the delay armed: its next commit is ours
            # (nothing changed while it was down, so its resync commits nothing).
            proc = storage_proc(cluster, view.targets[tail].node_id)
            await asyncio.to_thread(proc.stop)
            proc.env[faults.ENV] = faults.env_value(**{APPLIED: f"delay:{HOLD}"})
            try:
                await asyncio.to_thread(cluster.restart, proc)
            finally:
                proc.env.pop(faults.ENV)
            view, _ = await wait_routing(fs, all_serving, timeout=30)
            targets = view.chain(chain_id).targets
            assert targets[-1] == tail
            head = targets[0]

            async with await fs.open("/r", "r+b") as f:
                write = asyncio.create_task(f.pwrite(NEW, 0))
                await asyncio.sleep(HOLD / 3)  # the write reaches the held tail
                assert not write.done(), "the write was acknowledged too early"
                tail_read = asyncio.create_task(read_at(fs, view, tail, chain_id, cid))
                # Until some reader has seen NEW, the head may answer OLD or refuse.
                while not tail_read.done():
                    await asyncio.sleep(0.05)
                assert await tail_read == NEW
                # Now the head, perhaps still dirty, must not hand out the old one.
                try:
                    got = await read_at(fs, view, head, chain_id, cid)
                except errors.ChunkNotCommitted:
                    got = None  # refused: the client asks the tail instead
                assert got != OLD, "stale read at the head after the tail served NEW"
                await write
            assert await fs.read_file("/r") == NEW
        finally:
            await fs.aclose()


async def test_tail_crash_at_the_commit_point(tmp_path: Path) -> None:
    """The tail dies right after moving the staged version to its redo file
    (the commit point, before applying it and before its ack): the client's write
    still completes (retried on the shortened chain), and once the tail is back
    and resynced every
    replica holds the acknowledged version, with no orphan chunk."""
    with fault_cluster(tmp_path, targets=1) as cluster:
        fs = client_for(cluster)
        try:
            await fs.write_file("/c", OLD)
            node = await fs.stat("/c")
            assert node.layout is not None
            view = await fresh_routing(fs)
            tail = view.chain(node.layout.chains[0]).targets[-1]
            proc = storage_proc(cluster, view.targets[tail].node_id)
            await asyncio.to_thread(proc.stop)
            proc.env[faults.ENV] = faults.env_value(
                **{"storage.chunk_commit.after_stage": "crash"}
            )
            try:
                await asyncio.to_thread(cluster.restart, proc)
            finally:
                proc.env.pop(faults.ENV)
            await wait_routing(fs, all_serving, timeout=30)
            async with await fs.open("/c", "r+b") as f:
                await f.pwrite(NEW, 0)
            assert proc.popen is not None
            assert proc.popen.wait(timeout=30) == -signal.SIGKILL
            await asyncio.to_thread(cluster.restart, proc)
            await wait_routing(fs, all_serving, timeout=60)
            assert await check_replicas(fs) > 0
            assert await fs.read_file("/c") == NEW
            await asyncio.to_thread(check_namespace, cluster.kv_url)
            await check_no_orphan_chunks(fs, cluster.kv_url)
        finally:
            await fs.aclose()
