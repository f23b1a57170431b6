"""The KV conformance suite against the SQLite backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from py3fs.kv.base import Database
from py3fs.kv.registry import open_database
from py3fs.kv.sqlite import SqliteDatabase
from tests.kv_conformance import KVConformance, read


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
