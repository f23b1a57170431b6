"""Replica damage: flipped bytes in a chunk file are detected on read, served from
another replica and repaired; a full disk refuses writes with ENOSPC without
damaging existing chunks or other chains, and recovers once space is freed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
from fault_tools import KiB, check_replicas, fault_cluster, fresh_routing
from harness import client_for, mint_capabilities

from client.storage_client import ReadItem, replica_for
from py3fs import errors, ids
from py3fs.cluster import STORAGE_BASE
from py3fs.proto.messages import Layout
from storage_service.chunk_format import content_digest, unpack_meta
from storage_service.file_chunk_store import FileChunkStore


def chunk_file(data_dir: Path, target: int, chunk_id: bytes) -> Path:
    node = target // 100
    root = data_dir / f"storage-{node}" / f"target-{target}"
    return Path(FileChunkStore(str(root)).data_path(chunk_id))


async def test_flipped_bytes_are_served_around_and_repaired(tmp_path: Path) -> None:
    with fault_cluster(tmp_path, targets=1) as cluster:
        fs = client_for(cluster)
        try:
            data = os.urandom(200 * KiB)  # one chunk
            await fs.write_file("/victim.bin", data)
            inode = (await fs.stat("/victim.bin")).inode
            cid = ids.chunk_id(inode, 0)
            view = await fresh_routing(fs)
            (chain,) = view.chains.values()
            # The replica every client reads this chunk from.
            serving = view.serving_targets(chain.chain_id)
            bad = serving[replica_for(inode, 0) % len(serving)]
            path = chunk_file(cluster.data_dir, bad, cid)
            raw = bytearray(path.read_bytes())
            for i in range(1000, 1010):
                raw[i] ^= 0xFF
            path.write_bytes(raw)

            # Reads hit the damaged replica first, and all succeed.
            for _ in range(6):
                assert await fs.read_file("/victim.bin") == data
            start = time.monotonic()
            async with asyncio.timeout(15):
                while True:
                    raw = bytearray(path.read_bytes())
                    if raw == data:
                        break
                    await asyncio.sleep(0.05)
            meta = unpack_meta(path.with_suffix(".m").read_bytes())
            assert meta.info.crc == content_digest(data)
            await check_replicas(fs)
            print(
                f"\ncorrupt replica {bad} repaired {time.monotonic() - start:.2f}s "
                "after the reads"
            )
        finally:
            await fs.aclose()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> object:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of the file system at `path` (unbuffered, in smaller
    and smaller writes so the last partial page goes too)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (256 * KiB, 4 * KiB, 64):
            block = bytes(size)
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


async def test_full_disk_refuses_writes_and_recovers(tmp_path: Path) -> None:
    full_node = STORAGE_BASE
    with (
        tmpfs(tmp_path / f"storage-{full_node}", "20m") as disk,
        fault_cluster(tmp_path, replicas=2) as cluster,
    ):
        fs = client_for(cluster)
        mint_capabilities(cluster, fs)  # inodes meta never made
        try:
            view = await fresh_routing(fs)
            table = view.table(1)
            on_full = [
                c
                for c in table.chains
                if any(t // 100 == full_node for t in view.chain(c).targets)
            ]
            elsewhere = [c for c in table.chains if c not in on_full]
            assert on_full
            assert elsewhere

            def layout(chain_id: int) -> Layout:
                return Layout(256 * KiB, table.table_id, table.version, [chain_id])

            inode = 1 << 40
            old = os.urandom(100 * KiB)
            await fs.storage.write(inode, layout(on_full[0]), 0, memoryview(old))
            filler = fill(disk)

            new = os.urandom(200 * KiB)
            with pytest.raises(errors.NoSpace) as err:
                await fs.storage.write(
                    inode + 1, layout(on_full[0]), 0, memoryview(new)
                )
            assert err.value.errno == errno.ENOSPC
            # Other chains are unaffected; the existing chunk is intact.
            await fs.storage.write(inode + 2, layout(elsewhere[0]), 0, memoryview(new))
            back = bytearray(len(old))
            await fs.storage.read(inode, layout(on_full[0]), 0, memoryview(back))
            assert back == old

            filler.unlink()
            await fs.storage.write(inode + 1, layout(on_full[0]), 0, memoryview(new))
            back = bytearray(len(new))
            await fs.storage.read(inode + 1, layout(on_full[0]), 0, memoryview(back))
            assert back == new
            await check_replicas(fs)
        finally:
            await fs.aclose()


async def test_batch_read_falls_back_around_corrupt_replicas(tmp_path: Path) -> None:
    with fault_cluster(tmp_path, targets=1) as cluster:
        fs = client_for(cluster)
        try:
            data = os.urandom(200 * KiB)  # one chunk
            await fs.write_file("/batch.bin", data)
            node = await fs.stat("/batch.bin")
            assert node.layout is not None
            cid = ids.chunk_id(node.inode, 0)
            (chain,) = (await fresh_routing(fs)).chains.values()
            for bad in chain.targets[:2]:  # only the tail keeps good data
                path = chunk_file(cluster.data_dir, bad, cid)
                raw = bytearray(path.read_bytes())
                raw[10] ^= 0xFF
                path.write_bytes(raw)
            bufs = [bytearray(4 * KiB) for _ in range(24)]
            items = [
                ReadItem(node.inode, node.layout, i * 8 * KiB, memoryview(buf))
                for i, buf in enumerate(bufs)
            ]
            # Grouped frames hit the damaged replicas too; those ios are retried
            # one by one around them and every item comes back right.
            assert await fs.storage.read_batch(items) == [None] * len(items)
            for i, buf in enumerate(bufs):
                assert buf == data[i * 8 * KiB : i * 8 * KiB + 4 * KiB]
        finally:
            await fs.aclose()
