"""The transactional key-value interface (FoundationDB's data model).

Keys and values are bytes, ordered bytewise. A `Transaction` sees a consistent
snapshot plus its own writes; `commit` makes its writes visible atomically or raises
`KVConflict` when a concurrent transaction invalidated what it read (serializable).
`Database.run(fn)` runs `fn(tr)` in a fresh transaction, commits, and retries on
retryable errors with capped exponential backoff, so `fn` must be safe to re-run.

Everything here is synchronous: backends wrap blocking clients (sqlite3, etcd's
HTTP API, libfdb_c). Async services call `Database.arun`, which runs the whole
transaction function in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import functools
import logging
import struct
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from py3fs.retry import RetryPolicy

logger = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
_I64 = struct.Struct("<q")


def strinc(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("prefix of only 0xff bytes has no successor")
    return stripped[:-1] + bytes([stripped[-1] + 1])


def encode_counter(n: int) -> bytes:
    return _I64.pack(n)


def decode_counter(raw: bytes | None) -> int:
    return 0 if raw is None else int(_I64.unpack(raw.ljust(8, b"\0")[:8])[0])


class Transaction(abc.ABC):
    """One transaction. Not thread-safe; use it from the thread that made it."""

    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None."""

    @abc.abstractmethod
    def get_range(
        self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with begin <= key < end, in key order (reversed if asked), at most
        `limit` of them when limit > 0. The whole range is protected against
        phantoms: a concurrent insert into it makes this transaction conflict."""

    @abc.abstractmethod
    def set(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def clear(self, key: bytes) -> None: ...

    @abc.abstractmethod
    def clear_range(self, begin: bytes, end: bytes) -> None: ...

    def insert(self, key: bytes, value: bytes) -> bool:
        """Store `value` at `key` unless the key exists; whether it stored."""
        if self.get(key) is not None:
            return False
        self.set(key, value)
        return True

    def add(self, key: bytes, delta: int) -> None:
        """Atomically add `delta` to the little-endian int64 at `key` (0 if absent)."""
        self.set(key, encode_counter(decode_counter(self.get(key)) + delta))

    def get_prefix(self, prefix: bytes, limit: int = 0) -> list[tuple[bytes, bytes]]:
        return self.get_range(prefix, strinc(prefix), limit)

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the writes visible. Raises KVConflict (retryable) on a conflict."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Abandon the transaction; safe to call after commit."""


# Conflicts resolve in milliseconds; jitter keeps colliding writers apart.
TRANSACTION_RETRY = RetryPolicy(initial=0.002, maximum=0.5, jitter=0.5, timeout=None)


class Database(abc.ABC):
    """A handle to one KV store. Thread-safe; share one per process."""

    max_retries: int = 50

    @abc.abstractmethod
    def create_transaction(self, read_only: bool = False) -> Transaction: ...

    def waits(self) -> bool:
        """Whether this thread's transactions may wait for locks (and retry);
        False only inside a backend's no-wait block (`SqliteDatabase.nowait`),
        where helpers that would block raise KVUnavailable instead."""
        return True

    def run(self, fn: Callable[[Transaction], T], *, read_only: bool = False) -> T:
        """Run `fn(tr)` and commit, retrying retryable errors with backoff.

        Returns what `fn` returned. Non-retryable errors (including py3fs errors that
        `fn` raises, such as NotFound) abort the transaction and propagate.
        """

        def attempt(n: int) -> T:
            tr = self.create_transaction(read_only=read_only)
            try:
                result = fn(tr)
                tr.commit()
                return result
            except BaseException:
                tr.cancel()
                raise

        if not self.waits():
            # One attempt: retrying means sleeping, which a no-wait block
            # (an event loop) must not do.
            return attempt(0)
        policy = dataclasses.replace(TRANSACTION_RETRY, attempts=self.max_retries)
        return policy.call(attempt, what="transaction")

    async def arun(
        self, fn: Callable[[Transaction], T], *, read_only: bool = False
    ) -> T:
        """`run` in a worker thread. Cancellation abandons the wait; the transaction
        still finishes (commits or not) in its thread."""
        return await asyncio.to_thread(self.run, fn, read_only=read_only)

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transactional(fn: Callable[P, T]) -> Callable[P, T]:
    """Let `fn(tr, ...)` take either a Transaction (runs inline, composes into the
    caller's transaction) or a Database (runs in its own retried transaction),
    like FoundationDB's `@fdb.transactional`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        target = args[0]
        if isinstance(target, Database):
            return target.run(lambda tr: fn(tr, *args[1:], **kwargs))  # type: ignore[arg-type]
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
