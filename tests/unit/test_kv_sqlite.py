"""The KV conformance suite against the SQLite backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kv_conformance import KVConformance, read

from py3fs import errors
from py3fs.kv.base import Database, Transaction, decode_counter
from py3fs.kv.registry import open_database
from py3fs.kv.sqlite import SqliteDatabase


class TestSqlite(KVConformance):
    @pytest.fixture
    def db(self, tmp_path: Path) -> Iterator[Database]:
        with open_database(f"sqlite://{tmp_path}/kv.db") as db:
            yield db


def test_two_handles_share_one_file(tmp_path: Path) -> None:
    """Processes on a host share the file: a second handle sees committed data."""
    path = str(tmp_path / "kv.db")
    with SqliteDatabase(path) as a, SqliteDatabase(path) as b:
        a.run(lambda tr: tr.set(b"k", b"v"))
        assert read(b, b"k") == b"v"


def test_second_open_transaction_on_a_thread_leaves_the_first_intact(
    tmp_path: Path,
) -> None:
    """Connections are per thread, so a second open transaction on the same thread
    is refused; refusing it must not roll back the first one (which would then
    write in autocommit mode, neither atomic nor isolated)."""
    with SqliteDatabase(str(tmp_path / "kv.db")) as db:
        first = db.create_transaction()
        first.set(b"a", b"1")
        second = db.create_transaction()
        with pytest.raises(errors.KVError):
            second.get(b"a")
        second.cancel()
        first.set(b"b", b"2")
        first.commit()
        assert db.run(lambda tr: tr.get_range(b"", b"\xff")) == [
            (b"a", b"1"),
            (b"b", b"2"),
        ]


def test_nowait_gives_up_at_once_while_another_thread_writes(tmp_path: Path) -> None:
    """In `nowait` (meta's event loop) a write transaction fails with the
    retryable KVUnavailable instead of waiting for this process's lock, and
    leaves nothing behind; outside the block the same call waits and commits."""
    with SqliteDatabase(str(tmp_path / "kv.db")) as db:
        started, release = threading.Event(), threading.Event()

        def hold(tr: Transaction) -> None:
            tr.set(b"held", b"1")
            started.set()
            release.wait(10)

        holder = threading.Thread(target=db.run, args=(hold,))
        holder.start()
        try:
            assert started.wait(10)
            with db.nowait(), pytest.raises(errors.KVUnavailable):
                db.run(lambda tr: tr.set(b"k", b"v"))
            # Reads never wait in WAL mode: they still work in the block.
            with db.nowait():
                assert db.run(lambda tr: tr.get(b"k"), read_only=True) is None
        finally:
            release.set()
            holder.join(10)
        assert db.waits()
        with db.nowait():
            db.run(lambda tr: tr.set(b"k", b"v"))
        assert read(db, b"k") == b"v"
        assert read(db, b"held") == b"1"


def test_nowait_gives_up_at_once_while_another_process_writes(tmp_path: Path) -> None:
    """SQLite's own lock, held through another handle (as another meta
    process would), makes a nowait write fail at once, not after the 10 s
    busy timeout."""
    path = str(tmp_path / "kv.db")
    with SqliteDatabase(path) as a, SqliteDatabase(path) as b:
        tr = a.create_transaction()
        tr.set(b"held", b"1")  # BEGIN IMMEDIATE: a holds the write lock
        try:
            start = time.monotonic()
            with b.nowait(), pytest.raises(errors.KVUnavailable):
                b.run(lambda t: t.set(b"k", b"v"))
            # Far below the busy timeout (10 s) that the waiting path uses.
            assert time.monotonic() - start < 5
        finally:
            tr.commit()
        with b.nowait():
            b.run(lambda t: t.set(b"k", b"v"))
        assert read(a, b"k") == b"v"


def test_writers_of_two_handles_take_turns(tmp_path: Path) -> None:
    """Two handles on one file stand for two processes (each has its own
    write-lock file descriptor, and flock locks are per descriptor): their
    read-modify-write transactions interleave without losing an update, and a
    handle that is closed releases its turn."""
    path = str(tmp_path / "kv.db")
    n = 200
    with SqliteDatabase(path) as a, SqliteDatabase(path) as b:

        def bump(db: SqliteDatabase) -> None:
            for _ in range(n):
                db.run(lambda tr: tr.add(b"count", 1))

        threads = [threading.Thread(target=bump, args=(db,)) for db in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert decode_counter(read(a, b"count")) == 4 * n
        holder = a.create_transaction()
        holder.set(b"x", b"1")  # a's turn, never finished...
        a.close()  # ...until its handle goes
        b.run(lambda tr: tr.set(b"y", b"2"))
        assert read(b, b"y") == b"2"
