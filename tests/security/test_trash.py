"""Careless users (issue 11): `py3fs rm -r /` is refused, `rm` moves to a
per-user trash that restores a tree byte for byte, and meta deletes what
expired. Before, `rm -r /` emptied the file system and exited 0, with no trash
to restore from."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import FAST, add_user, client_for, running_cluster

from client import Client, ClientConfig, trash
from py3fs import errors
from py3fs.cluster import LocalCluster

FILES = {
    "/proj/a.txt": b"alpha\n",
    "/proj/sub/b.bin": os.urandom(3 * 1024 * 1024 + 5),
    "/proj/sub/deeper/c": b"",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    extra = {**FAST, "meta": [*FAST["meta"], "--trash-interval", "0.3s"]}
    with running_cluster(tmp_path_factory.mktemp("trash"), extra=extra) as c:
        yield c


def py3fs(
    cluster: LocalCluster, *args: str, token: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PY3FS_TOKEN", None)
    if token:
        env["PY3FS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "py3fs", *args, "--cluster", str(cluster.cluster_file)],
        capture_output=True,
        text=True,
        check=check,
        env=env,
    )


async def make_tree(fs: Client) -> None:
    await fs.mkdir("/proj/sub/deeper", parents=True)
    for path, data in FILES.items():
        await fs.write_file(path, data)


def test_rm_r_root_is_refused(cluster: LocalCluster) -> None:
    async def setup() -> None:
        async with client_for(cluster) as fs:
            await fs.write_file("/keep", b"keep")

    asyncio.run(setup())
    for root in ("/", "//", "/.", "/proj/.."):
        proc = py3fs(cluster, "rm", "-r", root, check=False)
        assert proc.returncode != 0
        assert "--no-preserve-root" in proc.stderr

    async def check() -> None:
        async with client_for(cluster) as fs:
            assert await fs.read_file("/keep") == b"keep"

    asyncio.run(check())


def test_trashed_tree_restores_byte_for_byte(cluster: LocalCluster) -> None:
    async def setup() -> None:
        async with client_for(cluster) as fs:
            await make_tree(fs)

    asyncio.run(setup())
    py3fs(cluster, "rm", "-r", "/proj")
    assert "proj" not in py3fs(cluster, "ls", "/").stdout.split()
    assert ".trash/" not in py3fs(cluster, "ls", "/").stdout.split()
    listing = py3fs(cluster, "trash", "ls").stdout.strip().splitlines()
    (line,) = [x for x in listing if x.endswith(" /proj")]
    entry_id = line.split()[0]

    # Without -r a directory is not trashed either.
    async def mkdir_only() -> None:
        async with client_for(cluster) as fs:
            await fs.mkdir("/lonely")

    asyncio.run(mkdir_only())
    assert py3fs(cluster, "rm", "/lonely", check=False).returncode == 1
    py3fs(cluster, "trash", "restore", entry_id)

    async def check() -> None:
        async with client_for(cluster) as fs:
            for path, data in FILES.items():
                assert await fs.read_file(path) == data
            assert await fs.exists("/lonely")

    asyncio.run(check())
    assert entry_id not in py3fs(cluster, "trash", "ls").stdout


def test_trash_is_per_user_and_expires(cluster: LocalCluster) -> None:
    alice, bob = add_user(cluster, "t-alice", 3001), add_user(cluster, "t-bob", 3002)

    async def run() -> None:
        async with client_for(cluster) as root:
            await root.mkdir("/shared", mode=0o777)
        cfg = ClientConfig(mgmt=cluster.mgmt_addresses)
        async with (
            Client(dataclasses.replace(cfg, token=alice)) as a,
            Client(dataclasses.replace(cfg, token=bob)) as b,
        ):
            await a.write_file("/shared/a-note", b"mine")
            await trash.move_to_trash(a, "/shared/a-note")
            assert [e.origin for e in await trash.list_trash(a)] == ["/shared/a-note"]
            assert await trash.list_trash(b) == []
            with pytest.raises(errors.PermissionDenied):
                await b.listdir("/.trash/3001")
            # An entry that expired is deleted by meta on its own.
            await a.write_file("/shared/old", b"old")
            await trash.move_to_trash(a, "/shared/old", days=-1)
            for _ in range(100):
                origins = [e.origin for e in await trash.list_trash(a)]
                if "/shared/old" not in origins:
                    break
                await asyncio.sleep(0.1)
            assert origins == ["/shared/a-note"]

    asyncio.run(run())
