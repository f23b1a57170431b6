"""The KV conformance suite against the SQLite backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kv_conformance import KVConformance, read

from py3fs import errors
from py3fs.kv.base import Database
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
