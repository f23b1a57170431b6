"""mgmtd's cluster state: nodes, targets, chains, chain tables, and liveness.

`MgmtState` is plain synchronous logic over an in-memory `RoutingInfo`; the server
persists `routing()` whenever `version` moves. The routing version is bumped on
every structural change (membership, node up/down, target states, chains, tables)
and never on mere stat updates, so routing caches can compare versions cheaply.

Liveness uses the injected monotonic `clock` (a wall-clock jump must not expire
the cluster); `last_heartbeat` in `NodeInfo` is wall time, for display only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from chain_replication import states
from chain_replication.placement import make_chains
from py3fs import errors
from py3fs.proto.messages import (
    ChainInfo,
    ChainTable,
    HeartbeatReq,
    LocalState,
    NodeInfo,
    RegisterNodeReq,
    RoutingInfo,
    TargetInfo,
    TargetReport,
    TargetState,
)

logger = logging.getLogger(__name__)
_replace = msgspec.structs.replace

STORAGE = "storage"


class MgmtState:
    """The routing state of one mgmtd. Not thread-safe: call it from one loop."""

    def __init__(
        self,
        heartbeat_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        initial: RoutingInfo | None = None,
        *,
        max_targets_per_node: int = 256,
        max_nodes: int = 4096,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.max_targets_per_node = max_targets_per_node
        self.max_nodes = max_nodes
        self._clock = clock
        self._wall = wall_clock
        initial = initial or RoutingInfo()
        self.version = initial.version
        self._nodes = {n.node_id: n for n in initial.nodes}
        self._targets = {t.target_id: t for t in initial.targets}
        self._chains = {c.chain_id: c for c in initial.chains}
        self._tables = {t.table_id: t for t in initial.tables}
        # Restored nodes get a full timeout from our start before they expire:
        # their heartbeats went to the previous mgmtd.
        now = clock()
        self._last_seen = {node_id: now for node_id in self._nodes}
        # Local target states from heartbeats; not persisted: a new primary starts
        # from "online" and hears the truth within a heartbeat interval.
        self._local: dict[int, str] = {}

    # ------------------------------------------------------------------ queries

    def routing(self) -> RoutingInfo:
        """Everything, stats included, sorted by id."""
        return RoutingInfo(
            version=self.version,
            nodes=[self._nodes[k] for k in sorted(self._nodes)],
            targets=[self._targets[k] for k in sorted(self._targets)],
            chains=[self._chains[k] for k in sorted(self._chains)],
            tables=[self._tables[k] for k in sorted(self._tables)],
        )

    # ------------------------------------------------------------------ updates

    def register(self, req: RegisterNodeReq) -> RoutingInfo:
        """Add or update a node and (for storage) its targets.

        Registering is what a starting process does, so a known node registering
        again has restarted: whatever its targets held may have missed writes, and
        they go through recovery (offline, then waiting, syncing, serving) as in
        3FS, where a restarting node reports its targets offline."""
        self._check_node(req.node_id, req.role)
        self._check_bounds(req.node_id, req.targets)
        changed = self._touch_node(
            req.node_id, req.role, req.address, req.pid, req.http
        )
        for target_id in req.targets:
            changed |= self._ensure_target(target_id, req.node_id)
        changed |= self._prune(req.node_id, set(req.targets))
        mine = {t for t in req.targets if self._in_chain(t)}
        changed |= self._recompute(force_offline=mine)
        for target_id in req.targets:
            self._local[target_id] = LocalState.ONLINE
        if changed:
            self._bump()
        return self.routing()

    def heartbeat(self, req: HeartbeatReq) -> int:
        """Record liveness and target stats; returns the routing version. An unknown
        node is registered, so a restarted mgmtd keeps working with live nodes."""
        self._check_node(req.node_id, req.role)
        self._check_bounds(req.node_id, [r.target_id for r in req.targets])
        changed = self._touch_node(req.node_id, req.role, req.address, req.pid)
        for report in req.targets:
            changed |= self._ensure_target(report.target_id, req.node_id)
            self._record_stats(report)
            self._local[report.target_id] = report.local_state or LocalState.ONLINE
        changed |= self._recompute()
        if changed:
            self._bump()
        return self.version

    def expire(self, now: float | None = None) -> list[int]:
        """Mark nodes silent for longer than the heartbeat timeout down and their
        targets offline; returns the ids of the nodes marked down."""
        now = self._clock() if now is None else now
        expired = [
            node_id
            for node_id, node in self._nodes.items()
            if node.up and now - self._last_seen[node_id] > self.heartbeat_timeout
        ]
        for node_id in expired:
            logger.info(
                "node %d (%s) missed heartbeats for %.1fs: marking it down",
                node_id,
                self._nodes[node_id].role,
                now - self._last_seen[node_id],
            )
            self._nodes[node_id] = _replace(self._nodes[node_id], up=False)
        if expired:
            self._recompute()
            self._bump()
        return expired

    def create_chain_table(self, replicas: int, table_id: int = 1) -> RoutingInfo:
        """Create chain table `table_id` with chains of `replicas` targets on
        distinct nodes, from serving storage targets in no chain yet (or, when none
        are left, from the existing chains of that length). Idempotent: an existing
        table is returned unchanged. Raises InvalidArgument when no chain can be
        formed."""
        if table_id < 1:
            raise errors.InvalidArgument(f"table id must be >= 1, got {table_id}")
        if table_id in self._tables:
            return self.routing()
        if replicas < 1:
            raise errors.InvalidArgument(f"replicas must be >= 1, got {replicas}")
        in_chains = {t for c in self._chains.values() for t in c.targets}
        free: dict[int, list[int]] = {}
        for target in self._targets.values():
            if (
                target.target_id not in in_chains
                and target.state == TargetState.SERVING
                and self._placeable(target.node_id)
            ):
                free.setdefault(target.node_id, []).append(target.target_id)
        chain_ids: list[int]
        if len(free) >= replicas:
            next_id = max(self._chains, default=0) + 1
            chain_ids = []
            for i, targets in enumerate(make_chains(free, replicas)):
                chain = ChainInfo(chain_id=next_id + i, version=1, targets=targets)
                self._chains[chain.chain_id] = chain
                chain_ids.append(chain.chain_id)
        else:
            # Tables may share chains (3FS does): a second table over a cluster
            # whose targets are all placed reuses the chains of the right length.
            chain_ids = sorted(
                c.chain_id for c in self._chains.values() if len(c.targets) == replicas
            )
        if not chain_ids:
            raise errors.InvalidArgument(
                f"cannot build chains of {replicas} replicas: free serving targets "
                f"on {len(free)} storage nodes"
            )
        self._tables[table_id] = ChainTable(
            table_id=table_id, version=1, chains=chain_ids
        )
        logger.info(
            "created chain table %d: %d chains of %d replicas",
            table_id,
            len(chain_ids),
            replicas,
        )
        self._bump()
        return self.routing()

    def decommission(self, node_id: int) -> RoutingInfo:
        """Drain storage node `node_id`: every chain holding one of its targets
        gets a replacement target from another node (a spare, in no chain) at
        its end, which waits, is resynced by its predecessor and serves; then
        `_finish_drains` takes the node's target out of the chain. The node is
        marked decommissioned and placed in no new chain. Raises NotFound for an
        unknown storage node and InvalidArgument when a chain has no spare.
        Calling it again resumes a drain."""
        node = self._nodes.get(node_id)
        if node is None or node.role != STORAGE:
            raise errors.NotFound(f"no storage node {node_id}")
        draining = [
            c
            for c in self._chains.values()
            if any(self._targets[t].node_id == node_id for t in c.targets)
        ]
        in_chains = {t for c in self._chains.values() for t in c.targets}
        spares = sorted(
            t.target_id
            for t in self._targets.values()
            if t.target_id not in in_chains
            and t.state == TargetState.SERVING
            and self._placeable(t.node_id)
            and t.node_id != node_id
        )
        plan: dict[int, int] = {}
        for chain in draining:
            want = chain.replicas or len(chain.targets)
            if len(self._live_targets(chain, node_id)) >= want:
                continue  # its replacement is already there (a resumed drain)
            nodes = {self._targets[t].node_id for t in chain.targets}
            pick = next(
                (
                    t
                    for t in spares
                    if self._targets[t].node_id not in nodes and t not in plan.values()
                ),
                None,
            )
            if pick is None:
                raise errors.InvalidArgument(
                    f"no spare target off chain {chain.chain_id}'s nodes to replace "
                    f"node {node_id}'s target"
                )
            plan[chain.chain_id] = pick
        self._nodes[node_id] = _replace(node, decommissioned=True)
        for chain_id, target_id in plan.items():
            chain = self._chains[chain_id]
            # Waiting, not serving: its data is trusted only after a resync.
            self._targets[target_id] = _replace(
                self._targets[target_id], state=TargetState.WAITING
            )
            # It syncs only once its node reports it online, i.e. has seen it
            # join the chain (a free target reports up to date), as a target
            # coming back waits a round.
            self._local[target_id] = LocalState.UPTODATE
            self._chains[chain_id] = _replace(
                chain,
                version=chain.version + 1,
                targets=[*chain.targets, target_id],
                replicas=chain.replicas or len(chain.targets),
            )
            logger.info(
                "chain %d: target %d replaces node %d's", chain_id, target_id, node_id
            )
        self._recompute()
        self._bump()
        return self.routing()

    # ------------------------------------------------------------------ internals

    def _placeable(self, node_id: int) -> bool:
        node = self._nodes.get(node_id)
        return (
            node is not None
            and node.up
            and node.role == STORAGE
            and not node.decommissioned
        )

    def _live_targets(self, chain: ChainInfo, leaving: int = 0) -> list[int]:
        """The chain's targets on nodes that stay (not decommissioned, not
        `leaving`)."""
        out = []
        for t in chain.targets:
            node = self._nodes.get(self._targets[t].node_id)
            if node is None or not (node.decommissioned or node.node_id == leaving):
                out.append(t)
        return out

    def _finish_drains(self) -> bool:
        """Take decommissioned nodes' targets out of the draining chains once
        the targets that stay are as many as the chain had and all serve (the
        replacement finished its resync)."""
        changed = False
        for chain in list(self._chains.values()):
            if not chain.replicas:
                continue
            rest = self._live_targets(chain)
            gone = [t for t in chain.targets if t not in rest]
            if len(rest) < chain.replicas or any(
                self._targets[t].state != TargetState.SERVING for t in rest
            ):
                continue
            self._chains[chain.chain_id] = _replace(
                chain, version=chain.version + 1, targets=rest, replicas=0
            )
            logger.info(
                "chain %d version %d: decommissioned target(s) %s removed",
                chain.chain_id,
                chain.version + 1,
                gone,
            )
            changed = True
        return changed

    def _bump(self) -> None:
        self.version += 1
        logger.debug("routing version %d", self.version)

    @staticmethod
    def _check_node(node_id: int, role: str) -> None:
        if node_id < 1:
            raise errors.InvalidArgument(f"node id must be >= 1, got {node_id}")
        if not role:
            raise errors.InvalidArgument(f"node {node_id} did not say its role")

    def _check_bounds(self, node_id: int, targets: list[int]) -> None:
        """Refuse reports that would grow routing without bound: too many
        targets for one node, a target another live node owns, or one node too
        many. Routing is what every process fetches on each change."""
        if len(targets) > self.max_targets_per_node:
            raise errors.InvalidArgument(
                f"node {node_id} reports {len(targets)} targets; "
                f"at most {self.max_targets_per_node} per node"
            )
        if node_id not in self._nodes and len(self._nodes) >= self.max_nodes:
            raise errors.InvalidArgument(
                f"cluster already has {self.max_nodes} nodes; not adding {node_id}"
            )
        for target_id in targets:
            old = self._targets.get(target_id)
            if old is not None and old.node_id != node_id:
                owner = self._nodes.get(old.node_id)
                if owner is not None and owner.up:
                    raise errors.InvalidArgument(
                        f"target {target_id} belongs to live node {old.node_id}"
                    )

    def _prune(self, node_id: int, reported: set[int]) -> bool:
        """Forget the node's targets it no longer has that no chain uses."""
        gone = [
            t.target_id
            for t in self._targets.values()
            if t.node_id == node_id
            and t.target_id not in reported
            and not self._in_chain(t.target_id)
        ]
        for target_id in gone:
            del self._targets[target_id]
            self._local.pop(target_id, None)
        if gone:
            logger.info("node %d no longer has targets %s: pruned", node_id, gone)
        return bool(gone)

    def _touch_node(
        self, node_id: int, role: str, address: str, pid: int, http: str = ""
    ) -> bool:
        """Mark the node alive now; True if anything but its heartbeat time changed.
        Heartbeats do not repeat the HTTP address: the registered one is kept."""
        self._last_seen[node_id] = self._clock()
        old = self._nodes.get(node_id)
        new = NodeInfo(
            node_id=node_id,
            role=role,
            address=address,
            up=True,
            last_heartbeat=self._wall(),
            pid=pid,
            http=http or (old.http if old is not None else ""),
            decommissioned=old is not None and old.decommissioned,
        )
        self._nodes[node_id] = new
        if old is None:
            logger.info("node %d (%s) registered at %s", node_id, role, address)
            return True
        if old.up:
            return _replace(old, last_heartbeat=new.last_heartbeat) != new
        logger.info("node %d (%s) is back at %s", node_id, role, address)
        return True

    def _ensure_target(self, target_id: int, node_id: int) -> bool:
        old = self._targets.get(target_id)
        if old is None:
            self._targets[target_id] = TargetInfo(target_id=target_id, node_id=node_id)
            return True
        if old.node_id != node_id:
            logger.warning(
                "target %d moved from node %d to node %d",
                target_id,
                old.node_id,
                node_id,
            )
            self._targets[target_id] = _replace(old, node_id=node_id)
            return True
        return False

    def _record_stats(self, report: TargetReport) -> None:
        self._targets[report.target_id] = _replace(
            self._targets[report.target_id],
            used_bytes=report.used_bytes,
            free_bytes=report.free_bytes,
            total_bytes=report.total_bytes,
            chunk_count=report.chunk_count,
            device=report.device,
        )

    def _in_chain(self, target_id: int) -> bool:
        return any(target_id in c.targets for c in self._chains.values())

    def _local_state(self, target: TargetInfo) -> str:
        node = self._nodes.get(target.node_id)
        if node is None or not node.up:
            return LocalState.OFFLINE
        return self._local.get(target.target_id, LocalState.ONLINE)

    def _recompute(
        self, force_offline: set[int] | frozenset[int] = frozenset()
    ) -> bool:
        """Apply 3FS's public-state transitions to every chain (and up/down to
        targets in no chain); bumps the version of each chain that changed.
        Returns True if anything changed."""
        changed = False
        in_chains: set[int] = set()
        for chain in list(self._chains.values()):
            replicas = [
                states.Replica(
                    t,
                    self._targets[t].state,
                    LocalState.OFFLINE
                    if t in force_offline
                    else self._local_state(self._targets[t]),
                )
                for t in chain.targets
            ]
            in_chains.update(chain.targets)
            result = states.recompute(replicas)
            order = [t for t, _ in result]
            moved = [(t, s) for t, s in result if self._targets[t].state != s]
            if order == chain.targets and not moved:
                continue
            for target_id, state in moved:
                self._targets[target_id] = _replace(
                    self._targets[target_id], state=state
                )
                logger.info("target %d is now %s", target_id, state)
            self._chains[chain.chain_id] = _replace(
                chain, version=chain.version + 1, targets=order
            )
            logger.info(
                "chain %d version %d: %s",
                chain.chain_id,
                chain.version + 1,
                ", ".join(f"{t}:{self._targets[t].state}" for t in order),
            )
            changed = True
        changed |= self._finish_drains()
        in_chains = {t for c in self._chains.values() for t in c.targets}
        for target in list(self._targets.values()):
            if target.target_id in in_chains:
                continue
            up = self._local_state(target) != LocalState.OFFLINE
            state = TargetState.SERVING if up else TargetState.OFFLINE
            if target.state != state:
                self._targets[target.target_id] = _replace(target, state=state)
                changed = True
        return changed
