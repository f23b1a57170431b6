"""A minimal client for etcd v3's JSON gRPC gateway (`POST /v3/...`), stdlib only.

It owns the connections (one keep-alive `http.client` connection per thread and
member), failover across the members, and the one boundary where etcd's failures
become py3fs errors:

- a member that cannot be reached, has no leader or times out → KVUnavailable
  (retryable);
- a transaction over `--max-txn-ops` or `--max-request-bytes` → KVTooLarge;
- a snapshot revision that was compacted away → KVConflict (retry re-reads).

Reads fail over to the next member at once. A transaction is sent once: when the
connection breaks after sending it, etcd may still apply it, so re-sending could
apply stale writes twice; the caller re-runs its whole transaction function
instead (as FoundationDB does on `commit_unknown_result`).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
from typing import Any

from py3fs import errors

logger = logging.getLogger(__name__)

# gRPC status codes that the gateway passes through in its error body.
_GRPC_DEADLINE_EXCEEDED = 4
_GRPC_RESOURCE_EXHAUSTED = 8
_GRPC_UNAVAILABLE = 14

_TOO_LARGE = ("too many operations in txn request", "request is too large")
_UNAVAILABLE = (
    "no leader",
    "timed out",
    "leader changed",
    "not capable",
    "server stopped",
    "future revision",
    "too many requests",
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    # The gateway omits empty fields (proto3 JSON), so an empty value is absent.
    return base64.b64decode(text) if text else b""


def parse_endpoints(endpoints: str) -> list[tuple[str, int]]:
    """'h1:2379,http://h2:2379' → [(h1, 2379), (h2, 2379)]."""
    out = []
    for raw in endpoints.split(","):
        item = raw.strip().removeprefix("http://").rstrip("/")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise errors.InvalidArgument(f"etcd endpoint needs host:port: {raw!r}")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise errors.InvalidArgument(f"no etcd endpoints in {endpoints!r}")
    return out


def translate(status: int, body: bytes) -> errors.KVError:
    """The py3fs error for an etcd gateway error reply."""
    try:
        detail = json.loads(body)
        message = str(detail.get("message") or detail.get("error") or body[:200])
        code = int(detail.get("code", 0))
    except (ValueError, AttributeError):
        message, code = body[:200].decode(errors="replace"), 0
    text = f"etcd ({status}): {message}"
    if any(s in message for s in _TOO_LARGE):
        return errors.KVTooLarge(text)
    if "compacted" in message:
        return errors.KVConflict(text)
    if code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED, _GRPC_RESOURCE_EXHAUSTED):
        return errors.KVUnavailable(text)
    if status >= 500 or any(s in message for s in _UNAVAILABLE):
        return errors.KVUnavailable(text)
    return errors.KVError(text)


class EtcdHttp:
    """Posts JSON requests to the members of one etcd cluster. Thread-safe."""

    def __init__(self, endpoints: str, timeout: float = 5.0) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        # The member that answered last; every thread starts there.
        self._preferred = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []
        self._closed = False

    def _conn(self, index: int) -> http.client.HTTPConnection:
        conns: dict[int, http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(index)
        if conn is None:
            if self._closed:
                raise errors.KVError("etcd database is closed")
            host, port = self.endpoints[index]
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            conns[index] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self, index: int) -> None:
        conns = getattr(self._local, "conns", {})
        conn = conns.pop(index, None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def call(self, path: str, request: dict[str, Any], *, resend: bool) -> Any:
        """POST `request` to `path` on some member; returns the decoded reply.

        `resend`: whether the request may be sent again to another member after a
        connection broke mid-request (true for reads, false for transactions).
        Raises KVUnavailable when no member answered, or the translated error.
        """
        body = json.dumps(request).encode()
        n = len(self.endpoints)
        start = self._preferred
        failures: list[str] = []
        for i in range(n):
            index = (start + i) % n
            host, port = self.endpoints[index]
            conn = self._conn(index)
            sent = False
            try:
                if conn.sock is None:
                    conn.connect()
                sent = True
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:  # timeouts too
                self._drop(index)
                failures.append(f"{host}:{port}: {exc!r}")
                if sent and not resend:
                    raise errors.KVUnavailable(
                        f"etcd {host}:{port} failed during {path}; outcome unknown "
                        f"({exc!r})"
                    ) from None
                continue
            if resp.status == 200:
                self._preferred = index
                return json.loads(data)
            err = translate(resp.status, data)
            if isinstance(err, errors.KVUnavailable) and resend:
                # This member has no leader or is stopping; another may serve.
                failures.append(f"{host}:{port}: {err}")
                self._preferred = (index + 1) % n
                continue
            raise err
        self._preferred = (start + 1) % n
        raise errors.KVUnavailable(f"no etcd member answered {path}: {failures}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
