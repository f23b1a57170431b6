"""Crashes at every named fault point (py3fs.faults) of a KV page put, a
checkpoint commit and its retention, and a rename; afterwards nothing is half
done: no orphan inode, file or chunk, no dangling dentry or index entry.

A point is switched on by PY3FS_FAULTS in the one process that owns it (the
meta service, or a client process of its own, tests/fault/crash_peer.py) and
kills it with SIGKILL when reached. Each test first proves the point fired (the
process died of SIGKILL, not of anything else, and not after finishing), so
client retries cannot hide the crash; then a meta restarted without faults
must let the interrupted operation finish or be cleaned up, and the checks in
tests/nscheck.py run on the KV store and on every storage target.

`test_every_point_is_exercised` fails when product code gains a fault point
that no test here (or in a list of points tested elsewhere) crashes at.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from crash_peer import PAGE, checkpoint_state, kv_keys, page_data
from harness import client_for, running_cluster
from nscheck import check_namespace, check_no_orphan_chunks

from client import Client
from kv_cache.store import KVCacheStore
from py3fs import faults
from py3fs.cluster import LocalCluster

PEER = Path(__file__).with_name("crash_peer.py")
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

RENAME_POINTS = [
    "meta.rename.src_unlinked",
    "meta.rename.dst_linked",
    "meta.rename.committed",
]
KV_META_POINTS = [
    "meta.kv_stage.committed",
    "meta.kv_put.moved",
    "meta.kv_put.committed",
]
KV_CLIENT_POINTS = ["kvcache.put.staged", "kvcache.put.written"]
CKPT_UNCOMMITTED_POINTS = [
    "checkpoint.save.dir_made",
    "checkpoint.save.shards_written",
    "checkpoint.save.index_written",
]
CKPT_COMMITTED_POINTS = ["checkpoint.save.committed", "checkpoint.retention.hidden"]
# Points whose crash tests live in other modules.
# The chunk engine's steps: test_torn_writes.py and test_craq_reads.py (kill -9 and
# delays on live nodes), test_chunk_engine_model.py (every point, both stores).
TESTED_ELSEWHERE = {
    "storage.chunk_stage.after_write",
    "storage.chunk_commit.after_stage",
    "storage.chunk_commit.mid_apply",
    "storage.chunk_commit.after_apply",
    # Delay points (a slow page store, a slow fetch): tests/fuse/test_page_store.py
    "mount.page_store.before",
    "mount.read.after_fetch",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One meta, so a crash stops the only meta and nothing can route around
    it; small chunks, so pages and shards span several chunks and chains."""
    with running_cluster(
        tmp_path_factory.mktemp("crash"), meta=1, chunk_size="64KiB"
    ) as c:
        yield c


@pytest.fixture
async def fs(cluster: LocalCluster) -> AsyncIterator[Client]:
    client = client_for(cluster)
    try:
        yield client
    finally:
        await client.aclose()


async def check_all(fs: Client, cluster: LocalCluster) -> None:
    await asyncio.to_thread(check_namespace, cluster.kv_url)
    await check_no_orphan_chunks(fs, cluster.kv_url)


def _restart_meta(cluster: LocalCluster, fault: str | None) -> None:
    meta = cluster.metas[0]
    meta.stop()
    # Keep its port: clients and mgmtd find the restarted meta where it was.
    if "--port" not in meta.args:
        meta.args = [*meta.args, "--port", meta.address.rpartition(":")[2]]
    if fault:
        meta.env[faults.ENV] = fault
    else:
        meta.env.pop(faults.ENV, None)
    cluster.restart(meta)


async def crash_meta_during(
    cluster: LocalCluster, point: str, op: Awaitable[T], timeout: float = 60
) -> T:
    """Arm `point` in the meta, run `op`, see the meta die of SIGKILL at the
    point, restart it unarmed and return what `op` (retrying) finally gives."""
    await asyncio.to_thread(
        _restart_meta, cluster, faults.env_value(**{point: "crash"})
    )
    meta = cluster.metas[0]
    task = asyncio.ensure_future(op)
    try:
        async with asyncio.timeout(timeout):
            while meta.running():
                if task.done():
                    task.result()  # raises what it raised
                    pytest.fail(
                        f"{point}: the operation finished; the point never fired"
                    )
                await asyncio.sleep(0.02)
        assert meta.popen is not None
        assert meta.popen.returncode == -signal.SIGKILL, (
            f"meta exited with {meta.popen.returncode}, not at {point}"
        )
        await asyncio.to_thread(_restart_meta, cluster, None)
        return await asyncio.wait_for(task, timeout)
    finally:
        task.cancel()
        if not meta.running():
            await asyncio.to_thread(_restart_meta, cluster, None)


async def run_peer_to_crash(point: str, *args: object) -> None:
    """Run crash_peer.py with `point` armed; it must die of SIGKILL there."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEER),
        *map(str, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, faults.ENV: f"{point}=crash"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL, (
        f"{point}: peer exited {proc.returncode} (want SIGKILL at the point)\n"
        f"{out.decode()[-500:]}{err.decode()[-3000:]}"
    )
    assert b"done" not in out


# ---------------------------------------------------------------------- rename


@pytest.mark.parametrize("point", RENAME_POINTS)
async def test_rename_crash(fs: Client, cluster: LocalCluster, point: str) -> None:
    """Rename a file over an existing one; the crash leaves either the old
    names or the new, and the replaced file's chunks are collected."""
    d = f"/rename-{point.rsplit('.', 1)[1]}"
    await fs.mkdir(d)
    src, dst = b"S" * 200_000, b"D" * 150_000  # several 64 KiB chunks each
    await fs.write_file(f"{d}/a", src)
    await fs.write_file(f"{d}/b", dst)
    await crash_meta_during(cluster, point, fs.rename(f"{d}/a", f"{d}/b"))
    # The retry after the restart finished the rename exactly once (a retry
    # re-applied after commit would fail with NotFound).
    assert sorted(e.name for e in await fs.listdir(d)) == ["b"]
    assert await fs.read_file(f"{d}/b") == src
    await check_all(fs, cluster)


# --------------------------------------------------------------- KV page put


async def kv_check(fs: Client, store: KVCacheStore) -> dict[bytes, int]:
    """The page index and the files in pages/ name the same pages (no orphan
    file, no dangling entry), the counters agree, and every page reads back."""
    index = {e.key: e.inode async for e in store.list_pages()}
    files = {
        bytes.fromhex(e.name): e.inode for e in await fs.listdir(f"{store.path}/pages")
    }
    assert index == files
    stats = await store.stats()
    assert (stats.pages, stats.used_bytes) == (len(index), len(index) * PAGE)
    keys = sorted(index)
    bufs = [bytearray(PAGE) for _ in keys]
    assert await store.get(keys, bufs) == [True] * len(keys)
    assert all(b == page_data(k) for b, k in zip(bufs, keys, strict=True))
    return index


@pytest.mark.parametrize("point", KV_META_POINTS)
async def test_kv_put_meta_crash(fs: Client, cluster: LocalCluster, point: str) -> None:
    """meta dies inside or right after a staging/publishing transaction; the
    client's retry (same request id) completes the put exactly once."""
    store = await KVCacheStore(fs, f"m-{point.replace('.', '-')}", PAGE).open()
    keys = kv_keys(hash(point) % 1000, 5)
    await crash_meta_during(
        cluster, point, store.put(keys, [page_data(k) for k in keys])
    )
    assert set(await kv_check(fs, store)) == set(keys)
    # Nothing left in staging: the retry reused the staged files.
    assert await fs.listdir(f"{store.path}/.staging") == []
    await check_all(fs, cluster)


@pytest.mark.parametrize("point", KV_CLIENT_POINTS)
async def test_kv_put_client_crash(
    fs: Client, cluster: LocalCluster, point: str
) -> None:
    """The writing process dies between staging and publishing: no page is
    indexed, the staged files are only in .staging/, and gc removes them and
    (through meta's GC) their chunks."""
    name = f"c-{point.replace('.', '-')}"
    store = await KVCacheStore(fs, name, PAGE, staging_ttl=0.001).open()
    old = kv_keys(1, 3)
    await store.put(old, [page_data(k) for k in old])
    await run_peer_to_crash(point, "kvput", cluster.cluster_file, name, 2, 4)
    new = kv_keys(2, 4)
    assert await store.exists(new) == [False] * 4
    assert len(await fs.listdir(f"{store.path}/.staging")) == 4
    assert set(await kv_check(fs, store)) == set(old)
    await check_all(fs, cluster)  # staged files are files, not orphans
    removed = await store.gc()
    assert removed["staging_removed"] == 4
    assert await fs.listdir(f"{store.path}/.staging") == []
    assert set(await kv_check(fs, store)) == set(old)
    await check_all(fs, cluster)
    # The same pages can be put again and read back.
    await store.put(new, [page_data(k) for k in new])
    assert set(await kv_check(fs, store)) == set(old) | set(new)


# ---------------------------------------------------------------- checkpoints


def _ckpt_dir(point: str) -> str:
    return f"/ckpt-crash/{point.replace('.', '-')}"


async def _load_equal(fs: Client, directory: str, step: int) -> None:
    import torch

    from kv_cache.checkpoint import CheckpointManager

    got = await CheckpointManager(fs, directory).load(step)
    want = checkpoint_state(step)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("point", CKPT_UNCOMMITTED_POINTS)
async def test_checkpoint_crash_before_commit(
    fs: Client, cluster: LocalCluster, point: str
) -> None:
    pytest.importorskip("torch", reason="checkpoints need torch")
    from kv_cache.checkpoint import CheckpointManager

    directory = _ckpt_dir(point)
    mgr = CheckpointManager(fs, directory, keep_last=1, shard_bytes=128 << 10)
    await mgr.save(1, checkpoint_state(1))
    await run_peer_to_crash(point, "ckpt", cluster.cluster_file, directory, 2, 1)
    assert await mgr.steps() == [1]  # step 2 never became visible
    await _load_equal(fs, directory, 1)
    names = [e.name for e in await fs.listdir(directory)]
    assert len(names) == 2
    assert names[0].startswith(".tmp-2-")
    await check_all(fs, cluster)
    assert await mgr.remove_incomplete() == 1
    assert [e.name for e in await fs.listdir(directory)] == ["step-1"]
    await check_all(fs, cluster)


async def test_checkpoint_crash_after_commit(fs: Client, cluster: LocalCluster) -> None:
    """Committed, retention not yet run: both steps are complete and visible;
    the next save's retention catches up."""
    pytest.importorskip("torch", reason="checkpoints need torch")
    from kv_cache.checkpoint import CheckpointManager

    point = "checkpoint.save.committed"
    directory = _ckpt_dir(point)
    mgr = CheckpointManager(fs, directory, keep_last=1, shard_bytes=128 << 10)
    await mgr.save(1, checkpoint_state(1))
    await run_peer_to_crash(point, "ckpt", cluster.cluster_file, directory, 2, 1)
    assert await mgr.steps() == [1, 2]
    await _load_equal(fs, directory, 1)
    await _load_equal(fs, directory, 2)
    await check_all(fs, cluster)
    assert await mgr.apply_retention() == [1]
    assert [e.name for e in await fs.listdir(directory)] == ["step-2"]
    await check_all(fs, cluster)


async def test_retention_crash_after_hiding(fs: Client, cluster: LocalCluster) -> None:
    """The old step was renamed out of sight, its files not yet removed: it is
    gone from `steps()` at once, and `remove_incomplete` reclaims it."""
    pytest.importorskip("torch", reason="checkpoints need torch")
    from kv_cache.checkpoint import CheckpointManager

    point = "checkpoint.retention.hidden"
    directory = _ckpt_dir(point)
    mgr = CheckpointManager(fs, directory, keep_last=1, shard_bytes=128 << 10)
    await mgr.save(1, checkpoint_state(1))
    await run_peer_to_crash(point, "ckpt", cluster.cluster_file, directory, 2, 1)
    assert await mgr.steps() == [2]
    await _load_equal(fs, directory, 2)
    names = sorted(e.name for e in await fs.listdir(directory))
    assert len(names) == 2
    assert names[0].startswith(".del-1-")
    await check_all(fs, cluster)
    assert await mgr.remove_incomplete() == 1
    assert [e.name for e in await fs.listdir(directory)] == ["step-2"]
    await check_all(fs, cluster)


# ------------------------------------------------------------------ coverage

_POINT = re.compile(r"""fault_point\(\s*["']([\w.]+)["']""")
# Points named through a module constant: fault_point(AFTER_STAGE).
_POINT_BY_NAME = re.compile(r"fault_point\(\s*([A-Z][A-Z0-9_]*)\s*\)")
_CONSTANT = re.compile(
    r"""^([A-Z][A-Z0-9_]*)\s*(?::[^=]+)?=\s*["']([\w.]+)["']""", re.M
)


def named_points() -> set[str]:
    """Every fault point named in product code."""
    found: set[str] = set()
    used: set[str] = set()
    constants: dict[str, str] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        hidden = rel[0].startswith(".")  # .venv, and scratch trees like .gpu/
        if hidden or rel[0] in ("tests", "benchmarks") or rel[-1] == "faults.py":
            continue
        text = path.read_text()
        found |= set(_POINT.findall(text))
        used |= set(_POINT_BY_NAME.findall(text))
        constants.update(_CONSTANT.findall(text))
    return found | {constants[name] for name in used}


def test_every_point_is_exercised() -> None:
    tested = {
        *RENAME_POINTS,
        *KV_META_POINTS,
        *KV_CLIENT_POINTS,
        *CKPT_UNCOMMITTED_POINTS,
        *CKPT_COMMITTED_POINTS,
        *TESTED_ELSEWHERE,
    }
    points = named_points()
    assert points, "no fault points found: is the pattern stale?"
    assert points - tested == set(), "fault points no test crashes at"
    assert tested - points == set(), "tests name points the code no longer has"
