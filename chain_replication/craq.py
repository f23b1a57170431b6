"""CRAQ version rules for one chunk on one target: pure, synchronous, no I/O.

The storage write path asks these functions what to do with an update; keeping the
rules here lets them be tested exhaustively without disks or sockets.

Versions: a chunk has a committed version `c` (0 when it does not exist) and, while
an update is in flight through this target, a pending version. The head assigns
`u = max(c, last_assigned) + 1`; every other target receives `u` with the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    APPLY = "apply"  # stage the update as pending version u, forward, commit on ack
    ALREADY_DONE = "already_done"  # u <= committed: a retry; reply current state
    MISSING_UPDATE = "missing_update"  # u skips versions: this replica is stale


def decide(
    committed: int, update_ver: int, full_replace: bool, syncing: bool = False
) -> Action:
    """What a non-head target does with update `update_ver` of a chunk.

    A partial update applies only on top of version `update_ver - 1`: applying it
    to anything older would silently diverge the replicas. A full replace carries
    the whole content, so it applies over any older version. On a `syncing`
    target a full replace applies whatever it holds: its chunks may carry versions
    from before it went down that the chain never committed.
    """
    if syncing and full_replace:
        return Action.APPLY
    if update_ver <= committed:
        return Action.ALREADY_DONE
    if full_replace or update_ver == committed + 1:
        return Action.APPLY
    return Action.MISSING_UPDATE


def head_version(committed: int, last_assigned: int) -> int:
    """The version the head gives a new update.

    `last_assigned` remembers versions handed out by updates that failed after
    forwarding: a successor may have committed one of them, so it is never reused.
    """
    return max(committed, last_assigned) + 1


@dataclass(frozen=True)
class AckCheck:
    ok: bool
    reason: str = ""


def check_ack(
    update_ver: int, crc: int, length: int, ack_ver: int, ack_crc: int, ack_len: int
) -> AckCheck:
    """Whether a successor's ack matches what this target staged.

    An ack for a newer version, or for the same version with different content,
    means the successor already holds a different update under that number (an
    earlier attempt that failed on the way back): the chain has diverged and the
    head must resend the whole chunk under a fresh version.
    """
    if ack_ver != update_ver:
        return AckCheck(False, f"successor at version {ack_ver}, sent {update_ver}")
    if ack_crc != crc or ack_len != length:
        return AckCheck(False, f"successor content differs at version {update_ver}")
    return AckCheck(True)


def read_decision(
    committed: int, pending: int, is_tail: bool, tail_committed: int | None
) -> bool:
    """Whether a read may be served from this target's committed data.

    Clean chunk, or this target is the tail: yes. Dirty chunk elsewhere: only if the
    tail still has our committed version as its committed one (CRAQ's apportioned
    query); `tail_committed` is None when the tail was not asked or unreachable.
    """
    if pending <= committed or is_tail:
        return True
    return tail_committed is not None and tail_committed == committed
