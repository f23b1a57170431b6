"""Which meta a MetaClient sends each call to (no sockets: `_pick` only)."""

from __future__ import annotations

from typing import Any

from client.meta_client import MetaClient
from py3fs.proto.messages import NodeInfo, RoutingInfo
from py3fs.routing import RoutingView


class _Routing:
    """A routing cache that always has `view` (RoutingCache's get/refresh)."""

    def __init__(self, view: RoutingView) -> None:
        self.view = view

    async def get(self) -> RoutingView:
        return self.view

    async def refresh(self, stale: RoutingView | None = None) -> RoutingView:
        return self.view


def _client(metas: list[str], client_id: str) -> MetaClient:
    nodes = [
        NodeInfo(node_id=11 + i, role="meta", address=a) for i, a in enumerate(metas)
    ]
    routing: Any = _Routing(RoutingView(RoutingInfo(version=1, nodes=nodes)))
    return MetaClient(routing, client_id)


async def test_writes_go_to_one_home_meta_reads_to_the_others() -> None:
    metas = ["127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"]
    homes = set()
    for k in range(20):
        meta = _client(metas, f"client-{k}")
        writes = {await meta._pick(refresh=False, mutating=True) for _ in range(10)}
        assert len(writes) == 1  # one home per client
        home = writes.pop()
        homes.add(home)
        reads = [await meta._pick(refresh=False, mutating=False) for _ in range(10)]
        assert home not in reads
        assert set(reads) == set(metas) - {home}  # rotating over the others
    assert len(homes) > 1  # clients spread over the metas


async def test_a_failed_home_meta_is_skipped_until_its_time_is_up() -> None:
    metas = ["127.0.0.1:1001", "127.0.0.1:1002"]
    meta = _client(metas, "client-x")
    home = await meta._pick(refresh=False, mutating=True)
    meta._bad[home] = float("inf")
    other = await meta._pick(refresh=False, mutating=True)
    assert other != home
    assert await meta._pick(refresh=False, mutating=False) == other  # alone now
    meta._bad[home] = 0.0  # expired
    assert await meta._pick(refresh=False, mutating=True) == home
    assert not meta._bad


async def test_a_single_meta_serves_everything() -> None:
    meta = _client(["127.0.0.1:1001"], "client-y")
    assert await meta._pick(refresh=False, mutating=True) == "127.0.0.1:1001"
    assert await meta._pick(refresh=False, mutating=False) == "127.0.0.1:1001"
