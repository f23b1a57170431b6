"""A linearizability checker for per-key register histories (tests only).

A history is a list of `Op`s: writes of a value and reads that returned one, each
with the time it was invoked and the time it completed, as seen by the client
that ran it. The history is linearizable when every key's operations can be put
in one order that (a) respects real time: an operation that completed before
another was invoked comes first, and (b) is a legal run of a register: each read
returns the value of the latest write before it (or the initial value).

The search is Wing & Gong's, with Lowe's memoization of (linearized set, state),
as Porcupine implements it and as Jepsen's Knossos does: walk the history's
call/return events in time order, try to linearize each pending call at its
earliest point, and backtrack when an operation's return is reached before it
could be placed. Keys are independent registers, so each key is checked on its
own (P-compositionality), which keeps the search small.

An operation whose outcome is unknown (a write that failed or timed out: it may
or may not have taken effect) gets `end=math.inf`: it can be linearized anywhere
after its invocation, or, in effect, never (placed after every other operation).
Failed reads carry no information and should be left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

WRITE = "w"
READ = "r"


@dataclass(frozen=True)
class Op:
    """One register operation on `key`: `kind` is WRITE (value written) or READ
    (value returned); `start`/`end` are the invoke/complete times (end may be
    `math.inf` for a write of unknown outcome); `client` is for messages only."""

    kind: str
    key: Hashable
    value: Any
    start: float
    end: float
    client: Any = None

    def __post_init__(self) -> None:
        if self.kind not in (WRITE, READ):
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.end < self.start:
            raise ValueError(f"op ends before it starts: {self}")
        if self.kind == READ and math.isinf(self.end):
            raise ValueError("a read of unknown outcome tells nothing; drop it")


class NotLinearizable(AssertionError):
    """The history of `key` has no linearization; `ops` are its operations and
    `stuck` the operations that could not be placed at the deepest point the
    search reached (the likely culprits)."""

    def __init__(self, key: Hashable, ops: list[Op], stuck: list[Op]) -> None:
        self.key = key
        self.ops = ops
        self.stuck = stuck
        lines = "\n  ".join(map(repr, stuck[:8]))
        super().__init__(
            f"key {key!r}: {len(ops)} operations are not linearizable; "
            f"cannot place:\n  {lines}"
        )


@dataclass
class _Event:
    op_id: int
    is_call: bool
    time: float
    prev: _Event | None = None
    next: _Event | None = None
    match: _Event | None = None  # call -> its return


def _events(ops: list[Op]) -> _Event:
    """A doubly linked list of call/return events in time order behind a
    sentinel head. At equal times calls go first, so touching operations count
    as concurrent (the lenient reading: clocks of different clients tie)."""
    events: list[_Event] = []
    for i, op in enumerate(ops):
        call = _Event(i, True, op.start)
        ret = _Event(i, False, op.end)
        call.match = ret
        events += (call, ret)
    events.sort(key=lambda e: (e.time, not e.is_call))
    head = _Event(-1, True, -math.inf)
    prev = head
    for e in events:
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(call: _Event) -> None:
    """Take a call and its return out of the list (they stay linked to their
    neighbours, so `_unlift` puts them back in place)."""
    ret = call.match
    assert call.prev is not None
    assert ret is not None
    assert ret.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Event) -> None:
    ret = call.match
    assert call.prev is not None
    assert ret is not None
    assert ret.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def _step(op: Op, state: Any) -> tuple[bool, Any]:
    if op.kind == WRITE:
        return True, op.value
    return op.value == state, state


def check_key(ops: list[Op], initial: Any) -> None:
    """Raise NotLinearizable unless `ops` (all on one key) linearize as a
    register that starts at `initial`."""
    if not ops:
        return
    head = _events(ops)
    state = initial
    linearized = 0  # bitset of op ids
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[_Event, Any]] = []
    deepest: tuple[int, int] = (0, 0)  # (depth, linearized) at the deepest point
    entry = head.next
    while entry is not None:
        if entry.is_call:
            ok, new_state = _step(ops[entry.op_id], state)
            if ok:
                bits = linearized | (1 << entry.op_id)
                if (bits, new_state) not in seen:
                    seen.add((bits, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, bits
                    _lift(entry)
                    if len(stack) > deepest[0]:
                        deepest = (len(stack), linearized)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # An operation returned before it could be linearized: undo the
            # latest choice and try the next candidate after it.
            if not stack:
                placed = deepest[1]
                stuck = _pending_at_first_blocked(ops, placed)
                raise NotLinearizable(ops[0].key, ops, stuck)
            call, state = stack.pop()
            linearized &= ~(1 << call.op_id)
            _unlift(call)
            entry = call.next


def _pending_at_first_blocked(ops: list[Op], placed: int) -> list[Op]:
    """The operations not linearized in the deepest attempt, earliest
    completion first: the one that completes first is where the search hit a
    wall."""
    left = [op for i, op in enumerate(ops) if not placed >> i & 1]
    return sorted(left, key=lambda op: (op.end, op.start))


def check(ops: Iterable[Op], initial: dict[Hashable, Any] | None = None) -> int:
    """Check every key's history; raise NotLinearizable for the first key that
    fails. `initial` maps keys to their value before the history (None when
    absent). Returns the number of operations checked."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    initial = initial or {}
    for key, key_ops in by_key.items():
        check_key(key_ops, initial.get(key))
    return sum(map(len, by_key.values()))
