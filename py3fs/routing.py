"""A read-only view of mgmtd's routing info with the lookups everyone needs.

Storage uses it to find its successor in a chain, meta to pick chains for a new
file and to reach chain heads for GC, clients to find the targets of a chunk.
"""

from __future__ import annotations

from py3fs import errors
from py3fs.proto.messages import (
    ChainInfo,
    ChainTable,
    NodeInfo,
    RoutingInfo,
    TargetInfo,
    TargetState,
)


class RoutingView:
    def __init__(self, info: RoutingInfo) -> None:
        self.info = info
        self.version = info.version
        self.nodes: dict[int, NodeInfo] = {n.node_id: n for n in info.nodes}
        self.targets: dict[int, TargetInfo] = {t.target_id: t for t in info.targets}
        self.chains: dict[int, ChainInfo] = {c.chain_id: c for c in info.chains}
        self.tables: dict[int, ChainTable] = {t.table_id: t for t in info.tables}

    def chain(self, chain_id: int) -> ChainInfo:
        try:
            return self.chains[chain_id]
        except KeyError:
            raise errors.RoutingUnavailable(f"unknown chain {chain_id}") from None

    def table(self, table_id: int) -> ChainTable:
        try:
            return self.tables[table_id]
        except KeyError:
            raise errors.NoChainTable(f"no chain table {table_id} yet") from None

    def target_address(self, target_id: int) -> str:
        """Data-plane address of the storage node holding `target_id`."""
        try:
            node = self.nodes[self.targets[target_id].node_id]
        except KeyError:
            raise errors.RoutingUnavailable(f"unknown target {target_id}") from None
        return node.address

    def serving_targets(self, chain_id: int) -> list[int]:
        """The chain's targets that may serve reads, head first."""
        return [
            t
            for t in self.chain(chain_id).targets
            if self.targets.get(t) is not None
            and self.targets[t].state == TargetState.SERVING
        ]

    def writable_targets(self, chain_id: int) -> list[int]:
        """The chain's targets taking part in writes (serving or syncing), in order."""
        ok = (TargetState.SERVING, TargetState.SYNCING)
        return [
            t
            for t in self.chain(chain_id).targets
            if self.targets.get(t) is not None and self.targets[t].state in ok
        ]

    def head(self, chain_id: int) -> int:
        writable = self.writable_targets(chain_id)
        if not writable:
            raise errors.TargetNotServing(f"chain {chain_id} has no writable target")
        return writable[0]

    def successor(self, chain_id: int, target_id: int) -> int | None:
        """The next writable target after `target_id`, or None at the tail."""
        writable = self.writable_targets(chain_id)
        try:
            i = writable.index(target_id)
        except ValueError:
            raise errors.TargetNotServing(
                f"target {target_id} is not writable in chain {chain_id}"
            ) from None
        return writable[i + 1] if i + 1 < len(writable) else None

    def nodes_of_role(self, role: str) -> list[NodeInfo]:
        return [n for n in self.info.nodes if n.role == role and n.up]
