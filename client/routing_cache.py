"""The client's cached copy of mgmtd's routing info, refreshed on demand.

Concurrent refreshes are coalesced: callers that find a refresh under way wait for
it instead of asking mgmtd again.

While mgmtd is away (restarting, failing over), the last routing keeps being
served: chains rarely change in a few seconds, and a target that did change
answers with a retryable error that sends the caller back here.
"""

from __future__ import annotations

import asyncio
import logging
import time

from py3fs import errors
from py3fs.mgmt_client import MgmtClient
from py3fs.routing import RoutingView

logger = logging.getLogger(__name__)
# After a failed fetch, how long `get` keeps serving the old routing before
# asking mgmtd again.
RETRY_AFTER = 1.0


class RoutingCache:
    def __init__(self, mgmt: MgmtClient, max_age: float = 5.0) -> None:
        self._mgmt = mgmt
        self._view: RoutingView | None = None
        self._fetched = 0.0
        self._max_age = max_age
        self._lock = asyncio.Lock()

    async def get(self) -> RoutingView:
        view = self._view
        if view is None or time.monotonic() - self._fetched > self._max_age:
            return await self.refresh(view)
        return view

    async def refresh(self, stale: RoutingView | None = None) -> RoutingView:
        """Fetch routing unless another task already replaced `stale`."""
        async with self._lock:
            if self._view is not None and self._view is not stale:
                return self._view
            try:
                self._view = await self._mgmt.routing()
            except errors.Py3fsError as exc:
                # DESIGN §6: served from the cache while mgmtd is unreachable
                # (or between primaries); `get` asks again after RETRY_AFTER,
                # so ops do not each wait out a failing fetch.
                if self._view is None or not exc.retryable:
                    raise
                logger.warning("routing refresh failed, using cached view: %s", exc)
                self._fetched = time.monotonic() - self._max_age + RETRY_AFTER
                return self._view
            self._fetched = time.monotonic()
            return self._view
