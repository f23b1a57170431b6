"""CRAQ version rules (chain_replication.craq)."""

from __future__ import annotations

import pytest

from chain_replication import craq
from chain_replication.craq import Action


@pytest.mark.parametrize(
    ("committed", "update", "full", "expected"),
    [
        (0, 1, False, Action.APPLY),
        (4, 5, False, Action.APPLY),
        (4, 4, False, Action.ALREADY_DONE),
        (4, 3, True, Action.ALREADY_DONE),
        (4, 7, False, Action.MISSING_UPDATE),
        (4, 7, True, Action.APPLY),
        (0, 9, True, Action.APPLY),
    ],
)
def test_decide(committed: int, update: int, full: bool, expected: Action) -> None:
    assert craq.decide(committed, update, full) is expected


def test_head_version_never_reuses_a_forwarded_version() -> None:
    assert craq.head_version(0, 0) == 1
    assert craq.head_version(5, 0) == 6
    # Version 6 was forwarded and failed: the next update must skip it.
    assert craq.head_version(5, 6) == 7
    assert craq.head_version(9, 6) == 10


def test_check_ack() -> None:
    assert craq.check_ack(3, 0xAB, 10, 3, 0xAB, 10).ok
    newer = craq.check_ack(3, 0xAB, 10, 4, 0xAB, 10)
    assert not newer.ok
    assert "version 4" in newer.reason
    assert not craq.check_ack(3, 0xAB, 10, 3, 0xAC, 10).ok
    assert not craq.check_ack(3, 0xAB, 10, 3, 0xAB, 11).ok


def test_read_decision() -> None:
    assert craq.read_decision(3, 3, False, None)  # clean
    assert craq.read_decision(3, 4, True, None)  # dirty, but this is the tail
    assert craq.read_decision(3, 4, False, 3)  # tail has not committed 4 yet
    assert not craq.read_decision(3, 4, False, 4)  # tail moved on
    assert not craq.read_decision(3, 4, False, None)  # tail unreachable


def test_chain_of_updates_converges() -> None:
    """Model a 3-target chain where the head's ack is lost after the tail commits:
    the head's retry (a full replace under a fresh version) applies everywhere."""
    committed = [2, 2, 2]
    v = craq.head_version(committed[0], 0)
    for i in (1, 2):
        assert craq.decide(committed[i], v, False) is Action.APPLY
        committed[i] = v  # successors committed; the head failed before commit
    v2 = craq.head_version(committed[0], v)
    assert v2 == v + 1
    for i in (1, 2):
        assert craq.decide(committed[i], v2, True) is Action.APPLY
