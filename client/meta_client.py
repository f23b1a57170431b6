"""Namespace calls to the meta services, with failover and idempotent retries.

Meta is stateless, so any meta process serves any request. Mutations carry
(client_id, request_id); a retry after a lost reply or a dead meta reuses the
same id, and meta answers it from its stored reply instead of applying it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
import zlib
from typing import Any, TypeVar

import msgspec

from client.routing_cache import RoutingCache
from py3fs import errors
from py3fs.msgrpc import MsgClient, Stub
from py3fs.proto.messages import MetaReq, Msg, OpenReq, RenewReq
from py3fs.proto.services import MetaService, Rpc
from py3fs.retry import RetryPolicy
from py3fs.routing import RoutingView
from py3fs.tls import Tls

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Msg)

# The (uid, gid, supplementary groups) meta checks permissions against. One
# client serves many users in the FUSE daemon, so the identity is per request
# (per task), not per client.
Identity = tuple[int, int, tuple[int, ...]]
_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "py3fs_meta_identity", default=None
)


class _ActingAs:
    # A class rather than @contextmanager: the FUSE daemon enters one per
    # request, and a generator-based one costs a generator and its frames.
    __slots__ = ("_identity", "_token")

    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    def __enter__(self) -> None:
        self._token = _identity.set(self._identity)

    def __exit__(self, *exc: object) -> None:
        _identity.reset(self._token)


def acting_as(uid: int, gid: int, groups: tuple[int, ...] = ()) -> _ActingAs:
    """Meta calls made inside the block (in this task and tasks it starts) act
    as `uid`/`gid` with supplementary `groups` instead of the client's
    configured identity."""
    return _ActingAs((uid, gid, groups))


class MetaClient(MetaService):
    """The typed meta stub: `await meta.mkdir(MkdirReq(...)) -> Inode`, one
    method per RPC of `MetaService`."""

    def __init__(
        self,
        routing: RoutingCache,
        client_id: str,
        *,
        uid: int = 0,
        gid: int = 0,
        token: str = "",
        retry_timeout: float = 60.0,
        call_timeout: float = 10.0,
        session_lease: float = 0.0,
        tls: Tls | None = None,
    ) -> None:
        self._routing = routing
        self._tls = tls
        self.client_id = client_id
        self.uid = uid
        self.gid = gid
        self.token = token
        self._ids = itertools.count(1)
        self._clients: dict[str, MsgClient] = {}
        self._bad: dict[str, float] = {}
        self._rr = itertools.count()
        # Mutations go to one "home" meta per client (while it is up): two
        # meta processes sharing one SQLite file would otherwise take turns on
        # its write lock, and a writer that finds it taken sleeps >= 1 ms in
        # SQLite's busy handler. Clients spread over the metas by their id.
        self._home = zlib.crc32(client_id.encode())
        self._view: RoutingView | None = None
        self._addresses: list[str] = []
        self._retry = RetryPolicy(initial=0.02, maximum=1.0, timeout=retry_timeout)
        self._call_timeout = call_timeout
        # Write sessions last `session_lease` seconds past the last renewal;
        # a task renews every third of it once the first one is open.
        self.session_lease = session_lease
        self._renewer: asyncio.Task[None] | None = None

    def _rpc(self, address: str) -> MsgClient:
        client = self._clients.get(address)
        if client is None:
            client = MsgClient(address, MetaService, tls=self._tls)
            self._clients[address] = client
        return client

    async def _pick(self, refresh: bool, mutating: bool) -> str:
        """A meta for the next attempt: the home meta for a mutation, the next
        of the others in turn for a read, skipping those that failed lately."""
        view = await self._routing.get()
        if refresh:
            view = await self._routing.refresh(view)
        if view is not self._view:
            self._view = view
            self._addresses = sorted(n.address for n in view.nodes_of_role("meta"))
        good = addresses = self._addresses
        if not addresses:
            raise errors.RoutingUnavailable("no meta service is up")
        if self._bad:
            now = time.monotonic()
            for address, until in list(self._bad.items()):
                if until < now:
                    del self._bad[address]
            good = [a for a in addresses if a not in self._bad] or addresses
        home = good[self._home % len(good)]
        if mutating:
            return home
        # Reads rotate over the others, leaving the home meta's loop (which
        # serializes this client's writes) to the writes.
        others = [a for a in good if a != home] or good
        return others[next(self._rr) % len(others)]

    async def _invoke(self, rpc: Rpc[Any, R], req: MetaReq) -> R:
        """Call `rpc` on some meta, retrying retryable failures on others."""
        uid, gid, groups = _identity.get() or (self.uid, self.gid, ())
        fields: dict[str, Any] = {
            "uid": uid,
            "gid": gid,
            "client_id": self.client_id,
            "token": self.token,
        }
        if groups:
            fields["groups"] = list(groups)
        if rpc.mutating:
            fields["request_id"] = next(self._ids)
        if isinstance(req, OpenReq) and self.session_lease > 0:
            fields["lease"] = self.session_lease
            self._start_renewer()
        req = msgspec.structs.replace(req, **fields)

        async def attempt(n: int) -> R:
            address = await self._pick(refresh=n > 0, mutating=rpc.mutating)
            try:
                return await self._rpc(address).call(
                    rpc, req, timeout=self._call_timeout
                )
            except errors.Py3fsError as exc:
                if isinstance(exc, errors.RPCUnavailable | errors.RPCTimeout):
                    self._bad[address] = time.monotonic() + 5.0
                if exc.retryable:
                    logger.info(
                        "meta %s to %s failed (%s); retrying", rpc.title, address, exc
                    )
                raise

        # The first attempt outside the policy: nearly every call needs only
        # that one, and the policy's set-up (deadline, delays) costs µs.
        try:
            return await attempt(0)
        except errors.Py3fsError as exc:
            if not exc.retryable:
                raise
        return await self._retry.acall(
            lambda n: attempt(n + 1), what=f"meta {rpc.title}"
        )

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.session_lease / 3)
            try:
                await self.renew(RenewReq(ttl=self.session_lease))
            except errors.Py3fsError as exc:
                logger.warning("cannot renew write sessions: %s", exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


class MetaStub(Stub, MetaService):
    """Calls to one meta process as they are (tests, tools): no identity
    filled in, no retries."""
