"""The embedded KV backend: one SQLite file (WAL) shared by the processes of a host.

Serializability comes from SQLite's single writer: a read-write transaction starts
with BEGIN IMMEDIATE, so two can never interleave; read-only transactions read a WAL
snapshot. A busy database surfaces as the retryable KVUnavailable. Each thread gets
its own connection (sqlite3 connections are not shared across threads).

`nowait()` lets an event loop run short transactions itself: a transaction
there takes ~100 µs, less than the two thread hand-offs of `arun` cost on a
loaded host, but it must never sleep on a lock (see `SqliteDatabase.nowait`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

from py3fs import errors
from py3fs.kv.base import Database, Transaction, decode_counter, encode_counter


def _translate(exc: sqlite3.Error) -> errors.KVError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return errors.KVUnavailable(f"sqlite: {text}")
    if isinstance(exc, sqlite3.OperationalError) and "disk" in text:
        return errors.KVUnavailable(f"sqlite: {text}")
    return errors.KVError(f"sqlite: {text}")


class _WriteLock:
    """A writer's turn: a thread lock for the writers of this process, then an
    flock on a file beside the database for those of other processes (the
    meta processes of a host, mgmtd). Both hand over as soon as the holder
    commits; SQLite's own busy handler, which these replace (it remains for
    foreign writers), sleeps 1, 2, 5, 10 ms... between tries however soon the
    writer before it finishes. The kernel drops the flock of a killed process."""

    # Seconds between tries for the file lock: short, as a holder commits in
    # about 100 µs; flock has no timeout of its own.
    FIRST_SLEEP = 0.00005
    MAX_SLEEP = 0.001

    def __init__(self, path: str | None) -> None:
        self._thread = threading.Lock()
        self._fd = -1
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, timeout: float) -> bool:
        """Take both locks within `timeout` seconds (<= 0: only if both are
        free now); False, holding neither, when that fails."""
        if timeout > 0:
            deadline = time.monotonic() + timeout
            if not self._thread.acquire(timeout=timeout):
                return False
        else:
            deadline = 0.0
            if not self._thread.acquire(blocking=False):
                return False
        if self._fd < 0:
            return True
        delay = self.FIRST_SLEEP
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError:
                self._thread.release()
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                self._thread.release()
                return False
            time.sleep(min(delay, left))
            delay = min(delay * 2, self.MAX_SLEEP)

    def release(self) -> None:
        try:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _i64sum(old: bytes | None, delta: bytes) -> bytes:
    """SQL function `py3fs_i64sum`: a counter value (little-endian int64
    bytes, absent: 0) plus a delta in the same encoding, as `Transaction.add`
    defines it."""
    return encode_counter(decode_counter(old) + decode_counter(delta))


_ADDS_PER_STATEMENT = 100


@functools.cache
def _add_sql(rows: int) -> str:
    """One statement for `rows` counter additions (instead of a SELECT and an
    INSERT each): a new key takes the delta, an existing one the sum."""
    values = ", ".join(["(?, ?)"] * rows)
    return (
        f"INSERT INTO kv (k, v) VALUES {values} "
        "ON CONFLICT(k) DO UPDATE SET v = py3fs_i64sum(v, excluded.v)"
    )


class SqliteTransaction(Transaction):
    """Besides SQLite's own statement cache, two per-transaction savings (a
    namespace op is a dozen statements, each ~10 µs of Python and SQLite):
    values read or written are remembered, so a key read twice (the parent of
    a rename within one directory) costs one SELECT; and counter additions
    wait for the commit, where they become one UPSERT, unless the
    transaction reads or overwrites that key first. Both see exactly what
    SQLite would: a transaction reads its own snapshot plus its own writes."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        read_only: bool,
        write_lock: _WriteLock,
        lock_timeout: float,
    ) -> None:
        self._conn = conn
        self._read_only = read_only
        self._open = False
        self._done = False
        self._write_lock = write_lock
        self._lock_timeout = lock_timeout
        self._locked = False
        self._seen: dict[bytes, bytes | None] = {}  # key -> value in this txn
        self._adds: dict[bytes, int] = {}  # counter key -> delta not yet written

    def _begin(self) -> sqlite3.Connection:
        if self._done:
            raise errors.KVError("transaction already finished")
        if not self._open:
            if self._conn.in_transaction:
                # Autocommit writes outside it would be neither atomic nor isolated.
                raise errors.KVError(
                    "another transaction is open on this thread's connection"
                )
            if not self._read_only:
                # Writers queue on `_WriteLock` rather than on SQLite's busy
                # handler (see there).
                try:
                    got = self._write_lock.acquire(self._lock_timeout)
                except OSError as exc:
                    raise errors.KVUnavailable(f"sqlite write lock: {exc}") from None
                if not got:
                    raise errors.KVUnavailable("sqlite: another writer holds the lock")
                self._locked = True
            try:
                self._conn.execute("BEGIN" if self._read_only else "BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._unlock()
                raise _translate(exc) from None
            self._open = True
        return self._conn

    def _write(self) -> sqlite3.Connection:
        if self._read_only:
            raise errors.KVError("write in a read-only transaction")
        return self._begin()

    def get(self, key: bytes) -> bytes | None:
        if key in self._adds:
            self._flush_adds()
        elif key in self._seen:
            return self._seen[key]
        try:
            row = (
                self._begin().execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            )
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        value = None if row is None else bytes(row[0])
        self._seen[key] = value
        return value

    def get_range(
        self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        self._flush_adds_within(begin, end)
        order = "DESC" if reverse else "ASC"
        sql = f"SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k {order}"
        params: tuple[object, ...] = (begin, end)
        if limit > 0:
            sql += " LIMIT ?"
            params = (begin, end, limit)
        try:
            rows = self._begin().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc) from None
        return [(bytes(k), bytes(v)) for k, v in rows]

    def set(self, key: bytes, value: bytes) -> None:
        self._adds.pop(key, None)  # overwritten: the pending delta is moot
        try:
            self._write().execute(
                "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value)
            )
        except sqlite3.Error as exc:
            self._seen.pop(key, None)
            raise _translate(exc) from None
        self._seen[key] = value

    def insert(self, key: bytes, value: bytes) -> bool:
        # One statement where the base class reads, then writes.
        if key in self._adds:
            self._flush_adds()
        elif self._seen.get(key) is not None:
            return False
        try:
            cur = self._write().execute(
                "INSERT OR IGNORE INTO kv (k, v) VALUES (?, ?)", (key, value)
            )
        except sqlite3.Error as exc:
            self._seen.pop(key, None)
            raise _translate(exc) from None
        if cur.rowcount != 1:
            self._seen.pop(key, None)  # there, with a value not read
            return False
        self._seen[key] = value
        return True

    def clear(self, key: bytes) -> None:
        self._adds.pop(key, None)
        try:
            self._write().execute("DELETE FROM kv WHERE k = ?", (key,))
        except sqlite3.Error as exc:
            self._seen.pop(key, None)
            raise _translate(exc) from None
        self._seen[key] = None

    def clear_range(self, begin: bytes, end: bytes) -> None:
        self._flush_adds_within(begin, end)
        for key in [k for k in self._seen if begin <= k < end]:
            del self._seen[key]
        try:
            self._write().execute("DELETE FROM kv WHERE k >= ? AND k < ?", (begin, end))
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    def add(self, key: bytes, delta: int) -> None:
        self._write()  # a read-only transaction fails here, not at commit
        self._adds[key] = self._adds.get(key, 0) + delta

    def _flush_adds_within(self, begin: bytes, end: bytes) -> None:
        if any(begin <= k < end for k in self._adds):
            self._flush_adds()

    def _flush_adds(self) -> None:
        if not self._adds:
            return
        items = list(self._adds.items())
        for key in self._adds:
            self._seen.pop(key, None)
        self._adds.clear()
        conn = self._write()
        try:
            for i in range(0, len(items), _ADDS_PER_STATEMENT):
                part = items[i : i + _ADDS_PER_STATEMENT]
                params = [x for k, d in part for x in (k, encode_counter(d))]
                conn.execute(_add_sql(len(part)), params)
        except sqlite3.Error as exc:
            raise _translate(exc) from None

    def commit(self) -> None:
        if self._done:
            return
        if self._adds:
            try:
                self._flush_adds()
            except errors.KVError:
                self.cancel()
                raise
        self._done = True
        if self._open:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc) from None
            finally:
                self._unlock()

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self._rollback()
        self._unlock()

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            self._write_lock.release()

    def _rollback(self) -> None:
        # Only a transaction that began may roll back: the connection is per
        # thread, so another transaction of this thread may own the open one.
        if self._open and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


class SqliteDatabase(Database):
    def __init__(self, path: str, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._nowait = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if path != ":memory:":
            # The namespace, users and token digests: owner only. SQLite gives
            # its -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
        # A file of its own: SQLite's POSIX locks on the database file would
        # be dropped when any other descriptor of that file is closed.
        self._write_lock = _WriteLock(None if path == ":memory:" else path + "-wlock")
        conn = self._conn()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) "
            "WITHOUT ROWID"
        )

    def _conn(self, nowait: bool = False) -> sqlite3.Connection:
        attr = "nowait_conn" if nowait else "conn"
        conn: sqlite3.Connection | None = getattr(self._local, attr, None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            busy_ms = 0 if nowait else self._busy_timeout_ms
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL: a commit survives a killed process (the WAL is in the page
            # cache); only a power loss may drop the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.create_function("py3fs_i64sum", 2, _i64sum, deterministic=True)
            setattr(self._local, attr, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    def create_transaction(self, read_only: bool = False) -> Transaction:
        if not self.waits():
            return SqliteTransaction(
                self._conn(nowait=True), read_only, self._write_lock, 0.0
            )
        return SqliteTransaction(
            self._conn(), read_only, self._write_lock, self._busy_timeout_ms / 1000
        )

    def waits(self) -> bool:
        return not getattr(self._nowait, "on", False)

    @contextlib.contextmanager
    def nowait(self) -> Iterator[None]:
        """Inside the block, this thread's transactions make one attempt and
        never wait for a lock: neither for another writer of this process nor
        for SQLite's write lock held by another process (a connection of its
        own with busy_timeout 0). A lock held elsewhere raises KVUnavailable at
        once, with nothing written; the caller then runs the work the ordinary
        way (`arun`, in a worker thread, with retries). For an event loop: it
        must not block, yet a transaction costs it less than two thread
        hand-offs."""
        self._nowait.on = True
        try:
            yield
        finally:
            self._nowait.on = False

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._write_lock.close()
        self._local = threading.local()
        self._nowait = threading.local()
