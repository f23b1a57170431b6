"""Storage inspection and mgmtd's admin RPCs only from holders of the cluster
secret (issue 11), against a real cluster.

Before: any local user could send QUERY_CHUNK, LIST_CHUNKS and TARGET_STATS
to storage (learning which inodes exist, their lengths and checksums) and
`Decommission` to mgmtd, which drained a storage node out of every chain.
Now each is refused with PermissionDenied unless signed with the cluster
secret (what services and the admin tools of `py3fs cluster up`'s user
hold), and a refused decommission changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from harness import client_for, running_cluster

from client import Client, ClientConfig
from py3fs import caps, errors, ids, wire
from py3fs.cluster import LocalCluster
from py3fs.dataplane import DataClient
from py3fs.mgmt_client import MgmtClient


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("svconly")) as c:
        yield c


@pytest.fixture
async def dc() -> AsyncIterator[DataClient]:
    client = DataClient()
    try:
        yield client
    finally:
        await client.aclose()


async def test_chunk_inspection_needs_the_cluster_secret(
    cluster: LocalCluster, dc: DataClient
) -> None:
    async with client_for(cluster) as root:
        await root.write_file("/inspected", b"i" * 4096)
        node = await root.stat("/inspected")
        view = await root.routing.get()
    assert node.layout is not None
    target = view.chain(node.layout.chains[0]).targets[-1]
    address = view.target_address(target)
    cid = ids.chunk_id(node.inode, 0)
    reqs: list[tuple[wire.MsgType, wire.Body]] = [
        (wire.MsgType.QUERY_CHUNK, wire.QueryChunkReq(target_id=target, chunk_id=cid)),
        (wire.MsgType.LIST_CHUNKS, wire.ListChunksReq(target_id=target)),
        (
            wire.MsgType.LIST_CHUNKS,
            wire.ListChunksReq(target_id=target, inode=node.inode),
        ),
        (wire.MsgType.TARGET_STATS, wire.TargetStatsReq()),
    ]
    wrong = caps.Keys(b"a guess")
    for mtype, body in reqs:
        for attempt in (body, wrong.sign(body)):
            with pytest.raises(errors.PermissionDenied):
                await dc.call(address, mtype, attempt)
    # Signed with the cluster's secret (a service, fsck): served.
    keys = caps.Keys.load(str(cluster.secret_file))
    assert keys is not None
    meta, _ = await dc.call(address, reqs[0][0], keys.sign(reqs[0][1]))
    assert isinstance(meta, wire.ChunkMeta)
    assert meta.length == 4096
    listed, _ = await dc.call(address, reqs[2][0], keys.sign(reqs[2][1]))
    assert isinstance(listed, wire.ListChunksReply)
    assert [c.chunk_id for c in listed.chunks] == [cid]
    stats, _ = await dc.call(address, reqs[3][0], keys.sign(reqs[3][1]))
    assert isinstance(stats, wire.TargetStatsReply)
    assert target in {t.target_id for t in stats.targets}


async def test_decommission_needs_the_cluster_secret(cluster: LocalCluster) -> None:
    async with client_for(cluster) as root:
        view = await root.routing.get()
    victim = min(n.node_id for n in view.nodes_of_role("storage"))
    for keys in (None, caps.Keys(b"a guess")):
        mgmt = MgmtClient(cluster.mgmt_addresses, keys=keys)
        try:
            with pytest.raises(errors.PermissionDenied):
                await mgmt.decommission(victim)
            with pytest.raises(errors.PermissionDenied):
                await mgmt.create_chain_table(1, table_id=7)
        finally:
            await mgmt.aclose()
    # A user's client holds no secret even when pointed at the file: it is
    # 0600, so only the cluster's owner (and services) can read it.
    reader = Client(
        ClientConfig(mgmt=cluster.mgmt_addresses, secret_file="/nonexistent")
    )
    try:
        with pytest.raises(errors.PermissionDenied):
            await reader.mgmt.decommission(victim)
    finally:
        await reader.aclose()
    async with client_for(cluster) as root:
        after = await root.routing.refresh()
    assert not after.nodes[victim].decommissioned
    assert after.chains == view.chains
    assert 7 not in after.tables
