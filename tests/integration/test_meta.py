"""Real mgmtd + two meta processes sharing one sqlite store."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from client.meta_client import MetaStub
from py3fs import errors
from py3fs.mgmt_client import MgmtClient
from py3fs.procs import ServiceProc
from py3fs.proto.messages import (
    CloseReq,
    ListDirReq,
    MetaReq,
    MkdirReq,
    Msg,
    OpenReq,
    PathReq,
    RegisterNodeReq,
    RenameReq,
)
from py3fs.proto.services import Rpc

R = TypeVar("R", bound=Msg)
CREATE = os.O_CREAT | os.O_EXCL | os.O_WRONLY


@dataclass
class Cluster:
    mgmtd: ServiceProc
    metas: list[ServiceProc]


async def _make_chain_table(mgmt_address: str) -> None:
    mgmt = MgmtClient([mgmt_address])
    try:
        for n in range(3):
            node_id = 21 + n
            targets = [node_id * 100 + t for t in range(1, 3)]
            await mgmt.register(
                RegisterNodeReq(
                    node_id=node_id,
                    role="storage",
                    address="127.0.0.1:1",
                    targets=targets,
                )
            )
        view = await mgmt.create_chain_table(3)
        assert view.tables
    finally:
        await mgmt.aclose()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    url = f"sqlite:///{tmp_path}/kv.db"
    procs: list[ServiceProc] = []
    try:
        mgmtd = ServiceProc(
            role="mgmtd",
            node_id=1,
            module="mgmt_service",
            args=["--kv", url],
            run_dir=tmp_path,
        )
        procs.append(mgmtd)
        mgmtd.start()
        asyncio.run(_make_chain_table(mgmtd.address))
        metas = []
        for node_id in (101, 102):
            meta = ServiceProc(
                role="meta",
                node_id=node_id,
                module="meta_service",
                args=[
                    "--kv",
                    url,
                    "--mgmt",
                    mgmtd.address,
                    "--node-id",
                    str(node_id),
                    "--heartbeat-interval",
                    "200ms",
                    "--gc-interval",
                    "200ms",
                ],
                run_dir=tmp_path,
            )
            procs.append(meta)
            meta.start()
            metas.append(meta)
        yield Cluster(mgmtd, metas)
    finally:
        for proc in reversed(procs):
            proc.stop()


def client(proc: ServiceProc) -> MetaStub:
    return MetaStub(proc.address, 5.0)


async def test_visible_across_metas(cluster: Cluster) -> None:
    m1, m2 = client(cluster.metas[0]), client(cluster.metas[1])
    try:
        await m1.mkdir(MkdirReq(path="/shared"))
        opened = await m1.open(OpenReq(path="/shared/f", flags=CREATE))
        assert opened.session_id
        assert opened.inode.layout is not None
        assert len(opened.inode.layout.chains) >= 1
        seen = await m2.stat(PathReq(path="/shared/f"))
        assert seen.inode == opened.inode.inode
        await m2.close(
            CloseReq(inode=seen.inode, session_id=opened.session_id, length=77)
        )
        assert (await m1.stat(PathReq(path="/shared/f"))).length == 77
        listing = await m2.list_dir(ListDirReq(path="/shared"))
        assert [e.name for e in listing.entries] == ["f"]
        with pytest.raises(errors.AlreadyExists):
            await m2.mkdir(MkdirReq(path="/shared"))
        fs = await m2.stat_fs(MetaReq())
        assert (fs.files, fs.directories) == (1, 2)
    finally:
        await m1.aclose()
        await m2.aclose()


async def test_kill_meta_mid_workload(cluster: Cluster) -> None:
    """kill -9 one meta during a loop of mutations; every op is retried on the
    other meta with the same request id. Nothing acknowledged is lost and
    nothing is applied twice (O_EXCL creates and renames would fail if so)."""
    victim, survivor = cluster.metas
    clients = [client(victim), client(survivor)]
    current = 0
    retried = 0
    ident = {"client_id": "itest", "uid": 0, "gid": 0}
    request_ids = iter(range(1, 1_000_000))

    async def call(rpc: Rpc[Msg, R], req: Msg) -> R:
        nonlocal current, retried
        while True:
            try:
                return await getattr(clients[current], rpc.name)(req)  # type: ignore[no-any-return]
            except (errors.RPCUnavailable, errors.RPCTimeout):
                assert current == 0, "the surviving meta failed"
                current = 1
                retried += 1

    async def killer() -> None:
        # Lands while the loop awaits a call (a request in flight), however
        # fast meta runs: it starts after a number of ops, not of seconds.
        await asyncio.sleep(0.05)
        victim.kill()

    n = 0
    kill_task: asyncio.Task[None] | None = None
    try:
        await call(
            MetaStub.mkdir, MkdirReq(path="/w", request_id=next(request_ids), **ident)
        )
        while n < 400 and (
            kill_task is None or not kill_task.done() or current == 0 or n < 40
        ):
            if n == 20:
                kill_task = asyncio.create_task(killer())
            d = f"/w/d{n:04d}"
            await call(
                MetaStub.mkdir, MkdirReq(path=d, request_id=next(request_ids), **ident)
            )
            opened = await call(
                MetaStub.open,
                OpenReq(
                    path=f"{d}/f", flags=CREATE, request_id=next(request_ids), **ident
                ),
            )
            await call(
                MetaStub.close,
                CloseReq(
                    inode=opened.inode.inode,
                    session_id=opened.session_id,
                    length=n,
                    request_id=next(request_ids),
                    **ident,
                ),
            )
            await call(
                MetaStub.rename,
                RenameReq(
                    src=f"{d}/f", dst=f"{d}/g", request_id=next(request_ids), **ident
                ),
            )
            n += 1
        assert kill_task is not None
        await kill_task
        assert current == 1, "the victim was never killed mid-loop"
        assert not victim.running()

        m2 = clients[1]
        names, start = [], ""
        while True:
            page = await m2.list_dir(
                ListDirReq(path="/w", start_after=start, limit=100)
            )
            names += [e.name for e in page.entries]
            if not page.more:
                break
            start = names[-1]
        assert names == [f"d{i:04d}" for i in range(n)]
        for i in range(n):
            listing = await m2.list_dir(ListDirReq(path=f"/w/d{i:04d}"))
            assert [e.name for e in listing.entries] == ["g"]
            node = await m2.stat(PathReq(path=f"/w/d{i:04d}/g"))
            assert node.length == i
            assert node.nlink == 1
        fs = await m2.stat_fs(MetaReq())
        assert fs.files == n
        assert fs.directories == n + 2
    finally:
        for c in clients:
            await c.aclose()
