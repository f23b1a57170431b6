"""gRPC glue for the control plane: servicers from handler tables, typed client calls.

A service is a `.proto` (methods only) plus a table in `py3fs.proto.messages` giving
each method's msgspec request and reply types. `make_servicer` builds the grpc.aio
servicer from an object with one `async def` per method; `RpcClient.call` encodes,
calls, decodes and turns error codes back into py3fs exceptions. gRPC's own failures
are translated here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
import msgspec

from py3fs import errors, metrics
from py3fs import tls as tls_mod
from py3fs.proto import envelope_pb2
from py3fs.proto.messages import Msg
from py3fs.proto.services import Rpc, Service

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Msg)

_encoder = msgspec.msgpack.Encoder()
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# gRPC sets SO_REUSEPORT by default: a second server on a taken port would then
# share it (two mgmtds answering on one address) instead of failing to start.
_SERVER_OPTIONS = [*_GRPC_OPTIONS, ("grpc.so_reuseport", 0)]


def _method(
    name: str, req_type: type[Msg], handler: Callable[[Any], Awaitable[Msg]]
) -> Callable[..., Awaitable[envelope_pb2.Reply]]:
    decoder = msgspec.msgpack.Decoder(req_type)

    async def method(self: object, request: Any, context: Any) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        try:
            try:
                req = decoder.decode(request.body)
            except msgspec.DecodeError as exc:
                raise errors.BadFrame(f"{name}: cannot decode request: {exc}") from None
            reply = await handler(req)
            return envelope_pb2.Reply(body=_encoder.encode(reply))
        except errors.Py3fsError as exc:
            outcome = type(exc).__name__
            if not isinstance(exc, errors.MetaError):
                logger.info("%s failed: %s", name, exc)
            return envelope_pb2.Reply(error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            outcome = "internal"
            logger.exception("%s: unexpected error", name)
            return envelope_pb2.Reply(
                error_code=errors.Py3fsError.code, error_message=f"internal: {exc}"
            )
        finally:
            metrics.record(name, outcome, time.perf_counter() - start)

    method.__name__ = name
    return method


def make_servicer(
    base: type, table: dict[str, tuple[type[Msg], type[Msg]]], impl: object
) -> object:
    """An instance of generated servicer class `base` whose methods call
    `impl.<snake_name>(request)`; every method of `table` must exist on `impl`."""
    methods = {}
    for name, (req_type, _reply) in table.items():
        handler = getattr(impl, snake_name(name))
        methods[name] = _method(name, req_type, handler)
    return type(f"{base.__name__}Impl", (base,), methods)()


def snake_name(name: str) -> str:
    """The Python method name of an RPC: ListDir -> list_dir."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


async def start_server(
    add_to_server: Callable[[object, grpc.aio.Server], None],
    servicer: object,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: tls_mod.Tls | None = None,
) -> tuple[grpc.aio.Server, str]:
    """Start a gRPC server on host:port (0: any free port), with TLS when `tls`
    or $PY3FS_TLS_DIR names certificates; returns it and the bound address.
    Raises AddressInUse when the port is taken or invalid."""
    tls = tls or tls_mod.from_env()
    if not 0 <= port <= 65535:
        raise errors.InvalidArgument(f"port {port} is out of range 0-65535")
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    add_to_server(servicer, server)
    try:
        if tls is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            bound = server.add_secure_port(f"{host}:{port}", tls.grpc_server())
    except RuntimeError as exc:
        raise errors.AddressInUse(f"cannot bind {host}:{port}: {exc}") from None
    if bound == 0:
        raise errors.AddressInUse(f"cannot bind {host}:{port}")
    await server.start()
    return server, f"{host}:{bound}"


class RpcClient:
    """Typed calls to one control-plane peer. Safe for concurrent use."""

    def __init__(
        self,
        address: str,
        stub_factory: Callable[[grpc.aio.Channel], Any],
        table: dict[str, tuple[type[Msg], type[Msg]]],
        default_timeout: float = 30.0,
        tls: tls_mod.Tls | None = None,
    ) -> None:
        self.address = address
        # TLS when given certificates, or $PY3FS_TLS_DIR names them.
        tls = tls or tls_mod.from_env()
        if tls is None:
            self._channel = grpc.aio.insecure_channel(address, options=_GRPC_OPTIONS)
        else:
            self._channel = grpc.aio.secure_channel(
                address, tls.grpc_channel(), options=_GRPC_OPTIONS
            )
        self._stub = stub_factory(self._channel)
        self._decoders = {
            name: msgspec.msgpack.Decoder(reply) for name, (_r, reply) in table.items()
        }
        self._timeout = default_timeout

    async def call(
        self, method: str, req: Msg, reply_type: type[R], timeout: float | None = None
    ) -> R:
        """Call `method`; returns its reply or raises the py3fs error it reported.
        Transport failures raise RPCUnavailable / RPCTimeout (both retryable)."""
        try:
            reply = await getattr(self._stub, method)(
                envelope_pb2.Request(body=_encoder.encode(req)),
                timeout=timeout or self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.RPCTimeout(
                    f"{method} to {self.address} timed out"
                ) from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise errors.UnknownMessage(f"{method}: {exc.details()}") from None
            raise errors.RPCUnavailable(
                f"{method} to {self.address}: {code.name} {exc.details()}"
            ) from None
        if reply.error_code:
            raise errors.error_from_code(reply.error_code, reply.error_message)
        result = self._decoders[method].decode(reply.body)
        assert isinstance(result, reply_type)
        return result

    async def aclose(self) -> None:
        await self._channel.close()


# ---------------------------------------------------------------- service tables
# A `py3fs.proto.services` table served over gRPC with no .proto of its own:
# the same envelope, method paths /py3fs.<service>/<Title>. Meta uses
# py3fs.msgrpc instead; this is what benchmarks/meta_rpc.py compares it with,
# and the way for mgmtd's methods to move into a table too.


def table_handler(table: type[Service], impl: object) -> grpc.GenericRpcHandler:
    """A grpc.aio generic handler calling `impl.<rpc.name>(req)` per RPC."""
    handlers = {}
    for rpc in table.rpcs():
        method = _method(rpc.title, rpc.req, getattr(impl, rpc.name))

        async def behavior(request: Any, context: Any, _m: Any = method) -> Any:
            return await _m(None, request, context)

        handlers[rpc.title] = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=envelope_pb2.Request.FromString,
            response_serializer=envelope_pb2.Reply.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(f"py3fs.{table.service_name}", handlers)


class GrpcStub:
    """A typed stub over gRPC for a table: `class S(GrpcStub, MetaService)`."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        table = type(self)
        assert issubclass(table, Service)
        self._channel = grpc.aio.insecure_channel(address, options=_GRPC_OPTIONS)
        self._timeout = timeout
        self._calls = {
            rpc.number: self._channel.unary_unary(
                f"/py3fs.{table.service_name}/{rpc.title}",
                request_serializer=envelope_pb2.Request.SerializeToString,
                response_deserializer=envelope_pb2.Reply.FromString,
            )
            for rpc in table.rpcs()
        }
        self._decoders = {
            rpc.number: msgspec.msgpack.Decoder(rpc.reply) for rpc in table.rpcs()
        }

    async def _invoke(self, rpc: Rpc[Any, R], req: Msg) -> R:
        try:
            reply = await self._calls[rpc.number](
                envelope_pb2.Request(body=_encoder.encode(req)), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise errors.RPCUnavailable(f"{rpc.title}: {exc.code().name}") from None
        if reply.error_code:
            raise errors.error_from_code(reply.error_code, reply.error_message)
        result: R = self._decoders[rpc.number].decode(reply.body)
        return result

    async def aclose(self) -> None:
        await self._channel.close()
