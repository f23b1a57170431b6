"""Data-plane connections: a pooled request/response client and a frame server.

Both sides speak `py3fs.wire` over TCP with asyncio's socket primitives
(`sock_recv_into`, `sock_sendall`) so payloads land straight in caller buffers.
A connection carries one request at a time; concurrency comes from the pool
holding several per peer.

With TLS on (py3fs.tls: the cluster's CA and certificate, `$PY3FS_TLS_DIR` or
a `tls` argument) every connection is TLS over the same primitives
(py3fs.tls_sock): clients verify the server's certificate against the CA, a
server refuses plain-text frames with a clear error and a client certificate
the CA did not sign.

Without TLS a server also listens on a Unix-domain socket in Linux's abstract
namespace named after its TCP address (`local_name`): no file to clean up, gone
with the process, and scoped to the network namespace, so only a process on the
same host (and network) reaches it. A client uses it only if the process there
runs as the user whose TCP socket listens on that address (py3fs.local_peer):
any local user may bind a free abstract name. Over it a client passes no bytes,
only file descriptors (`call_fd`: a same-host read takes the chunk's data file
and reads it itself, client.local_read). Bulk data stays on TCP: loopback TCP
grows its buffers to megabytes, a Unix socket keeps ~200 KiB, so a 4 MiB write
over it took ~20 wake-ups of each side instead of a few, and KV puts ran at
half speed on a busy host. `PY3FS_DATA_UNIX=0` turns it off in a client (A/B
benchmarks). With TLS it stays off: the abstract name proves nothing about who
listens there, the server's certificate does.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from py3fs import buffers, caps, errors, local_peer, metrics, wire
from py3fs import tls as tls_mod
from py3fs.tls_sock import TlsSock, handshake_error

logger = logging.getLogger(__name__)

Sink = Callable[[wire.Frame], Sequence[memoryview]]


def local_name(address: str) -> bytes:
    """The abstract Unix socket beside the data server on TCP `address` (the
    TCP port is held by one process of a network namespace at a time)."""
    return b"\0py3fs-data/" + address.encode()


def _local_default() -> bool:
    return os.environ.get("PY3FS_DATA_UNIX", "1") != "0"


async def _io_ready(loop: asyncio.AbstractEventLoop, fd: int, write: bool) -> None:
    """Wait until `fd` is readable (or writable): for recvmsg/sendmsg, which
    the loop has no awaitable form of."""
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def send_with_fd(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, fd: int
) -> None:
    """Send `data` with `fd` attached to its first bytes (SCM_RIGHTS)."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
    while True:
        try:
            n = sock.sendmsg([data], anc)
            break
        except (BlockingIOError, InterruptedError):
            await _io_ready(loop, sock.fileno(), write=True)
    if n < len(data):
        await loop.sock_sendall(sock, data[n:])


async def recv_frame_fd(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, max_payload: int
) -> tuple[wire.Frame, int | None]:
    """One frame, and the file descriptor sent with it (or None); the caller
    owns (closes) the descriptor."""
    hbuf = bytearray(wire.HEADER_SIZE)
    while True:
        try:
            n, anc, flags, _ = sock.recvmsg_into([hbuf], socket.CMSG_SPACE(4))
            break
        except (BlockingIOError, InterruptedError):
            await _io_ready(loop, sock.fileno(), write=False)
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    fd = fds[0] if fds else None
    for extra in fds[1:]:
        os.close(extra)
    try:
        if flags & socket.MSG_CTRUNC:
            raise errors.BadFrame("file descriptors cut off in a reply")
        if n == 0:
            raise wire.ConnectionClosed("connection closed by peer")
        frame = await wire.finish_frame(loop, sock, hbuf, n, max_payload)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return frame, fd


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _ClientConn:
    def __init__(self, sock: wire.Conn, local: bool = False) -> None:
        self.sock = sock
        self.broken = False
        self.local = local  # a Unix socket to a server on this host

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _usable(sock: wire.Conn) -> bool:
    """Whether an idle pooled connection may carry a request: not closed by the
    peer meanwhile (a restarted server on the same port would otherwise get
    every request on a dead connection first)."""
    if isinstance(sock, TlsSock):
        if sock.pending():
            return False  # bytes nobody asked for (an alert, a close)
        sock = sock.sock
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # open, nothing to read: as an idle connection should be
    except OSError:
        return False
    return False  # end of stream, or bytes nobody asked for


def _pop_usable(idle: list[_ClientConn]) -> _ClientConn | None:
    """The newest pooled connection still usable; closes the others it meets."""
    while idle:
        conn = idle.pop()
        if _usable(conn.sock):
            return conn
        conn.close()
    return None


_LOCAL_POOL = "unix:"  # pool key prefix of Unix connections
_NOT_LOCAL_TTL = 10.0  # s before a node with no Unix socket is tried again
# s a listening user stays trusted for an address (DataClient._is_server)
_LISTENERS_TTL = 60.0


class DataClient:
    """Pooled client for storage servers. `call` is safe to use concurrently."""

    def __init__(
        self,
        *,
        max_payload: int = wire.DEFAULT_MAX_PAYLOAD,
        max_idle_per_peer: int = 32,
        connect_timeout: float = 5.0,
        keys: caps.Keys | None = None,
        tls: tls_mod.Tls | None = None,
        local: bool | None = None,
    ) -> None:
        self._idle: dict[str, list[_ClientConn]] = {}
        # TLS when given the CA, or $PY3FS_TLS_DIR names it.
        tls = tls or tls_mod.from_env()
        self._ssl = None if tls is None else tls.client_context()
        # Same-host reads through servers' Unix sockets (see the module doc).
        self._local = self._ssl is None and (
            _local_default() if local is None else local
        )
        # Addresses whose Unix socket was not there, until when (monotonic):
        # a remote node is not asked again for every read.
        self._not_local: dict[str, float] = {}
        # Users listening on each address's TCP port, until when (_is_server).
        self._listeners: dict[str, tuple[float, set[int]]] = {}
        self._listener_jobs: dict[str, asyncio.Future[set[int]]] = {}
        self._ids = itertools.count(1)
        self._max_payload = max_payload
        self._max_idle = max_idle_per_peer
        self._connect_timeout = connect_timeout
        self._closed = False
        # Services sign what only services may send (py3fs.caps); clients do
        # not hold the key.
        self._keys = keys

    async def _connect_local(self, address: str) -> _ClientConn | None:
        """A connection to the server's Unix socket, or None (not on this host)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, local_name(address))
        except (OSError, TimeoutError):
            sock.close()
            return None
        except BaseException:
            sock.close()
            raise
        host, port = _split_address(address)
        try:
            trusted = await self._is_server(sock, address, host, port)
        except OSError:
            trusted = False
        except BaseException:
            sock.close()
            raise
        if not trusted:
            logger.warning(
                "the Unix socket of %s is not held by its TCP listener's user: "
                "reading over TCP",
                address,
            )
            sock.close()
            return None
        return _ClientConn(sock, local=True)

    async def _is_server(
        self, sock: socket.socket, address: str, host: str, port: int
    ) -> bool:
        """local_peer.is_server, with the listeners' users remembered for
        _LISTENERS_TTL: /proc/net/tcp lists every socket of the host (~1,000
        on a busy one: 3-40 ms to read and parse), and a client opening
        connections for a batch of same-host reads paid that for each, on the
        loop. Only a match is taken from memory; a peer that does not match
        is checked against fresh tables."""
        peer = local_peer.peer_uid(sock)
        known = self._listeners.get(address)
        if known is not None and known[0] > time.monotonic() and peer in known[1]:
            return True
        # Connections opened at once for one address share one reading.
        job = self._listener_jobs.get(address)
        if job is None:
            job = asyncio.ensure_future(
                asyncio.to_thread(local_peer.listener_uids, host, port)
            )
            self._listener_jobs[address] = job
            job.add_done_callback(lambda _: self._listener_jobs.pop(address, None))
        uids = await asyncio.shield(job)
        if uids:
            self._listeners[address] = (time.monotonic() + _LISTENERS_TTL, uids)
        return peer in uids

    async def _connect(self, address: str) -> _ClientConn:
        loop = asyncio.get_running_loop()
        host, port = _split_address(address)
        try:
            async with asyncio.timeout(self._connect_timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, stype, proto, _, addr = infos[0]
                sock = socket.socket(family, stype, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, addr)
                except BaseException:
                    sock.close()
                    raise
        except (OSError, TimeoutError) as exc:
            raise errors.RPCUnavailable(f"cannot connect to {address}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is None:
            return _ClientConn(sock)
        tsock = TlsSock(sock, self._ssl, server_side=False, server_hostname=host)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await tsock.handshake()
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            tsock.close()
            raise handshake_error(address, exc) from None
        except BaseException:
            tsock.close()
            raise
        return _ClientConn(tsock)

    async def call(
        self,
        address: str,
        mtype: wire.MsgType,
        body: wire.Body,
        payload: Sequence[Any] = (),
        *,
        sink: Sink | None = None,
        timeout: float = 60.0,
    ) -> tuple[wire.Body, bytearray | None]:
        """Send one request and wait for its reply.

        Returns the reply body and, without a `sink`, the reply payload (or None).
        With a `sink`, the payload is received into the views it returns for the frame.
        Raises the error the peer reported, `RPCUnavailable` when the connection fails
        and `RPCTimeout` after `timeout` seconds. Cancellation drops the connection.
        """
        if self._closed:
            raise errors.RPCUnavailable("data client closed")
        if self._keys is not None and hasattr(body, "auth"):
            body = self._keys.sign(body)
        idle = self._idle.setdefault(address, [])
        conn = await self._checkout(address, idle)
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        with self._exchange(conn, idle, mtype.name, address):
            async with asyncio.timeout(timeout):
                await wire.send_frame(loop, conn.sock, mtype, rid, body, payload)
                frame = await wire.recv_frame(loop, conn.sock, self._max_payload)
                assert frame is not None
                data: bytearray | None = None
                if frame.payload_len:
                    if sink is not None and frame.type != wire.MsgType.ERROR:
                        for view in sink(frame):
                            await wire.recv_into(loop, conn.sock, view)
                    else:
                        data = bytearray(frame.payload_len)
                        await wire.recv_into(loop, conn.sock, memoryview(data))
        if frame.request_id != rid:
            raise errors.BadFrame(f"reply for request {frame.request_id}, sent {rid}")
        if isinstance(frame.body, wire.ErrorBody):
            wire.raise_error_body(frame.body)
        return frame.body, data

    @property
    def local(self) -> bool:
        """Whether reads may take data files from servers on this host."""
        return self._local

    async def _checkout(self, address: str, idle: list[_ClientConn]) -> _ClientConn:
        """An idle pooled TCP connection to `address` still usable, or a new one
        (Unix connections have pools of their own: `call_fd`)."""
        return _pop_usable(idle) or await self._connect(address)

    @contextlib.contextmanager
    def _exchange(
        self, conn: _ClientConn, idle: list[_ClientConn], what: str, address: str
    ) -> Iterator[None]:
        """Around one request and reply on `conn`: a failure breaks it and
        becomes RPCTimeout or RPCUnavailable; after, it is pooled or closed."""
        try:
            yield
        except TimeoutError:
            conn.broken = True
            raise errors.RPCTimeout(f"{what} to {address} timed out") from None
        except OSError as exc:
            conn.broken = True
            raise errors.RPCUnavailable(f"{what} to {address}: {exc}") from None
        except BaseException:
            conn.broken = True
            raise
        finally:
            if conn.broken or self._closed or len(idle) >= self._max_idle:
                conn.close()
            else:
                idle.append(conn)

    async def call_fd(
        self, address: str, body: wire.ReadFdReq, *, timeout: float = 60.0
    ) -> tuple[wire.ReadFdReply, int | None] | None:
        """A READ_FD to a server on this host: its reply and the data file's
        descriptor (the caller closes it), or None when `address` is not
        reached over a Unix socket (then read over the network). Raises as
        `call` does, and the server's error (ChunkNotFound, ...)."""
        if self._closed:
            raise errors.RPCUnavailable("data client closed")
        if not self._local:
            return None
        idle = self._idle.setdefault(_LOCAL_POOL + address, [])
        conn = _pop_usable(idle)
        if conn is None:
            if self._not_local.get(address, 0.0) > time.monotonic():
                return None
            conn = await self._connect_local(address)
            if conn is None:
                self._not_local[address] = time.monotonic() + _NOT_LOCAL_TTL
                return None
        assert isinstance(conn.sock, socket.socket)
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        fd: int | None = None
        try:
            with self._exchange(conn, idle, "READ_FD", address):
                async with asyncio.timeout(timeout):
                    await wire.send_frame(
                        loop, conn.sock, wire.MsgType.READ_FD, rid, body
                    )
                    frame, fd = await recv_frame_fd(loop, conn.sock, self._max_payload)
                    if frame.payload_len:
                        raise errors.BadFrame("READ_FD reply with a payload")
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        try:
            if frame.request_id != rid:
                raise errors.BadFrame(
                    f"reply for request {frame.request_id}, sent {rid}"
                )
            if isinstance(frame.body, wire.ErrorBody):
                wire.raise_error_body(frame.body)
            if not isinstance(frame.body, wire.ReadFdReply):
                raise errors.BadFrame(f"{frame.type.name} for a READ_FD")
            if (fd is None) != (frame.body.length == 0):
                raise errors.BadFrame("READ_FD reply and descriptor disagree")
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        return frame.body, fd

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


# A connection keeps a scratch buffer up to this size between requests; a
# bigger one (a rare 64 MiB write) is dropped after its request.
KEEP_BUFFER = 8 * 1024 * 1024
# Scratch buffers of at least this size are page-aligned mappings.
ALIGN_BUFFER = 64 * 1024


class PayloadBudget:
    """Bytes of request payload all connections of a server may hold at once:
    a frame's payload is allocated only when its share is free, so many slow
    or idle senders announcing big payloads cannot exhaust memory."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._freed = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self._freed:
            # One request bigger than the whole budget still runs alone.
            await self._freed.wait_for(
                lambda: self.used == 0 or self.used + n <= self.total
            )
            self.used += n

    async def give(self, n: int) -> None:
        if n:
            async with self._freed:
                self.used -= n
                self._freed.notify_all()


class ServerConn:
    """One accepted connection, handed to the handler with each frame."""

    def __init__(
        self,
        sock: wire.Conn,
        peer: str,
        budget: PayloadBudget | None = None,
        payload_timeout: float = 60.0,
        local: bool = False,
    ) -> None:
        self.sock = sock
        self.peer = peer
        # Over the Unix socket: the client is on this host (reply_fd works).
        self.local = local
        self.loop = asyncio.get_running_loop()
        self._frame: wire.Frame | None = None
        self._payload_left = 0
        self._buffer: bytearray | mmap.mmap = bytearray(0)
        self._budget = budget
        self._held = 0
        self._payload_timeout = payload_timeout

    def begin(self, frame: wire.Frame) -> None:
        self._frame = frame
        self._payload_left = frame.payload_len

    def payload_buffer(self, n: int) -> memoryview:
        """A reusable scratch buffer of `n` bytes, valid until the next request."""
        if len(self._buffer) < n:
            # Page-aligned, so a storage server can write a large payload to
            # disk with O_DIRECT straight from here (FileChunkStore).
            self._buffer = buffers.aligned(n) if n >= ALIGN_BUFFER else bytearray(n)
        return memoryview(self._buffer)[:n]

    async def read_payload(self) -> memoryview:
        """Receive the whole payload of the current frame into the scratch
        buffer, once the server's payload budget has room for it; a sender
        that does not deliver it within the payload timeout is cut off."""
        n = self._payload_left
        if self._budget is not None and n:
            await self._budget.take(n)
            self._held += n
        view = self.payload_buffer(n)
        try:
            async with asyncio.timeout(self._payload_timeout):
                await wire.recv_into(self.loop, self.sock, view)
        except TimeoutError:
            raise wire.ConnectionClosed(
                f"{self.peer} sent {n} payload bytes too slowly"
            ) from None
        self._payload_left = 0
        return view

    async def end_request(self) -> None:
        """The handler is done with the payload: give its budget back."""
        if self._budget is not None:
            await self._budget.give(self._held)
        self._held = 0
        if len(self._buffer) > KEEP_BUFFER:
            self._buffer = bytearray(0)

    async def finish_payload(self) -> None:
        if self._payload_left:
            try:
                async with asyncio.timeout(self._payload_timeout):
                    await wire.discard(self.loop, self.sock, self._payload_left)
            except TimeoutError:
                raise wire.ConnectionClosed(
                    f"{self.peer} did not send the payload it announced"
                ) from None
            self._payload_left = 0

    async def reply(
        self, mtype: wire.MsgType, body: wire.Body, payload: Sequence[Any] = ()
    ) -> None:
        await self.finish_payload()
        assert self._frame is not None
        await wire.send_frame(
            self.loop, self.sock, mtype, self._frame.request_id, body, payload
        )

    async def reply_fd(self, mtype: wire.MsgType, body: wire.Body, fd: int) -> None:
        """Reply with `fd` passed along (the caller still closes its own copy);
        only on a local connection."""
        assert self.local
        assert isinstance(self.sock, socket.socket)
        await self.finish_payload()
        assert self._frame is not None
        head = wire.encode_frame(mtype, self._frame.request_id, body)
        await send_with_fd(self.loop, self.sock, head, fd)

    @property
    def payload_pending(self) -> bool:
        return self._payload_left > 0

    async def reply_error(
        self, exc: errors.Py3fsError, request_id: int = 0, skip_payload: bool = False
    ) -> None:
        """Send `exc`; with `skip_payload` the current frame's payload is left
        unread (the caller discards it after)."""
        rid = self._frame.request_id if self._frame else request_id
        if not skip_payload:
            await self.finish_payload()
        await wire.send_frame(
            self.loop, self.sock, wire.MsgType.ERROR, rid, wire.error_body(exc)
        )


Handler = Callable[[wire.Frame, ServerConn], Awaitable[None]]


class DataServer:
    """Accepts data-plane connections and hands each frame to `handler`.

    A malformed frame (bad magic, version, checksum, oversized length) is answered
    with an error frame and the connection closed, since the stream can no longer be
    trusted; an unknown message type is answered and the connection kept. Neither
    affects other connections. Use as `async with DataServer(...) as srv`.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_payload: int = wire.DEFAULT_MAX_PAYLOAD,
        max_connections: int = 4096,
        idle_timeout: float = 600.0,
        payload_timeout: float = 60.0,
        payload_budget: int = 1 << 30,
        tls: tls_mod.Tls | None = None,
        local: bool = True,
    ) -> None:
        self._handler = handler
        # TLS when given certificates, or $PY3FS_TLS_DIR names them.
        tls = tls or tls_mod.from_env()
        self._ssl = None if tls is None else tls.data_server_context()
        # Bounds on what clients can hold: connections, time between frames
        # (and to deliver one), payload bytes in memory at once.
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._payload_timeout = payload_timeout
        self._budget = PayloadBudget(payload_budget)
        self._host = host
        self._port = port
        self._max_payload = max_payload
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_task: asyncio.Task[None] | None = None
        self._local = local and self._ssl is None
        self._unix: socket.socket | None = None
        self._unix_task: asyncio.Task[None] | None = None
        self.address = ""

    async def __aenter__(self) -> DataServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(512)
        sock.setblocking(False)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self._accept_task = asyncio.create_task(self._accept_loop(sock))
        if self._local:
            self._listen_local()
        logger.info("data server listening on %s", self.address)
        return self

    def _listen_local(self) -> None:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix.bind(local_name(self.address))
            unix.listen(512)
        except OSError as exc:
            # Someone holds the name: serve over TCP only.
            logger.warning("no Unix socket beside %s: %s", self.address, exc)
            unix.close()
            return
        unix.setblocking(False)
        self._unix = unix
        self._unix_task = asyncio.create_task(self._accept_loop(unix, local=True))

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for accept in (self._accept_task, self._unix_task):
            if accept:
                accept.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await accept
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sock:
            self._sock.close()
            self._sock = None
        if self._unix:
            self._unix.close()
            self._unix = None

    async def _accept_loop(self, listener: socket.socket, local: bool = False) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(listener)
            except OSError as exc:
                logger.warning("accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            if len(self._tasks) >= self._max_connections:
                logger.warning(
                    "refusing %s: %d connections open", addr, len(self._tasks)
                )
                conn.close()
                continue
            conn.setblocking(False)
            if local:
                peer = "local"
            else:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = f"{addr[0]}:{addr[1]}"
            task = asyncio.create_task(self._serve(conn, peer, local))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_tls(self, sock: socket.socket, peer: str) -> TlsSock | None:
        """The TLS connection over `sock`, or None (closed, refused, logged)."""
        assert self._ssl is not None
        loop = asyncio.get_running_loop()
        first = bytearray(wire.HEADER_SIZE)
        try:
            async with asyncio.timeout(self._payload_timeout):
                n = await loop.sock_recv_into(sock, first)
                if n == 0:
                    return None
                if first[0] != wire.MAGIC[0]:  # TLS records start with 20..24
                    tsock = TlsSock(
                        sock, self._ssl, server_side=True, first=bytes(first[:n])
                    )
                    await tsock.handshake()
                    return tsock
                await wire.recv_into(loop, sock, memoryview(first)[n:])
        except (OSError, ssl.SSLError, TimeoutError, errors.RPCError) as exc:
            logger.warning("TLS handshake with %s failed: %s", peer, exc)
            return None
        # A plain-text frame.
        with contextlib.suppress(OSError, TimeoutError, errors.RPCError):
            await self._refuse_plain(sock, peer, first)
        return None

    async def _refuse_plain(
        self, sock: socket.socket, peer: str, header: bytearray
    ) -> None:
        """Answer every frame of a plain-text connection with PermissionDenied
        (in its own protocol, so the sender learns why) until it closes or
        idles: a pooled connection stays in sync, and is never reset under a
        request."""
        logger.warning("refusing %s: plain text, TLS is on", peer)
        exc = errors.PermissionDenied(
            "this storage node accepts only TLS connections "
            "(give the client the cluster's tls_dir)"
        )
        loop = asyncio.get_running_loop()
        _, rid, blen, plen = wire.parse_header(header, self._max_payload)
        await wire.discard(loop, sock, blen)
        while True:
            await wire.send_frame(
                loop, sock, wire.MsgType.ERROR, rid, wire.error_body(exc)
            )
            async with asyncio.timeout(self._payload_timeout):
                await wire.discard(loop, sock, plen)
            async with asyncio.timeout(self._idle_timeout):
                frame = await wire.recv_frame(
                    loop, sock, self._max_payload, at_boundary_ok=True
                )
            if frame is None:
                return
            rid, plen = frame.request_id, frame.payload_len

    async def _serve(self, raw: socket.socket, peer: str, local: bool = False) -> None:
        loop = asyncio.get_running_loop()
        sock: wire.Conn = raw
        try:
            if self._ssl is not None and not local:
                tsock = await self._start_tls(raw, peer)
                if tsock is None:
                    return
                sock = tsock
            conn = ServerConn(
                sock, peer, self._budget, self._payload_timeout, local=local
            )
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        frame = await wire.recv_frame(
                            loop, sock, self._max_payload, at_boundary_ok=True
                        )
                except TimeoutError:
                    logger.info("closing %s: idle for %.0f s", peer, self._idle_timeout)
                    return
                except wire.ConnectionClosed:
                    return
                except errors.UnknownMessage as exc:
                    await conn.reply_error(exc)
                    continue
                except (errors.BadFrame, errors.FrameTooLarge) as exc:
                    logger.warning("bad frame from %s: %s", peer, exc)
                    await conn.reply_error(exc)
                    return
                if frame is None:
                    return
                conn.begin(frame)
                start = time.perf_counter()
                outcome = "ok"
                try:
                    await self._handler(frame, conn)
                except errors.Py3fsError as exc:
                    outcome = type(exc).__name__
                    if conn.payload_pending:
                        # Refused before its payload was read (not allowed):
                        # answer at once, then discard the payload through a
                        # small buffer; a sender that never delivers it is cut
                        # off after the payload timeout.
                        await conn.reply_error(exc, skip_payload=True)
                        await conn.finish_payload()
                    else:
                        await conn.reply_error(exc)
                except (ConnectionError, wire.ConnectionClosed):
                    outcome = "disconnected"
                    return
                except Exception as exc:
                    outcome = "internal"
                    logger.exception("handler failed on %s", frame.type.name)
                    await conn.reply_error(errors.Py3fsError(f"internal error: {exc}"))
                finally:
                    seconds = time.perf_counter() - start
                    metrics.record(frame.type.name, outcome, seconds)
                    await conn.end_request()
        except (OSError, errors.RPCUnavailable):
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()
