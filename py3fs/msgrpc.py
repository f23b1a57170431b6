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
Requests pipeline: a connection carries any number in flight, the server runs
each in a task of its own and replies in completion order, matched by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec

from py3fs import errors, metrics
from py3fs.proto.messages import Msg
from py3fs.proto.services import Rpc, Service

logger = logging.getLogger(__name__)

HEADER: Final = struct.Struct("<IQI")
MAX_BODY: Final = 64 * 1024 * 1024
OK: Final = 0
A = TypeVar("A", bound=Msg)

_encoder = msgspec.msgpack.Encoder()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


Handler = Callable[[Any], Awaitable[Msg]]


class MsgServer:
    """Serves `table` with `impl.<rpc.name>(req)` for every RPC of the table."""

    def __init__(self, table: type[Service], impl: object) -> None:
        self._table = table
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
        self._server = await asyncio.start_server(self._serve_conn, host, port)
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
        self._writers.add(writer)
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    try:
                        head = await reader.readexactly(HEADER.size)
                        size, rid, number = HEADER.unpack(head)
                        if size > MAX_BODY:
                            logger.warning("frame of %d bytes: closing", size)
                            break
                        body = await reader.readexactly(size) if size else b""
                    except (asyncio.IncompleteReadError, ConnectionError):
                        break
                    tg.create_task(self._handle(writer, rid, number, body))
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(
        self, writer: asyncio.StreamWriter, rid: int, number: int, body: bytes
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
        metrics.record(title, outcome, time.perf_counter() - start)
        if not writer.is_closing():
            writer.write(HEADER.pack(len(out), rid, code) + out)


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
    ) -> None:
        self.address = address
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
                    reader, writer = await asyncio.open_connection(host, port)
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
        try:
            writer.write(HEADER.pack(len(body), rid, rpc.number) + body)
            async with asyncio.timeout(timeout or self._timeout):
                code, out = await fut
        except TimeoutError:
            raise errors.RPCTimeout(
                f"{rpc.title} to {self.address} timed out"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise errors.RPCUnavailable(
                f"{rpc.title} to {self.address}: {exc}"
            ) from None
        finally:
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
