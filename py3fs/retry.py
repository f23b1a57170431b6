"""One retry policy for every caller that retries: capped exponential backoff with
jitter, bounded by a deadline or an attempt count.

Callers used to hand-write the same loop five times (KV transactions, the mgmtd,
meta and storage clients, a storage node registering). Now they describe *what*
to retry as `attempt(n)` (n = 0, 1, 2, ...) and the policy owns *when*:

    policy = RetryPolicy(initial=0.02, maximum=1.0, timeout=60.0)
    reply = await policy.acall(lambda n: rpc(pick(refresh=n > 0)))

An error is retried when `retry_on(exc)` is true (default: a `Py3fsError` whose
class is `retryable`); anything else propagates at once, and so does the last
error once the deadline or the attempt budget is spent. Cancellation is never
caught: a cancelled `acall` stops between or during attempts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from py3fs import errors

logger = logging.getLogger(__name__)
T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, errors.Py3fsError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Delays start at `initial` seconds and grow by `multiplier` up to `maximum`;
    each is scaled by a random factor in [1 - jitter, 1 + jitter] so that clients
    failing together do not retry in lockstep. `timeout` (seconds from the first
    attempt) and `attempts` bound the whole call; None means unbounded."""

    initial: float = 0.01
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.0
    timeout: float | None = 60.0
    attempts: int | None = None
    retry_on: Callable[[BaseException], bool] = is_retryable

    def delays(self) -> Iterator[float]:
        """The sleeps between attempts, without the deadline applied."""
        delay = self.initial
        while True:
            factor = 1.0 + self.jitter * (2.0 * random.random() - 1.0)
            yield delay * factor
            delay = min(delay * self.multiplier, self.maximum)

    def _give_up(self, exc: BaseException, n: int, deadline: float | None) -> bool:
        if not self.retry_on(exc):
            return True
        if self.attempts is not None and n + 1 >= self.attempts:
            return True
        return deadline is not None and time.monotonic() > deadline

    async def acall(
        self,
        attempt: Callable[[int], Awaitable[T]],
        *,
        what: str = "",
        on_retry: Callable[[BaseException, int], Awaitable[None] | None] | None = None,
    ) -> T:
        """Await `attempt(n)` until it returns; returns its result. Raises the
        first error the policy does not retry, or the last one when the budget
        is spent. `on_retry(exc, n)` runs (and is awaited if it returns an
        awaitable) before each sleep."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delays = self.delays()
        n = 0
        while True:
            try:
                return await attempt(n)
            except Exception as exc:
                if self._give_up(exc, n, deadline):
                    raise
                logger.debug("%s: attempt %d failed (%s); retrying", what, n + 1, exc)
                if on_retry is not None:
                    pending = on_retry(exc, n)
                    if pending is not None:
                        await pending
            await asyncio.sleep(next(delays))
            n += 1

    def call(
        self,
        attempt: Callable[[int], T],
        *,
        what: str = "",
        on_retry: Callable[[BaseException, int], None] | None = None,
    ) -> T:
        """`acall` for blocking code (KV transactions run in worker threads)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delays = self.delays()
        n = 0
        while True:
            try:
                return attempt(n)
            except Exception as exc:
                if self._give_up(exc, n, deadline):
                    raise
                logger.debug("%s: attempt %d failed (%s); retrying", what, n + 1, exc)
                if on_retry is not None:
                    on_retry(exc, n)
            time.sleep(next(delays))
            n += 1
