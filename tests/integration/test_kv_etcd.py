"""The KV conformance suite against a real 3-member etcd cluster, plus what only
the etcd backend has: binary keys next to its reserved prefixes, paging, limits,
and failover between members."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_harness import endpoints_of, etcd_cluster, wipe
from kv_conformance import KVConformance, fill, read

from py3fs import errors
from py3fs.etcd_local import EtcdMember, wait_for_leader
from py3fs.kv.base import Database, Transaction, decode_counter
from py3fs.kv.etcd import EtcdDatabase
from py3fs.kv.registry import open_database


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EtcdMember]]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as m:
        yield m


@pytest.fixture
def db(members: list[EtcdMember]) -> Iterator[Database]:
    wipe(members)
    with open_database(f"etcd://{endpoints_of(members)}") as db:
        yield db


class TestEtcd(KVConformance):
    pass


def test_binary_keys_and_empty_key(db: Database) -> None:
    keys = [b"", b"\x00", b"d", b"r", b"x", b"\xff", b"\xff" * 30, b"\xff/rv/a"]
    fill(db, {k: k + b"!" for k in keys})
    assert db.run(lambda tr: tr.get_range(b"", b"\xff" * 31)) == [
        (k, k + b"!") for k in sorted(keys)
    ]
    assert read(db, b"") == b"!"
    db.run(lambda tr: tr.clear_range(b"", b"\xff" * 31))
    assert db.run(lambda tr: tr.get_range(b"", b"\xff" * 31)) == []


def test_range_pages(members: list[EtcdMember]) -> None:
    wipe(members)
    with EtcdDatabase(endpoints_of(members), page=7) as db:
        pairs = {f"p{i:03}".encode(): str(i).encode() for i in range(50)}
        fill(db, pairs)
        assert db.run(lambda tr: tr.get_range(b"p", b"q")) == sorted(pairs.items())
        got = db.run(lambda tr: tr.get_range(b"p", b"q", reverse=True, limit=20))
        assert got == sorted(pairs.items(), reverse=True)[:20]

        def overlay(tr: Transaction) -> list[bytes]:
            tr.clear_range(b"p000", b"p040")
            tr.set(b"p005", b"local")
            return [k for k, _ in tr.get_range(b"p", b"q", limit=3)]

        assert overlay(db.create_transaction()) == [b"p005", b"p040", b"p041"]


def test_snapshot_is_pinned(db: Database) -> None:
    fill(db, {b"a": b"1", b"b": b"1"})
    tr = db.create_transaction(read_only=True)
    assert tr.get(b"a") == b"1"
    fill(db, {b"b": b"2"})
    assert tr.get(b"b") == b"1"  # the snapshot of the first read
    tr.cancel()


def test_deleted_key_conflicts(db: Database) -> None:
    fill(db, {b"k": b"v"})
    tr = db.create_transaction()
    assert tr.get(b"k") == b"v"
    db.run(lambda t: t.clear(b"k"))
    tr.set(b"other", b"x")
    with pytest.raises(errors.KVConflict):
        tr.commit()


def test_clear_range_aborts_narrower_reader(db: Database) -> None:
    """A clear_range over several buckets must abort a reader of one of them."""
    fill(db, {b"DENT" + bytes(8) + b"a": b"1"})
    tr = db.create_transaction()
    assert len(tr.get_prefix(b"DENT" + bytes(8))) == 1
    db.run(lambda t: t.clear_range(b"DENT", b"DENU"))
    tr.set(b"count", b"1")
    with pytest.raises(errors.KVConflict):
        tr.commit()


def test_too_many_ops_is_too_large(db: Database) -> None:
    def huge(tr: Transaction) -> None:
        for i in range(1100):  # over --max-txn-ops 1024
            tr.set(f"big{i}".encode(), b"v")

    with pytest.raises(errors.KVTooLarge):
        db.run(huge)


def test_unreachable_endpoints_are_unavailable() -> None:
    with (
        EtcdDatabase("127.0.0.1:1", timeout=1) as db,
        pytest.raises(errors.KVUnavailable),
    ):
        db.create_transaction().get(b"k")


def test_survives_a_killed_member(tmp_path: Path) -> None:
    """Reads and writes go on through the others when the leader dies, and the
    restarted member catches up."""
    with (
        etcd_cluster(tmp_path) as members,
        EtcdDatabase(endpoints_of(members)) as db,
    ):
        db.run(lambda tr: tr.add(b"n", 1))
        leader = wait_for_leader(members)
        leader.kill()
        t0 = time.monotonic()
        for _ in range(20):
            db.run(lambda tr: tr.add(b"n", 1))
        assert read(db, b"n") is not None
        assert time.monotonic() - t0 < 30
        leader.start(30)
        wait_for_leader(members)
        with EtcdDatabase(leader.address) as only_restarted:
            got = only_restarted.run(lambda tr: tr.get(b"n"), read_only=True)
        assert decode_counter(got) == 21
