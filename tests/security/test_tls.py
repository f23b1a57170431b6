"""Optional TLS on the control plane (issue 11), on a real cluster started
with `tls=True` (`py3fs cluster up --tls`).

Before there was no TLS anywhere. Now, with the switch on, mgmtd's gRPC and
meta's msgrpc speak only TLS with the cluster's certificate: a client given
the CA (the cluster file's `tls_dir`) works as usual, a plain-text client is
refused, and a client that trusts another CA refuses the servers.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
from harness import client_for, running_cluster

from py3fs import errors, tls
from py3fs.cluster import LocalCluster
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
    for address in [cluster.metas[0].address, *cluster.mgmt_addresses]:
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
