"""chain_replication.states: 3FS's public target states, row by row and as a
state machine driven by random failures and recoveries."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chain_replication import states
from chain_replication.states import Replica
from py3fs.proto.messages import LocalState, TargetState

S, Y, W, L, OFF = (
    TargetState.SERVING,
    TargetState.SYNCING,
    TargetState.WAITING,
    TargetState.LASTSRV,
    TargetState.OFFLINE,
)
UP, ON, DOWN = LocalState.UPTODATE, LocalState.ONLINE, LocalState.OFFLINE


@pytest.mark.parametrize(
    ("local", "public", "pred", "want"),
    [
        (UP, S, False, S),
        (UP, Y, True, S),
        (UP, L, False, S),
        (UP, W, True, W),
        (UP, OFF, True, W),
        (ON, S, False, S),
        (ON, Y, True, Y),
        (ON, W, True, Y),
        (ON, Y, False, W),
        (ON, W, False, W),
        (ON, L, False, S),
        (ON, OFF, True, W),
        (DOWN, Y, True, OFF),
        (DOWN, W, True, OFF),
        (DOWN, L, False, L),
        (DOWN, OFF, False, OFF),
    ],
)
def test_transition_table(local: str, public: str, pred: bool, want: str) -> None:
    assert states.next_public(local, public, pred) == want


def chain(*spec: tuple[int, str, str]) -> list[Replica]:
    return [Replica(t, p, loc) for t, p, loc in spec]


def test_failed_head_moves_to_the_end() -> None:
    got = states.recompute(chain((1, S, DOWN), (2, S, UP), (3, S, UP)))
    assert got == [(2, S), (3, S), (1, OFF)]


def test_last_serving_becomes_lastsrv() -> None:
    got = states.recompute(chain((3, S, DOWN), (1, OFF, DOWN), (2, OFF, DOWN)))
    assert got == [(3, L), (1, OFF), (2, OFF)]
    # All at once: the old head is the one kept.
    got = states.recompute(chain((1, S, DOWN), (2, S, DOWN), (3, S, DOWN)))
    assert got == [(1, L), (2, OFF), (3, OFF)]


def test_returning_target_waits_then_syncs_then_serves() -> None:
    c = chain((2, S, UP), (3, S, UP), (1, OFF, ON))
    assert states.recompute(c) == [(2, S), (3, S), (1, W)]
    c = chain((2, S, UP), (3, S, UP), (1, W, ON))
    assert states.recompute(c) == [(2, S), (3, S), (1, Y)]
    c = chain((2, S, UP), (3, S, UP), (1, Y, UP))
    assert states.recompute(c) == [(2, S), (3, S), (1, S)]


def test_one_target_syncs_at_a_time() -> None:
    c = chain((3, S, UP), (1, W, ON), (2, W, ON))
    assert states.recompute(c) == [(3, S), (1, Y), (2, W)]


def test_chain_waits_for_lastsrv() -> None:
    c = chain((3, L, DOWN), (1, W, ON), (2, W, ON))
    assert states.recompute(c) == [(1, W), (2, W), (3, L)]
    c = chain((1, W, ON), (2, W, ON), (3, L, ON))
    assert states.recompute(c) == [(3, S), (1, Y), (2, W)]


class ChainMachine(RuleBasedStateMachine):
    """Random node deaths, returns and completed resyncs on one 3-replica chain."""

    def __init__(self) -> None:
        super().__init__()
        self.public = {1: S, 2: S, 3: S}
        self.order = [1, 2, 3]
        self.alive = {1: True, 2: True, 3: True}
        self.synced: set[int] = set()

    def _local(self, t: int) -> str:
        if not self.alive[t]:
            return DOWN
        if self.public[t] == S or (self.public[t] == Y and t in self.synced):
            return UP
        return ON

    def _step(self) -> None:
        got = states.recompute(
            [Replica(t, self.public[t], self._local(t)) for t in self.order]
        )
        for t, s in got:
            if s != Y:
                self.synced.discard(t)
        self.order = [t for t, _ in got]
        self.public = dict(got)

    @rule(t=st.sampled_from([1, 2, 3]))
    def kill(self, t: int) -> None:
        self.alive[t] = False
        self._step()

    @rule(t=st.sampled_from([1, 2, 3]))
    def restart(self, t: int) -> None:
        self.alive[t] = True
        self._step()

    @rule()
    def finish_sync(self) -> None:
        self.synced |= {t for t, s in self.public.items() if s == Y}
        self._step()

    @rule()
    def tick(self) -> None:
        self._step()

    @invariant()
    def chain_is_consistent(self) -> None:
        got = [self.public[t] for t in self.order]
        ranks = {S: 0, Y: 1, W: 1, L: 3, OFF: 4}
        assert [ranks[s] for s in got] == sorted(ranks[s] for s in got)
        assert got.count(Y) <= 1
        assert got.count(L) <= 1
        if L in got:
            assert S not in got
            assert Y not in got
        if Y in got:
            i = got.index(Y)
            assert i > 0
            assert got[i - 1] == S
        for t, s in self.public.items():
            if s in (S, Y, W):
                assert self.alive[t] or s == S  # a dead one leaves on the next step


ChainMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30)
TestChainMachine = ChainMachine.TestCase


def test_all_alive_converges_to_serving() -> None:
    public = {1: OFF, 2: OFF, 3: L}
    order = [1, 2, 3]
    for _ in range(10):
        got = states.recompute(
            [Replica(t, public[t], UP if public[t] == Y else ON) for t in order]
        )
        order = [t for t, _ in got]
        public = dict(got)
    assert set(public.values()) == {S}
