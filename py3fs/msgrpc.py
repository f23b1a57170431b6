"""The fast control-plane transport: msgspec frames over asyncio streams.

Meta's calls are small and many (a create is three of them), and through
grpc.aio one costs ~1.2 ms here against ~15 µs for a raw loopback round trip
(benchmarks/meta_rpc.py measures both in one run). So meta serves its service
table (`py3fs.proto.services`) over plain TCP frames instead; gRPC stays for
mgmtd and administration.

A frame is a little-endian header and a msgpack body:

    body length u32 | request id u64 | code u32

A request's code is the RPC's number in the table; a reply's is 0 with the
msgpack reply, or a `py3fs.errors` code with the UTF-8 message as its body.
Requests pipeline: a connection carries many in flight, the server runs each
in a task of its own and replies in completion order, matched by id.

The server is bounded like the data plane's (`py3fs.dataplane.DataServer`),
by `ServerLimits`: a connection cap, an idle timeout, a request size checked
from the header before any body byte is read (an oversized one is answered
FrameTooLarge and the connection closed), a budget for the bodies of all
connections together, a deadline to deliver an announced body, a per
connection cap on requests in flight (past it the server stops reading that
connection) and a deadline for the peer to take its replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

from py3fs import errors, metrics
from py3fs import tls as tls_mod
from py3fs.dataplane import PayloadBudget
from py3fs.proto.messages import Msg
from py3fs.proto.services import Rpc, Service

logger = logging.getLogger(__name__)

HEADER: Final = struct.Struct("<IQI")
# What a client accepts in a reply (a ListDir page of 10,000 stat'ed entries is
# a few MiB); requests are bounded by `ServerLimits.max_request`.
MAX_BODY: Final = 64 * 1024 * 1024
OK: Final = 0
A = TypeVar("A", bound=Msg)

_encoder = msgspec.msgpack.Encoder()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


Handler = Callable[[Any], Awaitable[Msg]]


@dataclass(frozen=True)
class ServerLimits:
    """What one peer, and all of them together, may hold of a server."""

    max_connections: int = 4096
    # A connection with no request in flight that sends nothing for this long
    # is closed (clients reconnect on their next call).
    idle_timeout: float = 600.0
    # The largest request body. Meta's requests are small: the biggest, a KV
    # cache batch of 1,024 keys, is well under 1 MiB.
    max_request: int = 4 * 1024 * 1024
    # Request bodies all connections may hold at once, in bytes.
    body_budget: int = 256 * 1024 * 1024
    # Seconds to deliver a body once its header arrived, and to take a reply.
    body_timeout: float = 30.0
    reply_timeout: float = 60.0
    # Requests in flight per connection; past it the server reads no more
    # from that connection until one finishes (TCP pushes back on the peer).
    max_inflight: int = 256


_SMALL: Final = 64 * 1024
# Replies queued past this (asyncio's default high-water mark) wait for the
# peer to take them.
_DRAIN_ABOVE: Final = 64 * 1024


class _Conn:
    """Requests in flight on one server connection, and when it last made
    progress (a request read or answered)."""

    def __init__(self, max_inflight: int) -> None:
        self.slots = asyncio.Semaphore(max_inflight)
        self.inflight = 0
        self.last = time.monotonic()


class MsgServer:
    """Serves `table` with `impl.<rpc.name>(req)` for every RPC of the table,
    within `limits`."""

    def __init__(
        self,
        table: type[Service],
        impl: object,
        limits: ServerLimits | None = None,
        tls: tls_mod.Tls | None = None,
    ) -> None:
        self._table = table
        # TLS when given certificates, or $PY3FS_TLS_DIR names them.
        self._tls = tls or tls_mod.from_env()
        self._limits = limits or ServerLimits()
        self._budget = PayloadBudget(self._limits.body_budget)
        self._dispatch: dict[
            int, tuple[Rpc[Any, Any], msgspec.msgpack.Decoder[Any], Handler]
        ] = {
            rpc.number: (rpc, msgspec.msgpack.Decoder(rpc.req), getattr(impl, rpc.name))
            for rpc in table.rpcs()
        }
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.address = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        ctx = None if self._tls is None else self._tls.server_context()
        self._server = await asyncio.start_server(self._serve_conn, host, port, ssl=ctx)
        bound = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{bound}"
        return self.address

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            # Closing a connection ends its reader loop, which then waits for
            # the requests it started (their replies go nowhere).
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        limits = self._limits
        peer = writer.get_extra_info("peername")
        if len(self._writers) >= limits.max_connections:
            logger.warning("refusing %s: %d connections open", peer, len(self._writers))
            writer.close()
            return
        self._writers.add(writer)
        conn = _Conn(limits.max_inflight)
        try:
            async with asyncio.TaskGroup() as tg:
                watchdog = tg.create_task(self._close_when_idle(writer, conn, peer))
                try:
                    while True:
                        await conn.slots.acquire()
                        try:
                            got = await self._read_request(reader, writer, peer)
                        except (asyncio.IncompleteReadError, ConnectionError):
                            got = None
                        if got is None:
                            conn.slots.release()
                            break
                        conn.inflight += 1
                        conn.last = time.monotonic()
                        tg.create_task(self._handle(writer, conn, *got))
                finally:
                    watchdog.cancel()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _close_when_idle(
        self, writer: asyncio.StreamWriter, conn: _Conn, peer: object
    ) -> None:
        """Close the connection once it has had nothing in flight and
        delivered no whole request for the idle timeout (a stalled partial
        request included). One timer per connection, not one per request:
        a meta call costs tens of µs."""
        idle = self._limits.idle_timeout
        while True:
            await asyncio.sleep(idle / 4)
            if not conn.inflight and time.monotonic() - conn.last >= idle:
                logger.info("closing %s: idle for %.0f s", peer, idle)
                writer.close()
                return

    async def _read_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: object,
    ) -> tuple[int, int, bytes, int] | None:
        """The next request (id, number, body, bytes taken from the body
        budget); None when the connection is to be closed."""
        limits = self._limits
        head = await reader.readexactly(HEADER.size)
        size, rid, number = HEADER.unpack(head)
        if size > limits.max_request:
            # Refused from the header: nothing of the body is read or held.
            logger.warning(
                "closing %s: request of %d bytes (limit %d)",
                peer,
                size,
                limits.max_request,
            )
            exc = errors.FrameTooLarge(
                f"request of {size} bytes; the limit is {limits.max_request}"
            )
            out = exc.message.encode()
            writer.write(HEADER.pack(len(out), rid, exc.code) + out)
            return None
        if size <= _SMALL:
            # Nearly every request: no budget to wait for (a peer announcing
            # big bodies and stalling must not stall everyone else) and no
            # deadline of its own (the idle watchdog ends a stalled one).
            data = await reader.readexactly(size) if size else b""
            return rid, number, data, 0
        taken = size
        await self._budget.take(taken)
        try:
            async with asyncio.timeout(limits.body_timeout):
                data = await reader.readexactly(size)
        except TimeoutError:
            logger.warning("closing %s: %d-byte body not delivered", peer, size)
            await self._budget.give(taken)
            return None
        except BaseException:
            await self._budget.give(taken)
            raise
        return rid, number, data, taken

    async def _handle(
        self,
        writer: asyncio.StreamWriter,
        conn: _Conn,
        rid: int,
        number: int,
        body: bytes,
        size: int,
    ) -> None:
        try:
            await self._answer(writer, rid, number, body, size)
        finally:
            conn.inflight -= 1
            conn.last = time.monotonic()
            conn.slots.release()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        rid: int,
        number: int,
        body: bytes,
        size: int,
    ) -> None:
        title = str(number)
        start = time.perf_counter()
        outcome = "ok"
        try:
            entry = self._dispatch.get(number)
            if entry is None:
                raise errors.UnknownMessage(
                    f"{self._table.service_name}: no RPC number {number}"
                )
            rpc, decoder, handler = entry
            title = rpc.title
            try:
                req = decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise errors.BadFrame(
                    f"{title}: cannot decode request: {exc}"
                ) from None
            finally:
                if size:
                    await self._budget.give(size)
                size = 0
            out = _encoder.encode(await handler(req))
            code = OK
        except errors.Py3fsError as exc:
            outcome = type(exc).__name__
            if not isinstance(exc, errors.MetaError):
                logger.info("%s failed: %s", title, exc)
            code, out = exc.code, exc.message.encode()
        except Exception as exc:
            outcome = "internal"
            logger.exception("%s: unexpected error", title)
            code, out = errors.Py3fsError.code, f"internal: {exc}".encode()
        finally:
            if size:
                await self._budget.give(size)
        metrics.record(title, outcome, time.perf_counter() - start)
        if writer.is_closing():
            return
        writer.write(HEADER.pack(len(out), rid, code) + out)
        if writer.transport.get_write_buffer_size() <= _DRAIN_ABOVE:
            return  # sent, or nearly: no need to wait (nor to arm a timer)
        try:
            # A peer that does not read its replies holds at most
            # `max_inflight` of them here, then loses the connection.
            async with asyncio.timeout(self._limits.reply_timeout):
                await writer.drain()
        except TimeoutError:
            logger.warning("closing a connection whose peer takes no replies")
            writer.close()
        except ConnectionError:
            writer.close()


class _Expired(Exception):
    """A reply that did not come within the call's timeout."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class MsgClient:
    """Calls to one server over one pipelined connection (re-opened after a
    failure). Safe for concurrent use."""

    def __init__(
        self,
        address: str,
        table: type[Service],
        *,
        default_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        tls: tls_mod.Tls | None = None,
    ) -> None:
        self.address = address
        tls = tls or tls_mod.from_env()
        self._ssl = None if tls is None else tls.client_context()
        self._decoders = {
            rpc.number: msgspec.msgpack.Decoder(rpc.reply) for rpc in table.rpcs()
        }
        self._timeout = default_timeout
        self._connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self._closed:
                raise errors.RPCUnavailable("client closed")
            host, port = _split_address(self.address)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=self._ssl,
                        server_hostname=host if self._ssl else None,
                    )
            except (OSError, TimeoutError) as exc:
                raise errors.RPCUnavailable(
                    f"cannot connect to {self.address}: {exc}"
                ) from None
            self._writer = writer
            # The reader belongs to this connection: aclose or a broken
            # connection ends it.
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read_replies(reader, writer)
            )
            return writer

    async def _read_replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reason = "connection closed"
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                size, rid, code = HEADER.unpack(head)
                body = await reader.readexactly(size) if size else b""
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result((code, body))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc!r}"
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for rid, fut in list(self._pending.items()):
                if not fut.done():
                    fut.set_exception(
                        errors.RPCUnavailable(f"{self.address}: {reason}")
                    )
                self._pending.pop(rid, None)

    async def call(self, rpc: Rpc[Any, A], req: Msg, timeout: float | None = None) -> A:
        """Call `rpc`; returns its reply or raises the py3fs error it reported.
        Transport failures raise RPCUnavailable / RPCTimeout (both retryable)."""
        writer = await self._connection()
        rid = next(self._ids)
        fut: asyncio.Future[tuple[int, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[rid] = fut
        if writer.is_closing():
            # The reader ended (and failed what was pending) since we got the
            # writer: nothing would ever answer this request.
            self._pending.pop(rid, None)
            raise errors.RPCUnavailable(
                f"{rpc.title} to {self.address}: connection lost"
            )
        body = _encoder.encode(req)
        # A timer handle that fails the reply's future rather than
        # asyncio.timeout(), which also tracks and uncancels this task: every
        # meta call pays for it, and only the wait for the reply needs bounding.
        timer = asyncio.get_running_loop().call_later(
            timeout or self._timeout, _expire, fut
        )
        try:
            writer.write(HEADER.pack(len(body), rid, rpc.number) + body)
            code, out = await fut
        except _Expired:
            raise errors.RPCTimeout(
                f"{rpc.title} to {self.address} timed out"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise errors.RPCUnavailable(
                f"{rpc.title} to {self.address}: {exc}"
            ) from None
        finally:
            timer.cancel()
            self._pending.pop(rid, None)
        if code != OK:
            raise errors.error_from_code(code, out.decode(errors="replace"))
        result: A = self._decoders[rpc.number].decode(out)
        return result

    async def aclose(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
            self._reader_task = None


class Stub:
    """A typed stub for one server: `class MetaStub(Stub, MetaService)` gives
    `await MetaStub(address).mkdir(req)`, with no retries or failover."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        table = type(self)
        assert issubclass(table, Service)
        self._client = MsgClient(address, table, default_timeout=timeout)

    async def _invoke(self, rpc: Rpc[Any, A], req: Msg) -> A:
        return await self._client.call(rpc, req)

    async def aclose(self) -> None:
        await self._client.aclose()
