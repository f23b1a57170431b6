"""CRAQ replica decisions for the chunks of one storage node: pure, synchronous,
no I/O. `storage_service.write_path` asks this object what to do and reports
what happened; it does the staging, forwarding and committing itself.

What it remembers, per (target, chunk):
- `last_assigned`: versions the head handed out to updates that may have
  reached a successor; never reused (`craq.head_version`).
- `dirty`: the head cannot know what the rest of the chain committed (a forward
  failed, or an ack showed different content): its next update of the chunk goes
  down the chain whole, under a fresh version, which makes every replica equal.
- `repaired`: the version of the last such whole-chunk rebuild; a remembered
  reply older than it may describe a write the rebuild dropped.
And per (client, request, chunk): the reply of every write applied here, so a
retry (also one arriving at a new head after a failover) is answered, not
applied again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from chain_replication import craq

Reply = TypeVar("Reply")
Key = tuple[Hashable, bytes]  # (target, chunk id)
RequestKey = tuple[str, int, bytes]  # (client id, request id, chunk id)


@dataclass(frozen=True)
class HeadPlan:
    """What the head does with a new update: stage and forward it as `version`;
    `whole` sends the whole chunk (a dirty chunk, see the module docstring)."""

    version: int
    whole: bool


@dataclass(frozen=True)
class ReplicaPlan:
    """What a non-head target does with an update it was forwarded."""

    action: craq.Action


class ReplicaState(Generic[Reply]):
    def __init__(self, dedup_entries: int = 65536) -> None:
        self.dedup_entries = dedup_entries
        self._done: OrderedDict[RequestKey, tuple[Reply, int]] = OrderedDict()
        self._last_assigned: dict[Key, int] = {}
        self._dirty: set[Key] = set()
        self._repaired: dict[Key, int] = {}

    # ------------------------------------------------------------ dedup

    def recall(self, target: Hashable, req: RequestKey) -> Reply | None:
        """The reply of an earlier application of `req` on `target`, unless a
        repair rebuilt the chunk after it (the write may be gone: apply again)."""
        hit = self._done.get(req)
        if hit is None:
            return None
        reply, version = hit
        if version < self._repaired.get((target, req[2]), 0):
            del self._done[req]
            return None
        self._done.move_to_end(req)
        return reply

    def remember(self, req: RequestKey, reply: Reply, version: int) -> None:
        """`req` was applied, committing `version`; forgets the oldest beyond
        `dedup_entries`."""
        self._done[req] = (reply, version)
        self._done.move_to_end(req)
        while len(self._done) > self.dedup_entries:
            self._done.popitem(last=False)

    # ------------------------------------------------------------ head

    def head_plan(
        self, key: Key, committed: int, has_successor: bool, full: bool
    ) -> HeadPlan:
        """Assign the version of a new update at the head. The version counts as
        handed out from here on: a successor may commit it whatever happens."""
        version = craq.head_version(committed, self._last_assigned.get(key, 0))
        self._last_assigned[key] = version
        whole = key in self._dirty and has_successor and not full
        return HeadPlan(version, whole)

    def head_diverged(self, key: Key, version: int, ack_version: int) -> None:
        """A successor acked other content (or a newer version): resend whole,
        above every version seen."""
        self._dirty.add(key)
        self._last_assigned[key] = max(version, ack_version)

    def head_failed(self, key: Key, forwarded: bool) -> None:
        """The update failed. If it may have reached a successor, the chain's
        content is unknown: the chunk is dirty. If not, its version is unused."""
        if forwarded:
            self._dirty.add(key)
        else:
            self._last_assigned.pop(key, None)

    def head_committed(self, key: Key) -> None:
        self._dirty.discard(key)
        self._last_assigned.pop(key, None)

    def is_dirty(self, key: Key) -> bool:
        return key in self._dirty

    # ------------------------------------------------------------ every target

    def replica_plan(
        self, committed: int, update_ver: int, full: bool, syncing: bool
    ) -> ReplicaPlan:
        return ReplicaPlan(craq.decide(committed, update_ver, full, syncing))

    @staticmethod
    def forward_whole(full: bool, repair: bool, successor_syncing: bool) -> bool:
        """Whether to send the successor the whole chunk instead of the update:
        a repair rebuild, or a syncing successor whose copy may be anything."""
        return not full and (repair or successor_syncing)

    def will_rebuild(self, key: Key, version: int) -> None:
        """A whole-chunk rebuild at `version` passes through this target."""
        self._repaired[key] = version

    @staticmethod
    def check_ack(
        version: int, digest: int, length: int, ack: tuple[int, int, int]
    ) -> craq.AckCheck:
        """Compare what we staged with the successor's (version, digest, length)."""
        return craq.check_ack(version, digest, length, *ack)

    def removed(self, keys: Iterable[Key]) -> None:
        """The chunks were removed: forget their versions and state."""
        for key in keys:
            self._last_assigned.pop(key, None)
            self._dirty.discard(key)
            self._repaired.pop(key, None)
