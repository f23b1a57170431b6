"""TLS over a raw non-blocking socket, for the data plane (py3fs.dataplane).

asyncio's `sock_recv_into`/`sock_sendall` refuse an `ssl.SSLSocket`, and the
data plane wants those (payloads land in caller buffers, no stream copies).
So a `TlsSock` runs OpenSSL on memory: an `ssl.SSLObject` between two
`MemoryBIO`s, ciphertext moved with the loop's socket calls. It offers what
py3fs.wire needs: `recv_into` (returns 0 at end of stream, like a socket) and
`sendall`. A connection carries one request at a time, so reads and writes
never run at once on one `TlsSock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, cast

from py3fs import errors

# Ciphertext read from the socket per system call, and plaintext encrypted per
# send: several TLS records (16 KiB each) at a time. A connection keeps its
# receive buffer (a plain one keeps a payload buffer of up to 8 MiB); 64 KiB
# read slower in benchmarks/tls_cost.py.
_RECV = 256 * 1024
_SEND = 256 * 1024


class TlsSock:
    """One TLS connection over `sock` (non-blocking, connected). Call
    `handshake` before anything else."""

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        first: bytes = b"",
    ) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if first:  # bytes a server already read to tell TLS from plain text
            self._in.write(first)
        self._obj = context.wrap_bio(
            self._in,
            self._out,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._raw = bytearray(_RECV)
        self._eof = False

    async def _flush(self) -> None:
        if self._out.pending:
            await self._loop.sock_sendall(self.sock, self._out.read())

    async def _fill(self) -> bool:
        """Read ciphertext from the socket into OpenSSL; False at end of stream."""
        if self._eof:
            return False
        n = await self._loop.sock_recv_into(self.sock, self._raw)
        if n == 0:
            self._eof = True
            self._in.write_eof()
            return False
        self._in.write(memoryview(self._raw)[:n])
        return True

    async def handshake(self) -> None:
        """Raises `ssl.SSLError` (a refused certificate is
        `ssl.SSLCertVerificationError`) or `ConnectionError`."""
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                # Send our alert so the peer learns why (best effort).
                with contextlib.suppress(OSError):
                    await self._flush()
                raise
            else:
                await self._flush()
                return
            await self._flush()
            if not await self._fill():
                raise ConnectionResetError("connection closed during TLS handshake")

    async def recv_into(self, view: memoryview) -> int:
        """Decrypt into `view` as much as has arrived (waiting for at least one
        byte); 0 when the peer closed the connection."""
        want = view.nbytes
        got = 0
        while True:
            try:
                while got < want:
                    n = cast("int", self._obj.read(want - got, view[got:]))
                    if n == 0:
                        break
                    got += n
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got
            except ssl.SSLError as exc:
                raise ConnectionResetError(f"TLS error: {exc}") from None
            if self._out.pending:  # e.g. a key update's answer
                await self._flush()
            if got:
                return got
            if not await self._fill():
                # Whatever was whole is decrypted above; the rest is lost.
                try:
                    return cast("int", self._obj.read(want, view))
                except ssl.SSLError:
                    return 0

    async def sendall(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, _SEND):
            try:
                self._obj.write(view[start : start + _SEND])
            except ssl.SSLError as exc:
                raise ConnectionResetError(f"TLS error: {exc}") from None
            await self._flush()

    def pending(self) -> bool:
        """Bytes received and not read yet (ciphertext or plaintext)."""
        return bool(self._in.pending or self._obj.pending())

    def close(self) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            # A close_notify, if the socket takes it now; never waits.
            self._obj.unwrap()
        with contextlib.suppress(OSError):
            if self._out.pending:
                self.sock.send(self._out.read())
        with contextlib.suppress(OSError):
            self.sock.close()


def handshake_error(address: str, exc: BaseException) -> errors.Py3fsError:
    """The typed error for a failed TLS handshake with `address`: a refused
    certificate will not get better by retrying, anything else may."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return errors.PermissionDenied(
            f"TLS: cannot verify {address}'s certificate against the cluster CA: "
            f"{exc.verify_message}"
        )
    return errors.RPCUnavailable(f"TLS handshake with {address} failed: {exc}")
