"""Remembered write replies and repair rebuilds (chain_replication.replica)."""

from __future__ import annotations

from chain_replication.replica import ReplicaState

CHUNK = b"\x00" * 12


def test_reply_older_than_a_repair_is_not_trusted() -> None:
    state: ReplicaState[str] = ReplicaState()
    lost = ("client-a", 1, CHUNK)
    kept = ("client-b", 7, CHUNK)
    state.remember(lost, "v2", 2)
    state.remember(kept, "v3", 3)
    assert state.recall(101, lost) == "v2"
    # A repair rebuilt the chunk at version 3 from the head's data, which may not
    # hold the write committed here at version 2: its retry must be applied again.
    state.will_rebuild((101, CHUNK), 3)
    assert state.recall(101, lost) is None
    assert state.recall(101, lost) is None  # forgotten
    # The write that carried the repair is in the rebuilt content: still deduped.
    assert state.recall(101, kept) == "v3"
    # Other targets on the node keep their own history.
    state.remember(lost, "v2", 2)
    assert state.recall(102, lost) == "v2"


def test_dedup_is_bounded_oldest_first() -> None:
    state: ReplicaState[int] = ReplicaState(dedup_entries=2)
    for i in range(3):
        state.remember(("c", i, CHUNK), i, 1)
    assert state.recall(1, ("c", 0, CHUNK)) is None
    assert state.recall(1, ("c", 1, CHUNK)) == 1
    assert state.recall(1, ("c", 2, CHUNK)) == 2
