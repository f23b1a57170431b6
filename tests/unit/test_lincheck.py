"""The linearizability checker (tests/lincheck.py): it rejects planted bad
histories, including the new-then-old inversion a per-read check lets through,
and accepts histories produced by a real (atomic) register under concurrency."""

from __future__ import annotations

import math
import random

import pytest
from lincheck import READ, WRITE, NotLinearizable, Op, check


def w(value: str, start: float, end: float, key: str = "k") -> Op:
    return Op(WRITE, key, value, start, end)


def r(value: str | None, start: float, end: float, key: str = "k") -> Op:
    return Op(READ, key, value, start, end)


def test_sequential_history_passes() -> None:
    assert check([w("a", 0, 1), w("b", 2, 3), r("b", 4, 5)]) == 3


def test_initial_value_and_none() -> None:
    check([r("i", 0, 1), w("a", 2, 3), r("a", 4, 5)], {"k": "i"})
    check([r(None, 0, 1)])
    with pytest.raises(NotLinearizable):
        check([r("x", 0, 1)], {"k": "i"})


def test_stale_read_after_completed_write_is_rejected() -> None:
    with pytest.raises(NotLinearizable, match="key 'k'"):
        check([w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)])


def test_new_then_old_inversion_under_a_concurrent_write_is_rejected() -> None:
    """b's write is still in flight when b is read; a later read returning a
    again is impossible. Each read alone is plausible (what the old per-read
    check tested), together they are not."""
    history = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4), r("a", 5, 6)]
    with pytest.raises(NotLinearizable) as info:
        check(history)
    assert info.value.key == "k"
    # The same reads in the other order are fine: b took effect after 4.
    check([w("a", 0, 1), w("b", 2, 10), r("a", 3, 4), r("b", 5, 6)])


def test_inversion_seen_by_two_clients() -> None:
    history = [
        w("a", 0, 1),
        w("b", 2, 20),
        Op(READ, "k", "b", 3, 4, client=1),
        Op(READ, "k", "a", 5, 6, client=2),
    ]
    with pytest.raises(NotLinearizable):
        check(history)


def test_read_from_the_future_and_invented_values_are_rejected() -> None:
    with pytest.raises(NotLinearizable):
        check([r("a", 0, 1), w("a", 2, 3)])
    with pytest.raises(NotLinearizable):
        check([w("a", 0, 1), r("zz", 2, 3)])


def test_overlapping_writes_may_take_effect_in_either_order() -> None:
    check([w("a", 0, 5), w("b", 1, 4), r("a", 6, 7)])
    check([w("a", 0, 5), w("b", 1, 4), r("b", 6, 7)])
    # ...but once one order is observed, it sticks.
    with pytest.raises(NotLinearizable):
        check([w("a", 0, 5), w("b", 1, 4), r("a", 6, 7), r("b", 8, 9)])


def test_write_of_unknown_outcome() -> None:
    lost = w("x", 1, math.inf)
    check([w("a", 0, 0.5), lost, r("a", 5, 6)])  # never took effect
    check([w("a", 0, 0.5), lost, r("x", 5, 6)])  # took effect late
    with pytest.raises(NotLinearizable):
        check([w("a", 0, 0.5), lost, r("x", 5, 6), r("a", 7, 8)])


def test_keys_are_independent() -> None:
    check([w("a", 0, 1, "k1"), w("b", 0, 1, "k2"), r("b", 2, 3, "k2")])
    with pytest.raises(NotLinearizable) as info:
        check([w("a", 0, 1, "k1"), w("b", 2, 3, "k1"), r("a", 4, 5, "k1")])
    assert info.value.key == "k1"
    assert any(op.value == "a" and op.kind == READ for op in info.value.stuck)


def test_bad_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown op kind"):
        Op("x", "k", 1, 0, 1)
    with pytest.raises(ValueError, match="ends before"):
        Op(READ, "k", 1, 2, 1)
    with pytest.raises(ValueError, match="unknown outcome"):
        Op(READ, "k", 1, 0, math.inf)


def simulate(seed: int, clients: int, ops_per_client: int, keys: int) -> list[Op]:
    """Histories from an atomic register: each op takes effect at one instant
    inside its [start, end] window; clients run one op at a time."""
    rng = random.Random(seed)
    # (linearization time, client, op index) events; build windows around them.
    plans = []
    for c in range(clients):
        t = rng.random()
        for i in range(ops_per_client):
            start = t
            point = start + rng.random()
            end = point + rng.random()
            t = end + rng.random() * 0.2
            plans.append((point, start, end, c, i))
    plans.sort()
    state: dict[str, str | None] = {}
    ops = []
    for point, start, end, c, i in plans:
        key = f"k{rng.randrange(keys)}"
        if rng.random() < 0.5:
            value = f"{c}-{i}"
            state[key] = value
            ops.append(Op(WRITE, key, value, start, end, client=c))
        else:
            ops.append(Op(READ, key, state.get(key), start, end, client=c))
        del point
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_histories_of_an_atomic_register_pass(seed: int) -> None:
    ops = simulate(seed, clients=4, ops_per_client=60, keys=2)
    assert check(ops) == len(ops)


@pytest.mark.parametrize("seed", range(20))
def test_swapping_in_a_superseded_value_is_caught(seed: int) -> None:
    """Plant a stale read: a read that returned the latest value instead returns
    one overwritten by a write that completed before the read began."""
    ops = simulate(seed, clients=3, ops_per_client=60, keys=1)
    writes = [op for op in ops if op.kind == WRITE]
    for i, op in enumerate(ops):
        if op.kind != READ:
            continue
        done = [x for x in writes if x.end < op.start and x.value != op.value]
        # Need a value written, then overwritten by a write that also finished
        # before this read started: that value can never be read again.
        stale = [
            x for x in done if any(y.start > x.end and y.end < op.start for y in done)
        ]
        if stale:
            bad = list(ops)
            bad[i] = Op(READ, op.key, stale[0].value, op.start, op.end)
            with pytest.raises(NotLinearizable):
                check(bad)
            return
    pytest.fail("simulation produced no read to plant a stale value in")
