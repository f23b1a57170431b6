"""`py3fs admin`, `fsck`, `dump`/`load` and `gc` against real clusters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import client_for, list_chunks, running_cluster

from py3fs import caps, ids, wire
from py3fs.cluster import LocalCluster
from py3fs.kv import keys
from py3fs.kv.registry import open_database
from py3fs.proto.messages import DirLayout
from storage_service.file_chunk_store import FileChunkStore

KiB = 1024


def py3fs(
    cluster: LocalCluster, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "py3fs", *args, "--cluster", str(cluster.cluster_file)],
        capture_output=True,
        text=True,
        timeout=180,
        input=stdin,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"py3fs {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("admin"), targets=2) as cluster:
        yield cluster


def test_admin_lists_nodes_targets_chains(cluster: LocalCluster) -> None:
    nodes = json.loads(py3fs(cluster, "admin", "list-nodes", "--json").stdout)
    assert sorted(n["role"] for n in nodes) == ["meta"] * 2 + ["storage"] * 3
    assert all(n["state"] == "up" for n in nodes)
    targets = json.loads(py3fs(cluster, "admin", "list-targets", "--json").stdout)
    assert len(targets) == 6
    assert {t["state"] for t in targets} == {"serving"}
    chains = json.loads(py3fs(cluster, "admin", "list-chains", "--json").stdout)
    assert len(chains) == 2
    assert all(len(c["targets"]) == 3 for c in chains)
    text = py3fs(cluster, "admin", "list-chains").stdout
    assert "serving" in text
    assert text.splitlines()[0].split() == ["CHAIN_ID", "VERSION", "TARGETS"]


def chunk_path(cluster: LocalCluster, target: int, cid: bytes) -> Path:
    root = cluster.data_dir / f"storage-{target // 100}" / f"target-{target}"
    return Path(FileChunkStore(str(root)).data_path(cid))


def problems(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["kind"], p["what"]) for p in report["problems"]}


def test_fsck_finds_and_repairs_planted_damage(cluster: LocalCluster) -> None:
    orphan_inode = 10**12
    good = os.urandom(100 * KiB)

    async def plant() -> tuple[int, int, Path]:
        async with client_for(cluster) as fs:
            await fs.mkdir("/fsck")
            await fs.write_file("/fsck/good.bin", good)
            await fs.write_file("/fsck/dangling.bin", b"soon gone")
            await fs.write_file("/fsck/short.bin", os.urandom(100 * KiB))
            await fs.write_file("/fsck/corrupt.bin", good)
            # Orphan chunks: data stored for an inode that never existed. Meta
            # gives no capability for it: plant it with one minted from the
            # cluster secret, as a buggy or half-finished service would.
            layout = (await fs.stat("/fsck/good.bin")).layout
            assert layout is not None
            keys = caps.Keys.load(str(cluster.secret_file))
            assert keys is not None

            async def minted(inode: int, write: bool) -> tuple[bytes, float]:
                return keys.issue(inode, write), caps.DEFAULT_TTL

            fs.storage.capability = minted
            await fs.storage.write(orphan_inode, layout, 0, memoryview(good))
            # A length shorter than what storage holds (meta only, not storage).
            await fs.setattr("/fsck/short.bin", length=10)
            dangling = (await fs.stat("/fsck/dangling.bin")).inode
            node = await fs.stat("/fsck/corrupt.bin")
            assert node.layout is not None
            view = await fs.mgmt.routing()
            replica = view.chain(node.layout.chains[0]).targets[1]
            return (
                dangling,
                node.inode,
                chunk_path(cluster, replica, ids.chunk_id(node.inode, 0)),
            )

    dangling, corrupt_inode, corrupt_file = asyncio.run(plant())
    # A dangling entry: the name stays, its inode goes (as after a bad restore).
    db = open_database(cluster.kv_url)
    try:
        db.run(lambda tr: tr.clear(keys.inode_key(dangling)))
    finally:
        db.close()
    raw = bytearray(corrupt_file.read_bytes())
    for i in range(len(raw) - 2000, len(raw) - 1990):
        raw[i] ^= 0xFF
    corrupt_file.write_bytes(raw)

    found = py3fs(cluster, "fsck", "--scrub", "--json", check=False)
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert ("dangling", "/fsck/dangling.bin") in problems(report)
    assert ("orphan", f"inode {orphan_inode}") in problems(report)
    assert ("length", "/fsck/short.bin") in problems(report)
    assert any(
        kind == "corrupt" and what.startswith(f"inode {corrupt_inode} chunk 0")
        for kind, what in problems(report)
    )
    assert not any(p["repaired"] for p in report["problems"])

    fixed = py3fs(cluster, "fsck", "--repair", "--scrub", "--json", check=False)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert all(p["repaired"] for p in json.loads(fixed.stdout)["problems"])

    again = json.loads(py3fs(cluster, "fsck", "--scrub", "--json").stdout)
    assert again["problems"] == []
    assert again["clean"] is True

    async def verify() -> None:
        async with client_for(cluster) as fs:
            names = [e.name for e in await fs.listdir("/fsck")]
            assert "dangling.bin" not in names
            assert (await fs.stat("/fsck/short.bin")).length == 100 * KiB
            assert await fs.read_file("/fsck/corrupt.bin") == good
            view = await fs.mgmt.routing()
            for target in view.targets:
                body, _ = await fs.storage.call(
                    view.target_address(target),
                    wire.MsgType.LIST_CHUNKS,
                    wire.ListChunksReq(target_id=target, inode=orphan_inode),
                )
                assert isinstance(body, wire.ListChunksReply)
                assert body.chunks == []

    asyncio.run(verify())


def make_tree(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with client_for(cluster) as fs:
            await fs.mkdir("/tree/a/b", parents=True)
            await fs.mkdir("/tree/empty", 0o700)
            await fs.setattr(
                "/tree/empty", dir_layout=DirLayout(chunk_size=128 * KiB, stripe=1)
            )
            await fs.write_file("/tree/a/one.bin", os.urandom(3000))
            await fs.write_file("/tree/a/b/two.bin", b"")
            await fs.write_file(
                "/tree/big.bin", os.urandom(300 * KiB), chunk_size=64 * KiB
            )
            await fs.chmod("/tree/a/one.bin", 0o640)
            await fs.symlink("a/one.bin", "/tree/link")
            await fs.link("/tree/a/one.bin", "/tree/hard")
            await fs.setattr(
                "/tree/a", uid_new=1000, gid_new=100, mtime=1_700_000_000_123_456_789
            )

    asyncio.run(go())


def test_dump_to_a_fresh_cluster_and_load_is_identical(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    make_tree(cluster)
    dump_file = tmp_path / "ns.jsonl"
    py3fs(cluster, "dump", "-o", str(dump_file), "/tree")
    lines = dump_file.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "py3fs-namespace-dump"
    kinds = {json.loads(line)["type"] for line in lines[1:]}
    assert kinds == {"dir", "file", "symlink", "link"}
    recs = {r["path"]: r for r in map(json.loads, lines[1:])}
    assert recs["/empty"]["layout"] == {"chunk_size": 128 * KiB, "stripe": 1}

    with running_cluster(tmp_path / "fresh") as fresh:
        py3fs(fresh, "mkdir", "/restored")
        py3fs(fresh, "load", "-i", str(dump_file), "/restored")
        again = tmp_path / "again.jsonl"
        py3fs(fresh, "dump", "-o", str(again), "/restored")
        restored = again.read_text().splitlines()
    assert [json.loads(x) for x in restored[1:]] == [json.loads(x) for x in lines[1:]]


def test_gc_waits_for_removed_files(cluster: LocalCluster) -> None:
    async def churn() -> None:
        async with client_for(cluster) as fs:
            await fs.mkdir("/gc")
            for i in range(5):
                await fs.write_file(f"/gc/{i}", os.urandom(10 * KiB))
            await fs.remove("/gc", recursive=True)

    asyncio.run(churn())
    out = py3fs(cluster, "gc", "--wait", "30").stdout
    assert "meta 11: 0 file(s)" in out
    assert "meta 12: 0 file(s)" in out


def test_set_layout_is_inherited_by_new_files_and_directories(
    cluster: LocalCluster,
) -> None:
    data = os.urandom(200 * KiB + 123)

    async def setup() -> None:
        async with client_for(cluster) as fs:
            await fs.mkdir("/lay")
            await fs.write_file("/lay/before.bin", b"made before the layout")

    asyncio.run(setup())
    out = py3fs(
        cluster,
        "admin",
        "set-layout",
        "/lay",
        "--chunk-size",
        "64KiB",
        "--stripe",
        "1",
        "--replicas",
        "3",
    ).stdout
    assert "chunk 64.0 KiB, stripe 1, table 1" in out, out
    # No table of 2 replicas in this cluster: refused, naming what exists.
    refused = py3fs(
        cluster, "admin", "set-layout", "/lay", "--replicas", "2", check=False
    )
    assert refused.returncode != 0
    assert "no chain table of 2 replicas (tables have [3])" in refused.stderr
    assert (
        py3fs(
            cluster,
            "admin",
            "set-layout",
            "/lay/before.bin",
            "--stripe",
            "1",
            check=False,
        ).returncode
        != 0
    )
    assert "new entries: chunk 64.0 KiB, stripe 1, table 1" in (
        py3fs(cluster, "stat", "/lay").stdout
    )

    async def check() -> None:
        async with client_for(cluster) as fs:
            await fs.write_file("/lay/a.bin", data)
            await fs.mkdir("/lay/sub")
            await fs.write_file("/lay/sub/b.bin", data[::-1])
            await fs.write_file("/outside.bin", data)
            view = await fs.mgmt.routing()
            for path, want in (("/lay/a.bin", data), ("/lay/sub/b.bin", data[::-1])):
                node = await fs.stat(path)
                assert node.layout is not None
                assert node.layout.chunk_size == 64 * KiB
                assert node.layout.table_id == 1
                assert len(node.layout.chains) == 1
                assert await fs.read_file(path) == want
                # Storage holds it as 64 KiB chunks, all on the one chain.
                chain = view.chain(node.layout.chains[0])
                for target in chain.targets:
                    mine = [
                        c.length
                        for c in await list_chunks(fs, view, target)
                        if ids.split_chunk_id(c.chunk_id)[0] == node.inode
                    ]
                    assert sorted(mine) == [8 * KiB + 123, *[64 * KiB] * 3]
            sub = await fs.stat("/lay/sub")
            assert sub.dir_layout == (await fs.stat("/lay")).dir_layout
            # Files made before, and files elsewhere, keep the cluster default.
            for path in ("/lay/before.bin", "/outside.bin"):
                node = await fs.stat(path)
                assert node.layout is not None
                assert node.layout.chunk_size == 4 * 1024 * KiB
                assert len(node.layout.chains) == len(view.table(1).chains)

    asyncio.run(check())
    # --clear: new files are back to the default.
    assert (
        "default layout"
        in py3fs(cluster, "admin", "set-layout", "/lay", "--clear").stdout
    )

    async def cleared() -> None:
        async with client_for(cluster) as fs:
            await fs.write_file("/lay/after.bin", data)
            node = await fs.stat("/lay/after.bin")
            assert node.layout is not None
            assert node.layout.chunk_size == 4 * 1024 * KiB
            assert await fs.read_file("/lay/after.bin") == data

    asyncio.run(cleared())


def test_decommission_drains_a_node_by_resync(tmp_path: Path) -> None:
    # 4 storage nodes of one target, 3 replicas: one chain and one spare target.
    with running_cluster(tmp_path / "decom", storage=4, targets=1) as cluster:
        files = {f"/d/{i}.bin": os.urandom(150 * KiB + i) for i in range(6)}

        async def write() -> tuple[int, list[int]]:
            async with client_for(cluster) as fs:
                await fs.mkdir("/d")
                for path, data in files.items():
                    await fs.write_file(path, data, chunk_size=64 * KiB)
                view = await fs.mgmt.routing()
                (chain,) = view.chains.values()
                return view.targets[chain.targets[0]].node_id, chain.targets

        victim, before = asyncio.run(write())
        out = py3fs(cluster, "admin", "decommission", str(victim), "--wait", "120")
        assert f"node {victim}: drained" in out.stdout

        async def check() -> None:
            async with client_for(cluster) as fs:
                view = await fs.mgmt.routing()
                (chain,) = view.chains.values()
                assert len(chain.targets) == 3
                assert all(view.targets[t].node_id != victim for t in chain.targets)
                assert set(before) - set(chain.targets) == {before[0]}
                assert view.serving_targets(chain.chain_id) == chain.targets
                assert view.nodes[victim].decommissioned
                for path, data in files.items():
                    assert await fs.read_file(path) == data
                # Every replica holds the same chunks, byte for byte (CRCs).
                held = [
                    sorted(
                        (c.chunk_id, c.length, c.crc)
                        for c in await list_chunks(fs, view, t)
                    )
                    for t in chain.targets
                ]
                assert len(held[0]) >= len(files) * 3
                assert held[1] == held[0]
                assert held[2] == held[0]
                # The chain takes writes without the node.
                await fs.write_file("/d/after.bin", b"x" * 100_000)
                assert await fs.read_file("/d/after.bin") == b"x" * 100_000

        asyncio.run(check())
        nodes = json.loads(py3fs(cluster, "admin", "list-nodes", "--json").stdout)
        assert {n["node_id"]: n["state"] for n in nodes}[victim] == "decommissioned"
        # No spare left: a second decommission is refused clearly.
        other = next(
            n["node_id"]
            for n in nodes
            if n["role"] == "storage" and n["node_id"] != victim
        )
        refused = py3fs(cluster, "admin", "decommission", str(other), check=False)
        assert refused.returncode != 0
        assert "no spare target" in refused.stderr
