"""py3fs.retry: the one retry policy (backoff, budget, what is retried)."""

from __future__ import annotations

import itertools

import pytest

from py3fs import errors
from py3fs.retry import RetryPolicy

FAST = RetryPolicy(initial=0.001, maximum=0.002, timeout=5.0)


async def test_retries_retryable_errors_until_success() -> None:
    seen: list[int] = []
    retried: list[tuple[str, int]] = []

    async def attempt(n: int) -> str:
        seen.append(n)
        if n < 3:
            raise errors.RPCUnavailable(f"down {n}")
        return "ok"

    def note(exc: BaseException, n: int) -> None:
        retried.append((str(exc), n))

    assert await FAST.acall(attempt, on_retry=note) == "ok"
    assert seen == [0, 1, 2, 3]
    assert retried == [("down 0", 0), ("down 1", 1), ("down 2", 2)]


async def test_non_retryable_error_propagates_at_once() -> None:
    calls = 0

    async def attempt(n: int) -> None:
        nonlocal calls
        calls += 1
        raise errors.NotFound("gone")

    with pytest.raises(errors.NotFound):
        await FAST.acall(attempt)
    assert calls == 1


async def test_attempt_budget_raises_the_last_error() -> None:
    policy = RetryPolicy(initial=0.001, attempts=4, timeout=None)

    async def attempt(n: int) -> None:
        raise errors.KVConflict(f"conflict {n}")

    with pytest.raises(errors.KVConflict, match="conflict 3"):
        await policy.acall(attempt)


async def test_deadline_bounds_the_call() -> None:
    policy = RetryPolicy(initial=0.01, maximum=0.01, timeout=0.05)
    calls = 0

    async def attempt(n: int) -> None:
        nonlocal calls
        calls += 1
        raise errors.RPCTimeout("slow")

    with pytest.raises(errors.RPCTimeout):
        await policy.acall(attempt)
    # 50 ms of budget at 10 ms per sleep: a handful of attempts, not hundreds.
    assert 2 <= calls <= 10


async def test_async_on_retry_is_awaited() -> None:
    refreshed: list[int] = []

    async def refresh(exc: BaseException, n: int) -> None:
        refreshed.append(n)

    async def attempt(n: int) -> int:
        if n == 0:
            raise errors.ChainVersionMismatch("stale")
        return n

    assert await FAST.acall(attempt, on_retry=refresh) == 1
    assert refreshed == [0]


def test_sync_call_and_custom_predicate() -> None:
    policy = RetryPolicy(
        initial=0.001, attempts=3, retry_on=lambda e: isinstance(e, KeyError)
    )
    counter = itertools.count()

    def flaky(n: int) -> int:
        if next(counter) < 2:
            raise KeyError(n)
        return n

    assert policy.call(flaky) == 2
    with pytest.raises(ValueError, match="no"):
        policy.call(lambda n: (_ for _ in ()).throw(ValueError("no")))


def test_delays_grow_to_the_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial=0.1, maximum=0.4, multiplier=2.0, jitter=0.5)
    delays = list(itertools.islice(policy.delays(), 6))
    bases = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= delay <= base * 1.5
