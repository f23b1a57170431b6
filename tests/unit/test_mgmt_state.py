"""mgmt_service.state.MgmtState with a fake clock: registration, heartbeats,
expiry, chain tables and the routing version."""

from __future__ import annotations

import msgspec
import pytest

from mgmt_service.state import MgmtState
from py3fs import errors
from py3fs.proto.messages import (
    HeartbeatReq,
    LocalState,
    RegisterNodeReq,
    RoutingInfo,
    TargetReport,
    TargetState,
)
from py3fs.routing import RoutingView

TIMEOUT = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> MgmtState:
    return MgmtState(TIMEOUT, clock=clock, wall_clock=lambda: 1.7e9)


def storage_targets(node_id: int) -> list[int]:
    return [node_id * 100 + i for i in range(1, 5)]


def register_storage(state: MgmtState, nodes: int = 3) -> None:
    for n in range(1, nodes + 1):
        state.register(
            RegisterNodeReq(
                node_id=n,
                role="storage",
                address=f"127.0.0.1:{9000 + n}",
                targets=storage_targets(n),
                pid=n,
            )
        )


def beat(state: MgmtState, node_id: int, local: str = "", **stats: int) -> int:
    reports = [
        TargetReport(target_id=t, local_state=local, **stats)
        for t in storage_targets(node_id)
    ]
    return state.heartbeat(
        HeartbeatReq(
            node_id=node_id,
            role="storage",
            address=f"127.0.0.1:{9000 + node_id}",
            targets=reports,
            pid=node_id,
        )
    )


def test_register_creates_serving_targets(state: MgmtState) -> None:
    register_storage(state)
    view = RoutingView(state.routing())
    assert sorted(view.nodes) == [1, 2, 3]
    assert len(view.targets) == 12
    assert all(t.state == TargetState.SERVING for t in view.targets.values())
    assert view.targets[203].node_id == 2
    assert view.version == 3


def test_reregistering_unchanged_node_keeps_version(state: MgmtState) -> None:
    register_storage(state)
    version = state.version
    register_storage(state)
    assert state.version == version


def test_register_rejects_bad_requests(state: MgmtState) -> None:
    with pytest.raises(errors.InvalidArgument):
        state.register(RegisterNodeReq(node_id=0, role="storage", address="x"))
    with pytest.raises(errors.InvalidArgument):
        state.register(RegisterNodeReq(node_id=1, role="", address="x"))


def test_chain_table(state: MgmtState) -> None:
    register_storage(state)
    view = RoutingView(state.create_chain_table(replicas=3))
    table = view.table(1)
    assert len(table.chains) == 4
    assert table.chains == [1, 2, 3, 4]
    used = [t for c in table.chains for t in view.chain(c).targets]
    assert sorted(used) == sorted(view.targets)
    for chain_id in table.chains:
        chain = view.chain(chain_id)
        assert chain.version == 1
        assert len({view.targets[t].node_id for t in chain.targets}) == 3
    assert len({view.targets[view.head(c)].node_id for c in table.chains}) == 3


def test_chain_table_is_idempotent(state: MgmtState) -> None:
    register_storage(state)
    first = state.create_chain_table(replicas=3)
    again = state.create_chain_table(replicas=3)
    assert again == first
    # even when asked for another replica count: the table already exists
    assert state.create_chain_table(replicas=2) == first


def test_second_table_shares_chains(state: MgmtState) -> None:
    register_storage(state)
    state.create_chain_table(replicas=3)
    view = RoutingView(state.create_chain_table(replicas=3, table_id=2))
    assert view.table(2).chains == view.table(1).chains
    with pytest.raises(errors.InvalidArgument):
        state.create_chain_table(replicas=2, table_id=3)


def test_chain_table_needs_enough_nodes(state: MgmtState) -> None:
    register_storage(state, nodes=2)
    with pytest.raises(errors.InvalidArgument):
        state.create_chain_table(replicas=3)
    with pytest.raises(errors.InvalidArgument):
        state.create_chain_table(replicas=0)
    assert state.routing().tables == []


def test_meta_nodes_hold_no_targets(state: MgmtState) -> None:
    register_storage(state, nodes=2)
    state.register(RegisterNodeReq(node_id=9, role="meta", address="127.0.0.1:1"))
    with pytest.raises(errors.InvalidArgument):
        state.create_chain_table(replicas=3)


def test_heartbeat_stats_do_not_bump_version(state: MgmtState) -> None:
    register_storage(state)
    version = state.version
    assert beat(state, 2, used_bytes=10, total_bytes=100, chunk_count=3) == version
    target = RoutingView(state.routing()).targets[201]
    assert (target.used_bytes, target.total_bytes, target.chunk_count) == (10, 100, 3)
    assert state.version == version


def test_heartbeat_from_unknown_node_registers_it(state: MgmtState) -> None:
    version = beat(state, 5)
    view = RoutingView(state.routing())
    assert view.version == version == 1
    assert view.nodes[5].up
    assert sorted(view.targets) == storage_targets(5)


def test_silent_node_goes_down_and_comes_back(
    state: MgmtState, clock: FakeClock
) -> None:
    register_storage(state)
    state.create_chain_table(replicas=3)
    before = RoutingView(state.routing())

    clock.now += TIMEOUT / 2
    beat(state, 1)
    beat(state, 3)
    assert state.expire() == []
    clock.now += TIMEOUT / 2 + 0.1  # node 2 silent for TIMEOUT + 0.1 s
    beat(state, 1)
    beat(state, 3)
    assert state.expire() == [2]
    assert state.expire() == []  # already down: no second bump

    view = RoutingView(state.routing())
    assert view.version == before.version + 1
    assert not view.nodes[2].up
    assert all(
        (t.state == TargetState.OFFLINE) == (t.node_id == 2)
        for t in view.targets.values()
    )
    for chain_id in view.table(1).chains:
        chain, old = view.chain(chain_id), before.chain(chain_id)
        assert chain.version == 2
        assert sorted(chain.targets) == sorted(old.targets)
        # the offline replica moved to the end; the others kept their order
        assert view.targets[chain.targets[-1]].node_id == 2
        assert [t for t in chain.targets if t // 100 != 2] == [
            t for t in old.targets if t // 100 != 2
        ]
        assert len(view.writable_targets(chain_id)) == 2

    # Back: waiting first, then syncing (writable, not readable), then serving
    # once the node reports the resync done.
    beat(state, 2, local=LocalState.ONLINE)
    view = RoutingView(state.routing())
    assert view.nodes[2].up
    assert {t.state for t in view.targets.values() if t.node_id == 2} == {
        TargetState.WAITING
    }
    beat(state, 2, local=LocalState.ONLINE)
    view = RoutingView(state.routing())
    for chain_id in view.table(1).chains:
        chain = view.chain(chain_id)
        assert view.targets[chain.targets[-1]].state == TargetState.SYNCING
        assert len(view.writable_targets(chain_id)) == 3
        assert len(view.serving_targets(chain_id)) == 2
    beat(state, 2, local=LocalState.UPTODATE)
    view = RoutingView(state.routing())
    assert all(t.state == TargetState.SERVING for t in view.targets.values())
    assert all(view.chain(c).version == 5 for c in view.table(1).chains)


def test_restart_sends_targets_through_recovery(state: MgmtState) -> None:
    register_storage(state)
    state.create_chain_table(replicas=3)
    register_storage(state, nodes=1)  # node 1 restarted within the timeout
    view = RoutingView(state.routing())
    assert {t.state for t in view.targets.values() if t.node_id == 1} == {
        TargetState.OFFLINE
    }
    for chain_id in view.table(1).chains:
        assert view.chain(chain_id).targets[-1] // 100 == 1


def test_last_serving_target_is_waited_for(state: MgmtState, clock: FakeClock) -> None:
    register_storage(state)
    state.create_chain_table(replicas=3)
    clock.now += TIMEOUT + 1
    assert state.expire() == [1, 2, 3]
    view = RoutingView(state.routing())
    for chain_id in view.table(1).chains:
        got = [view.targets[t].state for t in view.chain(chain_id).targets]
        assert got == [TargetState.LASTSRV, TargetState.OFFLINE, TargetState.OFFLINE]


def test_reregister_brings_node_back(state: MgmtState, clock: FakeClock) -> None:
    register_storage(state)
    clock.now += TIMEOUT + 1
    assert state.expire() == [1, 2, 3]
    register_storage(state, nodes=1)
    view = RoutingView(state.routing())
    assert [n.node_id for n in view.nodes.values() if n.up] == [1]
    assert view.targets[101].state == TargetState.SERVING
    assert view.targets[201].state == TargetState.OFFLINE


def test_restored_state_gives_nodes_a_grace_period(clock: FakeClock) -> None:
    first = MgmtState(TIMEOUT, clock=clock)
    register_storage(first)
    first.create_chain_table(replicas=3)
    raw = msgspec.msgpack.encode(first.routing())

    clock.now += 3600  # mgmtd was down for an hour
    second = MgmtState(
        TIMEOUT, clock=clock, initial=msgspec.msgpack.decode(raw, type=RoutingInfo)
    )
    assert second.routing() == first.routing()
    assert second.expire() == []
    clock.now += TIMEOUT + 1
    assert second.expire() == [1, 2, 3]
    assert second.version == first.version + 1


def test_decommission_replaces_targets_through_resync(state: MgmtState) -> None:
    register_storage(state)
    state.create_chain_table(3)
    with pytest.raises(errors.InvalidArgument, match="no spare target"):
        state.decommission(1)  # every target is in a chain: nothing to drain into
    assert not RoutingView(state.routing()).nodes[1].decommissioned
    state.register(
        RegisterNodeReq(
            node_id=4,
            role="storage",
            address="127.0.0.1:9004",
            targets=storage_targets(4),
        )
    )
    with pytest.raises(errors.NotFound):
        state.decommission(99)
    view = RoutingView(state.decommission(1))
    assert view.nodes[1].decommissioned
    for chain in view.chains.values():
        # The node's target still serves while the replacement waits at the end.
        assert len(chain.targets) == 4
        assert view.targets[chain.targets[-1]].node_id == 4
        assert view.targets[chain.targets[-1]].state == TargetState.WAITING
    # Again (a resumed drain): no second replacement.
    assert all(len(c.targets) == 4 for c in state.decommission(1).chains)
    beat(state, 2)  # other nodes' heartbeats do not end the drain early
    assert all(len(c.targets) == 4 for c in state.routing().chains)
    beat(state, 4, LocalState.ONLINE)  # node 4 saw the routing: resync starts
    view = RoutingView(state.routing())
    assert {view.targets[t].state for t in storage_targets(4)} == {TargetState.SYNCING}
    assert all(len(c.targets) == 4 for c in view.chains.values())
    beat(state, 4, LocalState.UPTODATE)  # resync done
    view = RoutingView(state.routing())
    for chain in view.chains.values():
        assert len(chain.targets) == 3
        assert {view.targets[t].node_id for t in chain.targets} == {2, 3, 4}
        assert view.serving_targets(chain.chain_id) == chain.targets
        assert chain.replicas == 0  # drain over
    # Heartbeats keep the mark, and the node is placed in no new table.
    beat(state, 1)
    assert RoutingView(state.routing()).nodes[1].decommissioned
    with pytest.raises(errors.InvalidArgument):
        state.create_chain_table(2, table_id=2)
