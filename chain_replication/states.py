"""Target states of a CRAQ chain, as in 3FS: pure, synchronous, no I/O.

Each target has a public state (decided by mgmtd, distributed with the routing)
and a local state (reported by its storage node; `offline` when the node is
down). mgmtd recomputes every chain's public states from both with `recompute`:

    public   read write  meaning
    serving   Y    Y     alive and up to date
    syncing   N    Y     alive, its predecessor is streaming chunks to it
    waiting   N    N     alive, recovery not started (one target syncs at a time)
    lastsrv   N    N     down, was the last serving target: it has the newest data
    offline   N    N     down

The order of a chain follows the states (serving first, offline last), so the
predecessor of the syncing target is always the last serving one, and a target
that goes down moves behind the live ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from py3fs.proto.messages import LocalState, TargetState

SERVING = TargetState.SERVING
SYNCING = TargetState.SYNCING
WAITING = TargetState.WAITING
LASTSRV = TargetState.LASTSRV
OFFLINE = TargetState.OFFLINE

_RANK = {SERVING: 0, SYNCING: 1, WAITING: 2, LASTSRV: 3, OFFLINE: 4}


@dataclass(frozen=True)
class Replica:
    target_id: int
    public: str
    local: str


def next_public(local: str, public: str, predecessor_serving: bool) -> str:
    """One row of 3FS's transition table, for a target that is not the chain's
    last serving one going down (`recompute` handles lastsrv)."""
    if local == LocalState.OFFLINE:
        return LASTSRV if public == LASTSRV else OFFLINE
    if local == LocalState.UPTODATE:
        if public in (SERVING, SYNCING, LASTSRV):
            return SERVING
        return WAITING
    # online: alive, but its data is only trusted once a resync completes
    if public in (SERVING, LASTSRV):
        return SERVING
    if public in (SYNCING, WAITING):
        return SYNCING if predecessor_serving else WAITING
    return WAITING


def recompute(chain: Sequence[Replica]) -> list[tuple[int, str]]:
    """The chain's new order and public states, head first.

    A serving target whose node is gone becomes `lastsrv` if no serving target
    survives and it is the first of them (3FS keeps the old head); otherwise
    `offline`. Of the alive targets waiting for recovery only the first one, right
    behind the last serving target, syncs: 3FS resyncs one target per chain at a
    time, so the stream has one source and one destination.
    """
    survivors = [
        r for r in chain if r.public == SERVING and r.local != LocalState.OFFLINE
    ]
    first_serving = next((r for r in chain if r.public == SERVING), None)
    states: dict[int, str] = {}
    for r in chain:
        if r.public == SERVING and r.local == LocalState.OFFLINE:
            last = not survivors and r is first_serving
            states[r.target_id] = LASTSRV if last else OFFLINE
        else:
            # Predecessor decided in the second pass, once the order is known.
            states[r.target_id] = next_public(r.local, r.public, False)
    by_id = {r.target_id: r for r in chain}
    order = sorted(
        (r.target_id for r in chain), key=lambda t: _RANK[_syncable(states[t])]
    )
    result: list[tuple[int, str]] = []
    for target_id in order:
        state = states[target_id]
        r = by_id[target_id]
        if state in (SYNCING, WAITING) and r.local == LocalState.ONLINE:
            prev = result[-1][1] if result else None
            state = next_public(r.local, r.public, prev == SERVING)
            if r.public == OFFLINE:
                # A target coming back waits one round before syncing, so its
                # node sees the chain without it first (3FS's offline -> waiting).
                state = WAITING
        result.append((target_id, state))
    return result


def _syncable(state: str) -> str:
    # Syncing and waiting targets sort together; which one syncs is decided after.
    return WAITING if state == SYNCING else state
