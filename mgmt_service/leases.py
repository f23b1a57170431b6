"""The mgmtd primary lease: which of several mgmtd processes may change routing.

The lease is one KV key (`keys.mgmt_key("lease")`) holding the holder's node id
and an expiry in wall-clock seconds: every mgmtd shares the KV store, and the
store's transactions decide races, so the clock only has to agree between
processes on one host (or NTP-synced hosts). The primary renews it every third of
its duration; a standby takes it once the expiry has passed. The holder trusts its
lease for `duration` measured on its own monotonic clock from *before* the renewal
transaction started, so it steps down no later than a standby may step up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.base import Database, Transaction

logger = logging.getLogger(__name__)

LEASE_KEY = keys.mgmt_key("lease")


class LeaseRecord(msgspec.Struct, frozen=True):
    node_id: int
    expires: float  # wall-clock seconds


_decoder = msgspec.msgpack.Decoder(LeaseRecord)


def read_lease(tr: Transaction) -> LeaseRecord | None:
    raw = tr.get(LEASE_KEY)
    return None if raw is None else _decoder.decode(raw)


def check_holder(tr: Transaction, node_id: int) -> None:
    """Inside a transaction that changes routing: raise NotPrimary unless
    `node_id` still holds the lease, so a deposed primary cannot write."""
    rec = read_lease(tr)
    if rec is None or rec.node_id != node_id:
        holder = rec.node_id if rec else "nobody"
        raise errors.NotPrimary(f"mgmtd {node_id} lost the lease to {holder}")


class PrimaryLease:
    def __init__(
        self,
        db: Database,
        node_id: int,
        duration: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.node_id = node_id
        self.duration = duration
        self._clock = clock
        self._wall = wall_clock
        self._valid_until = 0.0

    @property
    def held(self) -> bool:
        return self._clock() < self._valid_until

    async def try_acquire(self) -> bool:
        """Take or renew the lease; True if this node holds it now. KV errors
        propagate (the caller keeps whatever it held until `held` says no)."""
        started = self._clock()

        def attempt(tr: Transaction) -> bool:
            now = self._wall()
            rec = read_lease(tr)
            if rec is not None and rec.node_id != self.node_id and rec.expires > now:
                return False
            new = LeaseRecord(self.node_id, now + self.duration)
            tr.set(LEASE_KEY, msgspec.msgpack.encode(new))
            return True

        ok = await self.db.arun(attempt)
        if ok:
            self._valid_until = started + self.duration
        else:
            self._valid_until = 0.0
        return ok

    async def release(self) -> None:
        """Give the lease up (clean shutdown) so a standby need not wait it out."""
        if not self.held:
            return

        def clear(tr: Transaction) -> None:
            rec = read_lease(tr)
            if rec is not None and rec.node_id == self.node_id:
                tr.clear(LEASE_KEY)

        self._valid_until = 0.0
        await self.db.arun(clear)
