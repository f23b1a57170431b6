"""The data plane over TLS (py3fs.tls_sock under py3fs.dataplane), in one
process: frames and payloads of every size arrive intact both ways, pooled
connections are reused and replaced when the server closed them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from py3fs import errors, tls, wire
from py3fs.dataplane import DataClient, DataServer, ServerConn


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tls.Tls:
    directory = Path(tmp_path_factory.mktemp("tls"))
    tls.make_local(directory)
    files = tls.Tls.load(str(directory))
    assert files is not None
    return files


@pytest.fixture(autouse=True)
def no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the certificates a test passes count.
    monkeypatch.delenv(tls.TLS_ENV, raising=False)


async def echo(frame: wire.Frame, conn: ServerConn) -> None:
    """PING answered with PONG carrying the request's payload back."""
    payload = await conn.read_payload() if conn.payload_pending else memoryview(b"")
    await conn.reply(wire.MsgType.PONG, wire.Ping(), [bytes(payload)])


@pytest.mark.parametrize("size", [0, 1, 16383, 16385, 65537, (5 << 20) + 3])
async def test_payloads_round_trip(certs: tls.Tls, size: int) -> None:
    data = bytes(range(251)) * (size // 251) + bytes(size % 251)
    async with DataServer(echo, tls=certs) as srv:
        client = DataClient(tls=certs)
        try:
            for _ in range(3):  # the same pooled connection each time
                _, got = await client.call(
                    srv.address, wire.MsgType.PING, wire.Ping(), [data]
                )
                assert bytes(got or b"") == data
            # Into the caller's buffer (a read's sink).
            into = bytearray(size)
            _, got = await client.call(
                srv.address,
                wire.MsgType.PING,
                wire.Ping(),
                [data],
                sink=lambda frame: [memoryview(into)[: frame.payload_len]],
            )
            assert got is None
            assert into == data
        finally:
            await client.aclose()


async def test_concurrent_calls_share_the_pool(certs: tls.Tls) -> None:
    async with DataServer(echo, tls=certs) as srv:
        client = DataClient(tls=certs)
        try:

            async def one(i: int) -> bytes:
                _, got = await client.call(
                    srv.address, wire.MsgType.PING, wire.Ping(), [bytes([i]) * 70_000]
                )
                return bytes(got or b"")

            results = await asyncio.gather(*(one(i) for i in range(40)))
            assert results == [bytes([i]) * 70_000 for i in range(40)]
        finally:
            await client.aclose()


async def test_connection_closed_by_server_is_replaced(certs: tls.Tls) -> None:
    async with DataServer(echo, tls=certs, idle_timeout=0.2) as srv:
        client = DataClient(tls=certs)
        try:
            await client.call(srv.address, wire.MsgType.PING, wire.Ping())
            # The server drops the idle connection (polling: no timing assert).
            async with asyncio.timeout(30):
                while srv._tasks:
                    await asyncio.sleep(0.05)
            # The pool notices and connects anew instead of failing.
            _, got = await client.call(
                srv.address, wire.MsgType.PING, wire.Ping(), [b"again"]
            )
            assert got == b"again"
        finally:
            await client.aclose()


async def test_plain_and_tls_do_not_mix(certs: tls.Tls) -> None:
    async with DataServer(echo, tls=certs) as srv:
        plain = DataClient()
        try:
            # Every request is answered with the reason, on the same pooled
            # connection or a new one, payload or not.
            for payload in ([b"x"], [], [b"y" * (3 << 20)], []):
                with pytest.raises(errors.PermissionDenied, match="only TLS"):
                    await plain.call(
                        srv.address, wire.MsgType.PING, wire.Ping(), payload
                    )
        finally:
            await plain.aclose()
    async with DataServer(echo) as srv:
        client = DataClient(tls=certs)
        try:
            with pytest.raises(errors.RPCUnavailable, match="TLS handshake"):
                await client.call(srv.address, wire.MsgType.PING, wire.Ping())
        finally:
            await client.aclose()
