"""The KV conformance suite every backend inherits (DESIGN.md §3).

A backend's test module subclasses `KVConformance` and provides a `db` fixture that
yields an empty `Database`, as fsspec's abstract tests do:

    class TestSqlite(KVConformance):
        @pytest.fixture
        def db(self, tmp_path): ...

The concurrency tests accept both ways a correct serializable backend may behave:
optimistic ones (etcd, FoundationDB) let two transactions read the same snapshot and
fail one at commit with KVConflict; pessimistic ones (SQLite's BEGIN IMMEDIATE) make
the second wait until the first has finished. What is checked is the invariant:
a transaction that read data another one changed before it committed never commits,
and no update is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from py3fs import errors
from py3fs.kv.base import (
    Database,
    Transaction,
    decode_counter,
    encode_counter,
    transactional,
)

# How long a test thread waits for a step of the other transaction before it goes
# on, in seconds: a pessimistic backend blocks that step until we commit.
STEP_WAIT = 0.5


def fill(db: Database, pairs: dict[bytes, bytes]) -> None:
    def write(tr: Transaction) -> None:
        for k, v in pairs.items():
            tr.set(k, v)

    db.run(write)


def read(db: Database, key: bytes) -> bytes | None:
    return db.run(lambda tr: tr.get(key), read_only=True)


def in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads; re-raise the first exception."""
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, range(n)))


class KVConformance:
    """Inherit and provide a `db` fixture yielding an empty Database."""

    # ------------------------------------------------------------ single keys

    def test_get_set_clear(self, db: Database) -> None:
        assert read(db, b"a") is None
        fill(db, {b"a": b"1", b"b": b""})
        assert read(db, b"a") == b"1"
        assert read(db, b"b") == b""  # an empty value is not an absent key
        db.run(lambda tr: tr.set(b"a", b"2"))
        assert read(db, b"a") == b"2"
        db.run(lambda tr: tr.clear(b"a"))
        assert read(db, b"a") is None
        db.run(lambda tr: tr.clear(b"never-set"))

    def test_binary_keys_order_bytewise(self, db: Database) -> None:
        keys = [b"\x00", b"\x00\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\xff\x00"]
        fill(db, {k: k for k in reversed(keys)})
        got = db.run(lambda tr: tr.get_range(b"", b"\xff\xff"))
        assert [k for k, _ in got] == keys
        assert all(k == v for k, v in got)

    # ------------------------------------------------------------ ranges

    def test_get_range(self, db: Database) -> None:
        fill(db, {f"k{i}".encode(): str(i).encode() for i in range(10)})
        fill(db, {b"j": b"before", b"l": b"after"})

        def rng(begin: bytes, end: bytes, **kw: Any) -> list[bytes]:
            return [k for k, _ in db.run(lambda tr: tr.get_range(begin, end, **kw))]

        assert rng(b"k0", b"k5") == [b"k0", b"k1", b"k2", b"k3", b"k4"]  # end excluded
        assert rng(b"k", b"l") == [f"k{i}".encode() for i in range(10)]
        assert rng(b"k", b"l", limit=3) == [b"k0", b"k1", b"k2"]
        assert rng(b"k", b"l", reverse=True) == [
            f"k{i}".encode() for i in reversed(range(10))
        ]
        assert rng(b"k", b"l", limit=2, reverse=True) == [b"k9", b"k8"]
        assert rng(b"k5", b"k5") == []
        assert rng(b"x", b"z") == []
        assert db.run(lambda tr: tr.get_range(b"k3", b"k4")) == [(b"k3", b"3")]

    def test_get_prefix(self, db: Database) -> None:
        fill(db, {b"ab": b"1", b"abc": b"2", b"ab\xff": b"3", b"ac": b"4", b"a": b"5"})
        got = db.run(lambda tr: tr.get_prefix(b"ab"))
        assert got == [(b"ab", b"1"), (b"abc", b"2"), (b"ab\xff", b"3")]
        assert [k for k, _ in db.run(lambda tr: tr.get_prefix(b"ab", limit=2))] == [
            b"ab",
            b"abc",
        ]

    def test_clear_range(self, db: Database) -> None:
        fill(db, {f"k{i}".encode(): b"v" for i in range(10)})
        db.run(lambda tr: tr.clear_range(b"k2", b"k7"))
        left = [k for k, _ in db.run(lambda tr: tr.get_range(b"k", b"l"))]
        assert left == [b"k0", b"k1", b"k7", b"k8", b"k9"]

    # ------------------------------------------------------------ atomic add

    def test_add(self, db: Database) -> None:
        db.run(lambda tr: tr.add(b"n", 5))
        db.run(lambda tr: tr.add(b"n", -7))
        assert decode_counter(read(db, b"n")) == -2
        assert read(db, b"n") == encode_counter(-2)

    def test_add_mixed_with_reads_and_writes(self, db: Database) -> None:
        """Additions are seen by every later read of the transaction, in
        order with the other writes of that key."""
        fill(db, {b"c1": encode_counter(10)})

        def fn(tr: Transaction) -> None:
            tr.add(b"c1", 1)
            tr.add(b"c2", 4)
            assert tr.get_range(b"c", b"d") == [
                (b"c1", encode_counter(11)),
                (b"c2", encode_counter(4)),
            ]
            tr.add(b"c1", 1)
            tr.set(b"c2", encode_counter(100))  # overrides the pending add
            tr.add(b"c2", 1)
            tr.add(b"c3", 7)
            tr.clear(b"c3")  # the addition before it is moot
            tr.add(b"c4", 2)
            tr.clear_range(b"c4", b"c5")

        db.run(fn)
        assert decode_counter(read(db, b"c1")) == 12
        assert decode_counter(read(db, b"c2")) == 101
        assert read(db, b"c3") is None
        assert read(db, b"c4") is None

    def test_insert_stores_only_when_absent(self, db: Database) -> None:
        fill(db, {b"old": b"v"})

        def fn(tr: Transaction) -> tuple[bool, bool, bool]:
            got = tr.insert(b"old", b"w"), tr.insert(b"new", b"x")
            return (*got, tr.insert(b"new", b"y"))

        assert db.run(fn) == (False, True, False)
        assert read(db, b"old") == b"v"
        assert read(db, b"new") == b"x"

    def test_add_in_read_only_transaction_fails(self, db: Database) -> None:
        with pytest.raises(errors.KVError):
            db.run(lambda tr: tr.add(b"n", 1), read_only=True)
        assert read(db, b"n") is None

    def test_add_from_many_threads(self, db: Database) -> None:
        def work(_: int) -> None:
            for _ in range(200):
                db.run(lambda tr: tr.add(b"counter", 1))

        in_threads(8, work)
        assert decode_counter(read(db, b"counter")) == 1600

    # ------------------------------------------------------------ transactions

    def test_read_your_writes(self, db: Database) -> None:
        fill(db, {b"a": b"old", b"c": b"gone"})

        def fn(tr: Transaction) -> None:
            tr.set(b"a", b"new")
            tr.set(b"b", b"added")
            tr.clear(b"c")
            assert tr.get(b"a") == b"new"
            assert tr.get(b"b") == b"added"
            assert tr.get(b"c") is None
            assert tr.get_range(b"a", b"z") == [(b"a", b"new"), (b"b", b"added")]
            tr.clear_range(b"a", b"b")
            assert tr.get(b"a") is None
            tr.add(b"n", 2)
            tr.add(b"n", 3)
            assert decode_counter(tr.get(b"n")) == 5

        db.run(fn)
        assert read(db, b"a") is None
        assert read(db, b"b") == b"added"

    def test_writes_invisible_until_commit(self, db: Database) -> None:
        fill(db, {b"k": b"committed"})
        tr = db.create_transaction()
        tr.set(b"k", b"pending")
        seen: list[bytes | None] = []

        def reader() -> None:
            # Pessimistic backends may block this read until `tr` finishes; a read
            # after the commit must then see the new value, never a torn one.
            seen.append(read(db, b"k"))

        t = threading.Thread(target=reader)
        t.start()
        t.join(STEP_WAIT)
        before_commit = list(seen)
        tr.commit()
        t.join()
        assert before_commit in ([], [b"committed"])
        assert seen[-1] in (b"committed", b"pending")
        assert read(db, b"k") == b"pending"

    def test_cancel_discards_writes(self, db: Database) -> None:
        fill(db, {b"k": b"v"})
        tr = db.create_transaction()
        tr.set(b"k", b"changed")
        tr.set(b"new", b"x")
        tr.cancel()
        tr.cancel()  # idempotent
        assert read(db, b"k") == b"v"
        assert read(db, b"new") is None

    def test_cancel_after_commit_is_harmless(self, db: Database) -> None:
        tr = db.create_transaction()
        tr.set(b"k", b"v")
        tr.commit()
        tr.cancel()
        assert read(db, b"k") == b"v"

    def test_read_only_transaction(self, db: Database) -> None:
        fill(db, {b"k": b"v"})
        assert db.run(lambda tr: tr.get(b"k"), read_only=True) == b"v"

    def test_concurrent_read_modify_write_conflict(self, db: Database) -> None:
        """Two transactions read k and write k+1: if both read before either
        committed, exactly one commits; in every case no increment is lost."""
        db.run(lambda tr: tr.add(b"k", 0))
        a_read, a_commit_started = threading.Event(), threading.Event()
        b_read_before_a_commit = threading.Event()
        outcome: dict[str, str] = {}

        def commit(name: str, tr: Transaction) -> None:
            try:
                tr.commit()
                outcome[name] = "ok"
            except errors.KVConflict:
                outcome[name] = "conflict"

        def a() -> None:
            tr = db.create_transaction()
            value = decode_counter(tr.get(b"k"))
            a_read.set()
            b_read_before_a_commit.wait(STEP_WAIT)
            tr.set(b"k", encode_counter(value + 1))
            a_commit_started.set()
            commit("a", tr)

        def b() -> None:
            a_read.wait()
            tr = db.create_transaction()
            value = decode_counter(tr.get(b"k"))
            # Set only when B's read surely saw the snapshot before A's commit.
            if not a_commit_started.is_set():
                b_read_before_a_commit.set()
            tr.set(b"k", encode_counter(value + 1))
            commit("b", tr)

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        committed = sorted(outcome.values()).count("ok")
        assert set(outcome) == {"a", "b"}
        assert decode_counter(read(db, b"k")) == committed
        if b_read_before_a_commit.is_set():
            assert committed == 1, outcome
        else:
            assert committed >= 1, outcome

    def test_phantom_protection(self, db: Database) -> None:
        """T1 reads a range, T2 inserts into it and commits, T1 writes elsewhere:
        T1 must not commit after T2 (it would have missed T2's key)."""
        fill(db, {b"dir/a": b"1"})
        t1_read, t2_committed = threading.Event(), threading.Event()
        outcome: dict[str, str] = {}

        def t1() -> None:
            tr = db.create_transaction()
            listing = tr.get_range(b"dir/", b"dir0")
            t1_read.set()
            t2_committed.wait(STEP_WAIT)
            tr.set(b"count", str(len(listing)).encode())
            committed_before_us = t2_committed.is_set()
            try:
                tr.commit()
                outcome["t1"] = "ok"
            except errors.KVConflict:
                outcome["t1"] = "conflict"
            if committed_before_us:
                assert outcome["t1"] == "conflict", "phantom insert went unnoticed"

        def t2() -> None:
            t1_read.wait()
            tr = db.create_transaction()
            tr.set(b"dir/b", b"2")
            tr.commit()
            outcome["t2"] = "ok"
            t2_committed.set()

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(t1), pool.submit(t2)]
            for f in futures:
                f.result()
        assert outcome["t2"] == "ok"
        assert read(db, b"dir/b") == b"2"
        if outcome["t1"] == "ok":
            assert read(db, b"count") == b"1"
        else:
            assert read(db, b"count") is None

    def test_run_retries_conflicts_until_done(self, db: Database) -> None:
        def increment(tr: Transaction) -> None:
            tr.set(b"k", encode_counter(decode_counter(tr.get(b"k")) + 1))

        def work(_: int) -> None:
            for _ in range(50):
                db.run(increment)

        in_threads(8, work)
        assert decode_counter(read(db, b"k")) == 400

    def test_run_retries_retryable_errors(self, db: Database) -> None:
        calls = 0

        def flaky(tr: Transaction) -> str:
            nonlocal calls
            calls += 1
            tr.set(b"attempt", str(calls).encode())
            if calls < 3:
                raise errors.KVConflict("injected")
            return "done"

        assert db.run(flaky) == "done"
        assert calls == 3
        assert read(db, b"attempt") == b"3"  # failed attempts left nothing

    def test_run_propagates_non_retryable_errors(self, db: Database) -> None:
        calls = 0

        def fn(tr: Transaction) -> None:
            nonlocal calls
            calls += 1
            tr.set(b"k", b"v")
            raise errors.NotFound("no such thing")

        with pytest.raises(errors.NotFound):
            db.run(fn)
        assert calls == 1
        assert read(db, b"k") is None

        def boom(tr: Transaction) -> None:
            tr.set(b"k", b"v")
            raise ValueError("not a py3fs error")

        with pytest.raises(ValueError, match="not a py3fs error"):
            db.run(boom)
        assert read(db, b"k") is None

    def test_run_gives_up_after_max_retries(
        self, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(db, "max_retries", 3)
        calls = 0

        def always(tr: Transaction) -> None:
            nonlocal calls
            calls += 1
            raise errors.KVConflict("always")

        with pytest.raises(errors.KVConflict):
            db.run(always)
        assert calls == 3

    async def test_arun(self, db: Database) -> None:
        await db.arun(lambda tr: tr.set(b"k", b"v"))
        assert await db.arun(lambda tr: tr.get(b"k"), read_only=True) == b"v"

    def test_transactional_decorator(self, db: Database) -> None:
        @transactional
        def put(tr: Transaction, key: bytes, value: bytes = b"v") -> bytes | None:
            old = tr.get(key)
            tr.set(key, value)
            return old

        # On a Database: its own committed transaction.
        assert put(db, b"a", value=b"1") is None
        assert put(db, b"a", b"2") == b"1"
        assert read(db, b"a") == b"2"

        # On a Transaction: inline, committed (or not) with the caller's.
        def outer(tr: Transaction) -> None:
            put(tr, b"b")
            put(tr, b"c")
            assert tr.get(b"b") == b"v"

        db.run(outer)
        assert read(db, b"b") == read(db, b"c") == b"v"

        tr = db.create_transaction()
        put(tr, b"d")
        tr.cancel()
        assert read(db, b"d") is None
