"""mgmtd only trusts cluster services, and bounds what one node may report
(issue 11), against a real cluster.

On the code before node secrets, an unsigned heartbeat from anyone reporting
100,000 targets was stored (routing grew with every target, persisted), and
an unsigned register or chain-table request was applied; now each is refused
and routing keeps its size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from harness import client_for, running_cluster

from py3fs import caps, errors
from py3fs.cluster import LocalCluster
from py3fs.mgmt_client import MgmtClient
from py3fs.proto.messages import HeartbeatReq, RegisterNodeReq, TargetReport


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("mgmt")) as c:
        yield c


@pytest.fixture
async def anon(cluster: LocalCluster) -> AsyncIterator[MgmtClient]:
    client = MgmtClient(cluster.mgmt_addresses)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def signed(cluster: LocalCluster) -> AsyncIterator[MgmtClient]:
    """A node holding the secret (a buggy or compromised service)."""
    client = MgmtClient(
        cluster.mgmt_addresses, keys=caps.Keys.load(str(cluster.secret_file))
    )
    try:
        yield client
    finally:
        await client.aclose()


def flood(node_id: int, n: int) -> HeartbeatReq:
    return HeartbeatReq(
        node_id=node_id,
        role="storage",
        address="127.0.0.1:1",
        targets=[TargetReport(target_id=node_id * 1_000_000 + i) for i in range(n)],
    )


async def assert_cluster_works(cluster: LocalCluster, targets_before: int) -> None:
    async with client_for(cluster) as fs:
        view = await fs.routing.refresh()
        assert len(view.targets) == targets_before
        await fs.write_file("/still-works", b"ok")
        assert await fs.read_file("/still-works") == b"ok"


async def test_unsigned_heartbeat_register_and_table_refused(
    cluster: LocalCluster, anon: MgmtClient
) -> None:
    before = len((await anon.routing()).targets)
    with pytest.raises(errors.PermissionDenied):
        await anon.heartbeat(flood(77, 100_000))
    with pytest.raises(errors.PermissionDenied):
        await anon.register(
            RegisterNodeReq(node_id=78, role="storage", address="x:1", targets=[1])
        )
    # A real node's id, with a forged signature.
    real = cluster.storages[0].node_id
    with pytest.raises(errors.PermissionDenied):
        await anon.heartbeat(
            HeartbeatReq(node_id=real, role="storage", address="x:1", auth=b"0" * 16)
        )
    with pytest.raises(errors.PermissionDenied):
        await anon.create_chain_table(1, table_id=9)
    await assert_cluster_works(cluster, before)


async def test_signed_reports_are_bounded(
    cluster: LocalCluster, signed: MgmtClient
) -> None:
    before = len((await signed.routing()).targets)
    with pytest.raises(errors.InvalidArgument, match="at most"):
        await signed.heartbeat(flood(79, 100_000))
    # A live node's targets cannot be taken over by another node id.
    view = await signed.routing()
    victim = next(iter(view.targets.values()))
    with pytest.raises(errors.InvalidArgument, match="belongs to live node"):
        await signed.register(
            RegisterNodeReq(
                node_id=80,
                role="storage",
                address="x:1",
                targets=[victim.target_id],
            )
        )
    await assert_cluster_works(cluster, before)


async def test_targets_that_are_gone_are_pruned(signed: MgmtClient) -> None:
    reg = RegisterNodeReq(
        node_id=90, role="storage", address="127.0.0.1:9", targets=[9001, 9002]
    )
    view = await signed.register(reg)
    assert {9001, 9002} <= set(view.targets)
    view = await signed.register(
        RegisterNodeReq(
            node_id=90, role="storage", address="127.0.0.1:9", targets=[9001]
        )
    )
    assert 9001 in view.targets
    assert 9002 not in view.targets
