"""A real mgmtd process: registration, chain tables, heartbeat expiry, and routing
that survives kill -9."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from py3fs import errors
from py3fs.mgmt_client import MgmtClient
from py3fs.procs import ServiceProc
from py3fs.proto.messages import (
    HeartbeatReq,
    LocalState,
    RegisterNodeReq,
    TargetReport,
    TargetState,
)
from py3fs.routing import RoutingView

REPO = Path(__file__).resolve().parents[2]
NODES = (1, 2, 3)
HEARTBEAT_TIMEOUT = 1.0  # s, passed to mgmtd
HEARTBEAT_EVERY = 0.2  # s


def targets_of(node_id: int) -> list[int]:
    return [node_id * 100 + i for i in range(1, 5)]


def mgmtd_proc(tmp_path: Path) -> ServiceProc:
    return ServiceProc(
        role="mgmtd",
        node_id=1,
        module="mgmt_service",
        args=[
            "--kv",
            f"sqlite:///{tmp_path}/kv.db",
            "--heartbeat-timeout",
            f"{HEARTBEAT_TIMEOUT}s",
        ],
        run_dir=tmp_path,
        # The child must import the repo's packages wherever pytest runs from.
        env={
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        },
    )


@pytest.fixture
def mgmtd(tmp_path: Path) -> Iterator[ServiceProc]:
    proc = mgmtd_proc(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@asynccontextmanager
async def client_of(proc: ServiceProc) -> AsyncIterator[MgmtClient]:
    client = MgmtClient([proc.address], timeout=5.0)
    try:
        yield client
    finally:
        await client.aclose()


class FakeStorage:
    """Heartbeats for fake storage nodes, which a test can silence one by one."""

    def __init__(self, client: MgmtClient) -> None:
        self.client = client
        self.silent: set[int] = set()
        # Nodes whose targets report "online" (resync pending) instead of
        # "uptodate", as a real storage node does until its resync is done.
        self.recovering: set[int] = set()

    async def register(self) -> RoutingView:
        view = None
        for n in NODES:
            view = await self.client.register(
                RegisterNodeReq(
                    node_id=n,
                    role="storage",
                    address=f"127.0.0.1:{n}",
                    targets=targets_of(n),
                    pid=1000 + n,
                )
            )
        assert view is not None
        return view

    async def beat(self, node_id: int) -> int:
        reply = await self.client.heartbeat(
            HeartbeatReq(
                node_id=node_id,
                role="storage",
                address=f"127.0.0.1:{node_id}",
                targets=[
                    TargetReport(
                        target_id=t,
                        used_bytes=node_id,
                        total_bytes=1 << 30,
                        local_state=LocalState.ONLINE
                        if node_id in self.recovering
                        else LocalState.UPTODATE,
                    )
                    for t in targets_of(node_id)
                ],
                pid=1000 + node_id,
            )
        )
        return reply.routing_version

    async def run(self) -> None:
        while True:
            for n in NODES:
                if n not in self.silent:
                    await self.beat(n)
            await asyncio.sleep(HEARTBEAT_EVERY)


@asynccontextmanager
async def heartbeating(client: MgmtClient) -> AsyncIterator[FakeStorage]:
    storage = FakeStorage(client)
    await storage.register()
    task = asyncio.create_task(storage.run())
    try:
        yield storage
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def wait_for(
    client: MgmtClient, predicate: Callable[[RoutingView], bool], timeout: float
) -> RoutingView:
    async with asyncio.timeout(timeout):
        while True:
            view = await client.routing()
            if predicate(view):
                return view
            await asyncio.sleep(0.05)


def check_table(view: RoutingView) -> None:
    table = view.table(1)
    assert len(table.chains) == 4
    used = []
    for chain_id in table.chains:
        chain = view.chain(chain_id)
        assert len(chain.targets) == 3
        assert len({view.targets[t].node_id for t in chain.targets}) == 3
        used += chain.targets
    assert sorted(used) == sorted(t for n in NODES for t in targets_of(n))


async def test_register_and_chain_table(mgmtd: ServiceProc) -> None:
    async with client_of(mgmtd) as client, heartbeating(client) as storage:
        view = await client.routing()
        assert sorted(view.nodes) == list(NODES)
        assert len(view.targets) == 12
        with pytest.raises(errors.NoChainTable):
            view.table(1)

        with pytest.raises(errors.InvalidArgument):
            await client.create_chain_table(replicas=4)

        view = await client.create_chain_table(replicas=3)
        check_table(view)
        again = await client.create_chain_table(replicas=3)
        assert again.version == view.version
        assert again.info.chains == view.info.chains
        assert again.info.tables == view.info.tables

        # Heartbeats carry stats, which routing shows without a version bump.
        assert await storage.beat(2) == view.version
        view = await client.routing()
        assert view.targets[201].used_bytes == 2
        assert view.targets[201].total_bytes == 1 << 30


async def test_silent_node_goes_down_and_returns(mgmtd: ServiceProc) -> None:
    async with client_of(mgmtd) as client, heartbeating(client) as storage:
        check_table(await client.create_chain_table(replicas=3))
        before = await client.routing()

        storage.silent.add(2)
        view = await wait_for(client, lambda v: not v.nodes[2].up, timeout=3.0)
        assert view.version > before.version
        for target in view.targets.values():
            expected = (
                TargetState.OFFLINE if target.node_id == 2 else TargetState.SERVING
            )
            assert target.state == expected
        assert all(n.up for n in view.nodes.values() if n.node_id != 2)
        for chain_id in view.table(1).chains:
            assert view.chain(chain_id).version > before.chain(chain_id).version
            assert len(view.writable_targets(chain_id)) == 2

        # Back: its targets sync (writable, not readable) until it reports them
        # up to date, then serve.
        storage.recovering.add(2)
        storage.silent.clear()

        def syncing(v: RoutingView) -> bool:
            mine = [t.state for t in v.targets.values() if t.node_id == 2]
            return v.nodes[2].up and set(mine) == {TargetState.SYNCING}

        view = await wait_for(client, syncing, timeout=3.0)
        for chain_id in view.table(1).chains:
            assert len(view.writable_targets(chain_id)) == 3
            assert len(view.serving_targets(chain_id)) == 2
        storage.recovering.clear()
        view = await wait_for(
            client,
            lambda v: all(t.state == TargetState.SERVING for t in v.targets.values()),
            timeout=3.0,
        )


async def test_routing_survives_kill_9(tmp_path: Path, mgmtd: ServiceProc) -> None:
    async with client_of(mgmtd) as client, heartbeating(client):
        before = await client.create_chain_table(replicas=3)
        check_table(before)

    mgmtd.kill()  # SIGKILL, no graceful shutdown
    await asyncio.to_thread(mgmtd.start)

    async with client_of(mgmtd) as client:
        after = await client.routing()
        assert after.version >= before.version
        assert after.info.chains == before.info.chains
        assert after.info.tables == before.info.tables
        assert sorted(after.nodes) == list(NODES)
        # The nodes still count as up: the new mgmtd gives them a full timeout.
        async with heartbeating(client):
            again = await client.create_chain_table(replicas=3)
            assert again.info.tables == before.info.tables
            await asyncio.sleep(HEARTBEAT_TIMEOUT * 1.5)
            view = await client.routing()
            assert all(n.up for n in view.nodes.values())
