"""Namespace calls to the meta services, with failover and idempotent retries.

Meta is stateless, so any meta process serves any request. Mutations carry
(client_id, request_id); a retry after a lost reply or a dead meta reuses the
same id, and meta answers it from its stored reply instead of applying it twice.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import msgspec

from client.routing_cache import RoutingCache
from py3fs import errors
from py3fs.proto import meta_pb2_grpc
from py3fs.proto.messages import META_RPCS, MetaReq, Msg
from py3fs.retry import RetryPolicy
from py3fs.rpc import RpcClient

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Msg)

# The (uid, gid) meta checks permissions against. One client serves many users
# in the FUSE daemon, so the identity is per request (per task), not per client.
_identity: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "py3fs_meta_identity", default=None
)


@contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """Meta calls made inside the block (in this task and tasks it starts) act
    as `uid`/`gid` instead of the client's configured identity."""
    token = _identity.set((uid, gid))
    try:
        yield
    finally:
        _identity.reset(token)


# Calls that change the namespace and therefore need a request id.
MUTATIONS = frozenset(
    {
        "Mkdir",
        "Open",
        "Close",
        "Sync",
        "Rename",
        "Unlink",
        "Rmdir",
        "Symlink",
        "Link",
        "SetAttr",
        "KvStoreOpen",
        "KvPageStage",
        "KvPagePut",
        "KvPageRemove",
        "KvPageEvict",
    }
)


class MetaClient:
    def __init__(
        self,
        routing: RoutingCache,
        client_id: str,
        *,
        uid: int = 0,
        gid: int = 0,
        retry_timeout: float = 60.0,
        call_timeout: float = 10.0,
    ) -> None:
        self._routing = routing
        self.client_id = client_id
        self.uid = uid
        self.gid = gid
        self._ids = itertools.count(1)
        self._clients: dict[str, RpcClient] = {}
        self._bad: dict[str, float] = {}
        self._rr = itertools.count()
        self._retry = RetryPolicy(initial=0.02, maximum=1.0, timeout=retry_timeout)
        self._call_timeout = call_timeout

    def _rpc(self, address: str) -> RpcClient:
        client = self._clients.get(address)
        if client is None:
            client = RpcClient(address, meta_pb2_grpc.MetaStub, META_RPCS)
            self._clients[address] = client
        return client

    async def _pick(self, refresh: bool) -> str:
        view = await self._routing.get()
        if refresh:
            view = await self._routing.refresh(view)
        addresses = sorted(n.address for n in view.nodes_of_role("meta"))
        if not addresses:
            raise errors.RoutingUnavailable("no meta service is up")
        now = time.monotonic()
        good = [a for a in addresses if self._bad.get(a, 0.0) < now] or addresses
        return good[next(self._rr) % len(good)]

    async def call(self, method: str, req: MetaReq, reply_type: type[R]) -> R:
        """Call `method` on some meta, retrying retryable failures on others."""
        uid, gid = _identity.get() or (self.uid, self.gid)
        fields = {"uid": uid, "gid": gid, "client_id": self.client_id}
        if method in MUTATIONS:
            fields["request_id"] = next(self._ids)
        req = msgspec.structs.replace(req, **fields)

        async def attempt(n: int) -> R:
            address = await self._pick(refresh=n > 0)
            try:
                return await self._rpc(address).call(
                    method, req, reply_type, timeout=self._call_timeout
                )
            except (errors.RPCUnavailable, errors.RPCTimeout):
                self._bad[address] = time.monotonic() + 5.0
                raise

        return await self._retry.acall(attempt, what=f"meta {method}")

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
