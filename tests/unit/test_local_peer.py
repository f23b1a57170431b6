"""py3fs.local_peer: a data server's Unix socket is trusted only when the
process holding it runs as the user listening on the server's TCP address."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from py3fs import dataplane, local_peer


def _table(*rows: tuple[str, str, int]) -> str:
    """A /proc/net/tcp{,6} text: a header, then (local address, state, uid)."""
    head = "  sl  local_address rem_address st tx_queue rx_queue tr tm->when uid\n"
    return head + "".join(
        f"{i}: {local} 0:0 {st} 0:0 00:0 0 {uid} 0 {i}\n"
        for i, (local, st, uid) in enumerate(rows)
    )


# 127.0.0.1:8080 listening as uid 1000, 0.0.0.0:9000 as 0, 127.0.0.1:7000
# connected (not listening) as uid 5; [::1]:8443 listening as uid 7, and
# ::ffff:10.0.0.5:6000 as uid 8.
TCP = _table(
    ("0100007F:1F90", "0A", 1000),
    ("00000000:2328", "0A", 0),
    ("0100007F:1B58", "01", 5),
)
V6_LOOPBACK = "00000000" * 3 + "01000000"
V6_MAPPED = "00000000" * 2 + "FFFF0000" + "0500000A"
TCP6 = _table((V6_LOOPBACK + ":20FB", "0A", 7), (V6_MAPPED + ":1770", "0A", 8))
TABLES = {"tcp": TCP, "tcp6": TCP6}


@pytest.mark.parametrize(
    ("host", "port", "uids"),
    [
        ("127.0.0.1", 8080, {1000}),
        ("127.0.0.2", 8080, set()),  # another address, same port
        ("192.168.1.9", 9000, {0}),  # a wildcard listener covers it
        ("127.0.0.1", 7000, set()),  # connected, not listening
        ("::1", 8443, {7}),
        ("[::1]", 8443, {7}),
        ("10.0.0.5", 6000, {8}),  # an IPv4-mapped listener
        ("storage-1", 8080, set()),  # a name, not an address
    ],
)
def test_listener_uids_read_the_tables(host: str, port: int, uids: set[int]) -> None:
    assert local_peer.listener_uids(host, port, TABLES) == uids


class _Squatter:
    """A child process (of `uid`, or ours) holding the abstract name `name`:
    forked, since another user may not be able to run our interpreter."""

    def __init__(self, name: bytes, uid: int | None) -> None:
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: bind, say so, wait to be told to go
            try:
                if uid is not None:
                    os.setgid(uid)
                    os.setuid(uid)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(name)
                s.listen(8)
                os.write(ready_w, b"1")
                os.read(self._stop_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        try:
            assert os.read(ready_r, 1) == b"1"
        finally:
            os.close(ready_r)

    def stop(self) -> None:
        os.write(self._stop_w, b"1")
        os.waitpid(self.pid, 0)
        os.close(self._stop_r)
        os.close(self._stop_w)


async def _local_conn(address: str) -> object:
    client = dataplane.DataClient(local=True)
    try:
        return await client._connect_local(address)
    finally:
        await client.aclose()


@pytest.mark.skipif(os.geteuid() != 0, reason="starts a process of another user")
def test_a_squatter_of_another_user_or_without_a_listener_is_not_used() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        for uid, trusted in [(65534, False), (None, True)]:
            squatter = _Squatter(dataplane.local_name(address), uid)
            try:
                conn = asyncio.run(_local_conn(address))
                assert (conn is not None) == trusted
                if conn is not None:
                    conn.close()  # type: ignore[attr-defined]
            finally:
                squatter.stop()
    finally:
        listener.close()
    # Nobody listens on the address any more: not even our own user's socket.
    squatter = _Squatter(dataplane.local_name(address), None)
    try:
        assert asyncio.run(_local_conn(address)) is None
    finally:
        squatter.stop()


def test_the_listening_user_is_read_once_per_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/proc/net/tcp costs milliseconds on a busy host: a client opening many
    connections to one node reads it once, and reads it again for a peer
    that the remembered users do not cover."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(dataplane.local_name(address))
    server.listen(8)
    reads: list[int] = []
    real = local_peer.listener_uids

    def counted(host: str, port: int) -> set[int]:
        reads.append(port)
        return real(host, port)

    monkeypatch.setattr(local_peer, "listener_uids", counted)

    async def connect_many(n: int) -> int:
        client = dataplane.DataClient(local=True)
        try:
            conns = await asyncio.gather(
                *(client._connect_local(address) for _ in range(n))
            )
            assert all(c is not None for c in conns)
            for c in conns:
                c.close()  # type: ignore[union-attr]
            # A peer the remembered users do not cover: read again.
            client._listeners[address] = (1e18, {os.geteuid() + 1})
            again = await client._connect_local(address)
            assert again is not None
            again.close()
            return len(reads)
        finally:
            await client.aclose()

    try:
        assert asyncio.run(connect_many(4)) == 2
    finally:
        server.close()
        listener.close()
