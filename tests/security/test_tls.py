"""Optional TLS (issue 11), on a real cluster started with `tls=True`
(`py3fs cluster up --tls`).

Before there was no TLS anywhere. Now, with the switch on, mgmtd's gRPC,
meta's msgrpc and the data plane (client to storage, storage to storage along
the chain) speak only TLS with the cluster's certificate: a client given the
CA (the cluster file's `tls_dir`) works as usual, a plain-text client is
refused, a client that trusts another CA refuses the servers, and a storage
node refuses a client certificate from another CA.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_tools import (
    all_serving,
    check_replicas,
    fault_cluster,
    fresh_routing,
    node_down,
    resync_log,
    storage_proc,
    wait_routing,
)
from harness import client_for, running_cluster

from py3fs import errors, tls, wire
from py3fs.cluster import LocalCluster
from py3fs.dataplane import DataClient
from py3fs.mgmt_client import MgmtClient
from py3fs.msgrpc import MsgClient
from py3fs.proto.messages import MetaReq
from py3fs.proto.services import MetaService


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("tls"), tls=True) as c:
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    # This process is a client: no TLS from the environment unless a test
    # gives it the cluster's CA explicitly.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(tls.TLS_ENV, raising=False)
        yield mp


def host_port(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def test_client_with_the_ca_works(cluster: LocalCluster) -> None:
    assert f'tls_dir = "{cluster.tls_dir}"' in cluster.cluster_file.read_text()
    async with client_for(cluster) as fs:
        await fs.write_file("/over-tls", b"t" * 100_000)
        assert await fs.read_file("/over-tls") == b"t" * 100_000
        assert (await fs.whoami()).uid == 0


async def test_plain_text_clients_refused(cluster: LocalCluster) -> None:
    meta = MsgClient(cluster.metas[0].address, MetaService, default_timeout=10)
    try:
        with pytest.raises((errors.RPCUnavailable, errors.RPCTimeout)):
            await meta.call(MetaService.whoami, MetaReq())
    finally:
        await meta.aclose()
    mgmt = MgmtClient(cluster.mgmt_addresses, timeout=5)
    try:
        with pytest.raises((errors.RPCUnavailable, errors.RPCTimeout)):
            await mgmt.routing()
    finally:
        await mgmt.aclose()


def test_servers_present_the_clusters_certificate(cluster: LocalCluster) -> None:
    files = tls.Tls.load(str(cluster.tls_dir))
    assert files is not None
    data = [p.address for p in cluster.storages]
    assert len(data) == 3
    for address in [cluster.metas[0].address, *cluster.mgmt_addresses, *data]:
        host, port = host_port(address)
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            files.client_context().wrap_socket(raw, server_hostname=host) as s,
        ):
            assert s.version() in ("TLSv1.2", "TLSv1.3")
        # A client that trusts another CA refuses the server.
        other = ssl.create_default_context()
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            other.wrap_socket(raw, server_hostname=host)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> tls.Tls:
    """Certificates from a CA the cluster does not know."""
    directory = tmp_path_factory.mktemp("other-ca")
    tls.make_local(directory)
    files = tls.Tls.load(str(directory))
    assert files is not None
    return files


async def test_data_plane_writes_replicate_over_tls(cluster: LocalCluster) -> None:
    """A client's writes reach storage over TLS and go along each 3-replica
    chain over TLS: every replica holds the same committed chunks."""
    data = bytes(range(256)) * (9 * 4096 + 7)  # 3 chunks of 4 MiB, the last short
    async with client_for(cluster) as fs:
        await fs.write_file("/chain-over-tls", data)
        assert await fs.read_file("/chain-over-tls") == data
        inode = (await fs.stat("/chain-over-tls")).inode
        view = await fs.mgmt.routing()
        found = 0
        for chain in view.chains.values():
            assert len(chain.targets) == 3
            lists = []
            for target in chain.targets:
                body, _ = await fs.storage.call(
                    view.target_address(target),
                    wire.MsgType.LIST_CHUNKS,
                    wire.ListChunksReq(target_id=target, inode=inode),
                )
                assert isinstance(body, wire.ListChunksReply)
                lists.append(body.chunks)
            assert all(lst == lists[0] for lst in lists), lists
            found += len(lists[0])
        assert found == 3


async def test_plain_text_data_client_refused(cluster: LocalCluster) -> None:
    address = cluster.storages[0].address
    plain = DataClient()
    try:
        # Refused with a reason, at once (not retryable), payload or not.
        with pytest.raises(errors.PermissionDenied, match="only TLS"):
            await plain.call(
                address, wire.MsgType.TARGET_STATS, wire.TargetStatsReq(), timeout=30
            )
        with pytest.raises(errors.PermissionDenied, match="only TLS"):
            await plain.call(
                address,
                wire.MsgType.PING,
                wire.Ping(),
                [b"x" * (1 << 20)],
                timeout=30,
            )
    finally:
        await plain.aclose()
    # The node keeps serving TLS clients, and logged the refusal (one line per
    # connection).
    async with client_for(cluster) as fs:
        await fs.write_file("/after-plain", b"p" * 300_000)
        assert await fs.read_file("/after-plain") == b"p" * 300_000
    log = cluster.storages[0].log_file.read_text()
    assert "plain text, TLS is on" in log
    assert "Traceback" not in log


async def test_data_client_refuses_a_server_from_another_ca(
    cluster: LocalCluster, other_ca: tls.Tls
) -> None:
    address = cluster.storages[1].address
    client = DataClient(tls=other_ca)
    try:
        with pytest.raises(errors.PermissionDenied, match="certificate"):
            await client.call(
                address, wire.MsgType.TARGET_STATS, wire.TargetStatsReq(), timeout=30
            )
    finally:
        await client.aclose()


def test_storage_refuses_a_client_certificate_from_another_ca(
    cluster: LocalCluster, other_ca: tls.Tls
) -> None:
    files = tls.Tls.load(str(cluster.tls_dir))
    assert files is not None
    host, port = host_port(cluster.storages[2].address)
    ctx = files.client_context()  # trusts the cluster's CA...
    # ...but shows a certificate the cluster's CA did not sign.
    ctx.load_cert_chain(
        f"{other_ca.directory}/{tls.CERT}", f"{other_ca.directory}/{tls.KEY}"
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ping_over(ctx, host, port)


def ping_over(ctx: ssl.SSLContext, host: str, port: int) -> None:
    """Send a PING over TLS with `ctx`; raises when refused (any time: TLS
    1.3's client side of the handshake ends before the server has checked the
    client's certificate, so a refusal may come with the first read)."""
    ping = wire.encode_frame(wire.MsgType.PING, 1, wire.Ping())
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        s.sendall(ping)
        got = s.recv(wire.HEADER_SIZE)
    if not got:
        raise ConnectionResetError("closed without an alert")
    raise AssertionError(f"answered: {got!r}")


async def test_resync_over_tls(
    tmp_path: Path, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    """A node that was down catches up from its chain peers over TLS."""
    with fault_cluster(tmp_path, targets=1, tls=True) as cluster:
        fs = client_for(cluster)
        try:
            before = os.urandom(1 << 20)
            await fs.write_file("/before.bin", before)
            view = await fresh_routing(fs)
            (chain,) = view.chains.values()
            victim = chain.targets[-1]
            proc = storage_proc(cluster, view.targets[victim].node_id)
            proc.kill()
            await wait_routing(fs, node_down(proc.node_id), timeout=30)
            during = os.urandom(3 << 20)
            await fs.write_file("/during.bin", during)
            await asyncio.to_thread(cluster.restart, proc)
            await wait_routing(fs, all_serving, timeout=120)
            assert victim in {t for t, *_ in resync_log(cluster)}
            assert await check_replicas(fs) > 0
            assert await fs.read_file("/during.bin") == during
            assert await fs.read_file("/before.bin") == before
            # Every hop spoke TLS: a plain-text one would have been refused.
            for p in cluster.storages:
                assert "plain text, TLS is on" not in p.log_file.read_text()
        finally:
            await fs.aclose()
