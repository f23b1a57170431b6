"""The mount's replacements for pyfuse3's asyncio glue: `_FuseWatch` (waiting
for /dev/fuse to be readable) and `_ReadLock` (the one task at a time that
reads the next request), on a pipe in place of /dev/fuse."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import uvloop

pyfuse3 = pytest.importorskip("pyfuse3")
pytest.importorskip("pyfuse3.asyncio")

from fuse_mount.mount import _FuseWatch, _ReadLock  # noqa: E402

WAIT = 10.0  # generous: only a hang runs into it


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_fd_stays_watched_between_requests_on_uvloop(pipe: tuple[int, int]) -> None:
    """As in pyfuse3's loop, the woken task reads the request in the step the
    wake-up resumes; on uvloop (the mount's loop) that comes before the loop
    polls again, so the fd is registered once for all the requests."""
    r, w = pipe
    watch = _FuseWatch()
    adds = 0

    async def serve(n: int) -> None:
        nonlocal adds
        loop = asyncio.get_running_loop()
        add_reader = loop.add_reader

        def counting_add_reader(*args: object) -> None:
            nonlocal adds
            adds += 1
            add_reader(*args)  # type: ignore[arg-type]

        loop.add_reader = counting_add_reader  # type: ignore[method-assign]
        for _ in range(n):
            await watch.wait_readable(r)
            assert os.read(r, 1) == b"x"

    async def main() -> None:
        server = asyncio.ensure_future(serve(20))
        for _ in range(20):
            await asyncio.sleep(0.005)
            os.write(w, b"x")
        await asyncio.wait_for(server, WAIT)
        assert r in watch._watched
        watch.stop()
        assert not watch._watched

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    assert adds == 1


async def test_waiter_wakes_when_readable(pipe: tuple[int, int]) -> None:
    r, w = pipe
    watch = _FuseWatch()
    for _ in range(2):
        waiter = asyncio.ensure_future(watch.wait_readable(r))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # nothing to read yet
        os.write(w, b"x")
        await asyncio.wait_for(waiter, WAIT)
        os.read(r, 1)
    watch.stop()
    assert not watch._watched


async def test_readable_without_waiter_unwatches_then_rewatches(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    watch = _FuseWatch()
    os.write(w, b"x")
    await asyncio.wait_for(watch.wait_readable(r), WAIT)
    # Still readable (nobody read) and nobody waits: the callback must stop
    # watching rather than fire on every loop iteration.
    for _ in range(100):
        if r not in watch._watched:
            break
        await asyncio.sleep(0.01)
    assert r not in watch._watched
    # The next wait registers again and sees the pending byte at once.
    await asyncio.wait_for(watch.wait_readable(r), WAIT)
    watch.stop()


async def test_notify_closing_fails_the_waiter_once(pipe: tuple[int, int]) -> None:
    r, w = pipe
    watch = _FuseWatch()
    waiter = asyncio.ensure_future(watch.wait_readable(r))
    await asyncio.sleep(0.05)
    os.write(w, b"x")  # readable and closing at once: resolved only once
    watch.notify_closing(r)
    with pytest.raises(pyfuse3.asyncio.ClosedResourceError):
        await asyncio.wait_for(waiter, WAIT)
    assert not watch._watched
    watch.notify_closing(r)  # again, with nothing waiting: no error


async def test_cancelled_waiter_leaves_no_trace(pipe: tuple[int, int]) -> None:
    r, w = pipe
    watch = _FuseWatch()
    waiter = asyncio.ensure_future(watch.wait_readable(r))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not watch._waiting[r]
    os.write(w, b"x")
    await asyncio.wait_for(watch.wait_readable(r), WAIT)
    watch.stop()


async def test_read_lock_is_fifo_and_exclusive() -> None:
    lock = _ReadLock()
    order: list[int] = []
    inside = 0

    async def user(i: int) -> None:
        nonlocal inside
        async with lock:
            inside += 1
            assert inside == 1
            order.append(i)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(user(i) for i in range(20))), WAIT)
    assert order == list(range(20))
    assert not lock.locked()


async def test_read_lock_cancelled_waiter_is_skipped() -> None:
    lock = _ReadLock()
    await lock.acquire()
    first = asyncio.ensure_future(lock.acquire())
    second = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    lock.release()
    assert await asyncio.wait_for(second, WAIT)
    assert first.cancelled()
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


async def test_read_lock_handed_over_then_cancelled_passes_it_on() -> None:
    lock = _ReadLock()
    await lock.acquire()
    first = asyncio.ensure_future(lock.acquire())
    second = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    lock.release()  # hands the lock to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, WAIT)  # so `second` gets it
    lock.release()
    assert not lock.locked()
