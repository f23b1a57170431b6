"""Client of mgmtd used by every other process: register, heartbeat, routing.

Holds one RpcClient per configured mgmtd address and fails over between them on
transport errors and NotPrimary (a standby answers that once mgmtd HA exists).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

from py3fs import caps, errors
from py3fs.proto import mgmt_pb2_grpc
from py3fs.proto.messages import (
    MGMT_RPCS,
    CreateChainTableReq,
    DecommissionReq,
    GetRoutingReq,
    HeartbeatReply,
    HeartbeatReq,
    Msg,
    RegisterNodeReq,
    RoutingInfo,
)
from py3fs.retry import RetryPolicy
from py3fs.routing import RoutingView
from py3fs.rpc import RpcClient
from py3fs.tls import Tls

logger = logging.getLogger(__name__)
R = TypeVar("R", bound=Msg)
T = TypeVar("T", bound=Msg)

# Three rounds over the configured mgmtds; a standby answers NotPrimary.
_FAILOVER = RetryPolicy(
    initial=0.1,
    maximum=1.0,
    timeout=None,
    retry_on=lambda exc: isinstance(
        exc, errors.RPCUnavailable | errors.RPCTimeout | errors.NotPrimary
    ),
)


class MgmtClient:
    def __init__(
        self,
        addresses: list[str],
        timeout: float = 10.0,
        keys: caps.Keys | None = None,
        tls: Tls | None = None,
    ) -> None:
        # Services and admin tools sign registrations, heartbeats, chain-table
        # creation and decommissions with the cluster secret; clients only
        # read routing and hold no key.
        self._keys = keys
        if not addresses:
            raise errors.InvalidArgument("no mgmtd address configured")
        self._clients = [
            RpcClient(a, mgmt_pb2_grpc.MgmtStub, MGMT_RPCS, timeout, tls)
            for a in addresses
        ]
        self._current = 0

    async def _call(self, method: str, req: Msg, reply_type: type[R]) -> R:
        def next_mgmtd(exc: BaseException, n: int) -> None:
            self._current = (self._current + 1) % len(self._clients)

        async def attempt(n: int) -> R:
            client = self._clients[self._current]
            return await client.call(method, req, reply_type)

        policy = dataclasses.replace(_FAILOVER, attempts=3 * len(self._clients))
        return await policy.acall(attempt, what=f"mgmtd {method}", on_retry=next_mgmtd)

    def _signed(self, req: T) -> T:
        return req if self._keys is None else self._keys.sign(req)

    async def register(self, req: RegisterNodeReq) -> RoutingView:
        req = self._signed(req)
        return RoutingView(await self._call("RegisterNode", req, RoutingInfo))

    async def heartbeat(self, req: HeartbeatReq) -> HeartbeatReply:
        return await self._call("Heartbeat", self._signed(req), HeartbeatReply)

    async def routing(self) -> RoutingView:
        info = await self._call("GetRouting", GetRoutingReq(), RoutingInfo)
        return RoutingView(info)

    async def create_chain_table(self, replicas: int, table_id: int = 1) -> RoutingView:
        req = self._signed(CreateChainTableReq(replicas=replicas, table_id=table_id))
        return RoutingView(await self._call("CreateChainTable", req, RoutingInfo))

    async def decommission(self, node_id: int) -> RoutingView:
        req = self._signed(DecommissionReq(node_id=node_id))
        return RoutingView(await self._call("Decommission", req, RoutingInfo))

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
