"""Meta's RPC server is bounded like storage's (issue 11), on a real cluster.

Before: meta's msgrpc server accepted any number of connections, kept idle
ones forever, and read any body up to 64 MiB that a header announced before
looking at anything. Now a connection past the cap is closed at once, an
idle one after the idle timeout, and a header announcing more than the
request limit (4 MiB) is answered FrameTooLarge and its connection closed,
without reading the body.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import msgspec
import pytest
from harness import FAST, client_for, running_cluster

from py3fs import errors
from py3fs.cluster import LocalCluster
from py3fs.msgrpc import HEADER
from py3fs.proto.messages import MetaReq, WhoAmIReply
from py3fs.proto.services import MetaService

MAX_CONNECTIONS = 20
IDLE = 20.0  # seconds; far above how long refusing a connection takes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    meta = [
        *FAST["meta"],
        "--rpc-max-connections",
        str(MAX_CONNECTIONS),
        "--rpc-idle-timeout",
        f"{IDLE}s",
    ]
    extra = {**FAST, "meta": meta}
    with running_cluster(tmp_path_factory.mktemp("metabounded"), extra=extra) as c:
        yield c


def meta_address(cluster: LocalCluster) -> tuple[str, int]:
    host, port = cluster.metas[0].address.rsplit(":", 1)
    return host, int(port)


def recv_reply(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < HEADER.size:
        more = sock.recv(HEADER.size - len(head))
        assert more, "connection closed before a reply"
        head += more
    size, _, code = HEADER.unpack(head)
    body = b""
    while len(body) < size:
        more = sock.recv(size - len(body))
        assert more
        body += more
    return code, body


def whoami_frame(token: str) -> bytes:
    body = msgspec.msgpack.encode(MetaReq(token=token))
    return HEADER.pack(len(body), 1, MetaService.whoami.number) + body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` (EOF) within `seconds`."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


async def test_oversized_request_refused_from_its_header(
    cluster: LocalCluster,
) -> None:
    with socket.create_connection(meta_address(cluster)) as sock:
        # Announce 8 MiB and send none of it: answered at once, then closed.
        sock.sendall(HEADER.pack(8 << 20, 5, MetaService.stat.number))
        sock.settimeout(20)
        code, body = recv_reply(sock)
        assert code == errors.FrameTooLarge.code
        assert b"limit" in body
        assert closed_within(sock, 20)
    async with client_for(cluster) as fs:
        assert (await fs.stat("/")).inode


async def test_idle_connection_closed(cluster: LocalCluster) -> None:
    token = cluster.admin_token_file.read_text().strip()
    with socket.create_connection(meta_address(cluster)) as sock:
        # A connection in use is served ...
        sock.sendall(whoami_frame(token))
        sock.settimeout(20)
        code, body = recv_reply(sock)
        assert code == 0
        assert msgspec.msgpack.decode(body, type=WhoAmIReply).uid == 0
        # ... and closed once it has been idle for the idle timeout.
        start = time.monotonic()
        assert closed_within(sock, IDLE + 30)
        assert time.monotonic() - start > IDLE / 2


async def test_connections_past_the_cap_refused(cluster: LocalCluster) -> None:
    token = cluster.admin_token_file.read_text().strip()
    socks = [
        socket.create_connection(meta_address(cluster))
        for _ in range(MAX_CONNECTIONS + 10)
    ]
    try:
        # Refused connections see EOF at once; accepted ones stay open (the
        # idle timeout is far longer than this wait).
        deadline = time.monotonic() + IDLE / 2
        refused: set[socket.socket] = set()
        quiet = 0
        while time.monotonic() < deadline and (len(refused) < 10 or quiet < 3):
            ready, _, _ = select.select(
                [s for s in socks if s not in refused], [], [], 0.2
            )
            quiet = 0 if ready else quiet + 1
            for s in ready:
                assert s.recv(1) == b""
                refused.add(s)
        # At least the 10 past the cap (more if other clients hold some).
        assert 10 <= len(refused) < len(socks)
        accepted = next(s for s in socks if s not in refused)
        accepted.sendall(whoami_frame(token))
        accepted.settimeout(20)
        assert recv_reply(accepted)[0] == 0
    finally:
        for s in socks:
            s.close()
    # Once they are gone, clients are served again (retrying meanwhile).
    async with client_for(cluster) as fs:
        assert (await fs.stat("/")).inode
