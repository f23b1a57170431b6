"""The etcd backend's pure parts: range-version buckets and the txn it builds."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from py3fs import errors
from py3fs.kv.etcd import EtcdTransaction, covering_prefix
from py3fs.kv.etcd_http import parse_endpoints, translate


def _dec(op: dict[str, Any]) -> tuple[str, bytes, bytes | None]:
    kind, body = next(iter(op.items()))
    end = body.get("range_end")
    return kind, base64.b64decode(body["key"]), base64.b64decode(end) if end else None


def test_covering_prefix() -> None:
    assert covering_prefix(b"dir/", b"dir0") == b"dir/"
    dent = b"DENT" + bytes(8)
    assert covering_prefix(dent, dent[:-1] + b"\x01") == dent
    assert covering_prefix(dent + b"a", dent + b"b") == dent
    assert covering_prefix(b"k0", b"k5") == b""  # shorter than a bucket
    assert covering_prefix(b"abcd", b"abcf") == b""  # spans two 4-byte buckets
    assert covering_prefix(b"\xff" * 4, b"\xff" * 6) == b"\xff" * 4


def test_delete_ranges_split_around_later_sets() -> None:
    tr = EtcdTransaction(http=None, read_only=False)  # type: ignore[arg-type]
    tr.set(b"a5", b"dropped")
    tr.clear_range(b"a", b"b")
    tr.set(b"a3", b"kept")
    tr.clear(b"a4")  # inside the range already
    tr.clear(b"cccc")
    ops = [_dec(op) for op in tr._ops()]
    user = [op for op in ops if op[1].startswith(b"d")]
    assert sorted(user) == [
        ("request_delete_range", b"da", b"da3"),
        ("request_delete_range", b"da3\x00", b"db"),
        ("request_delete_range", b"dcccc", None),
        ("request_put", b"da3", None),
    ]
    guards = {op[1] for op in ops if not op[1].startswith(b"d")}
    # Every write bumps its buckets; the clear_range also its clear marker.
    assert {b"r", b"x", b"rcccc"} <= guards


def test_endpoints_and_error_translation() -> None:
    assert parse_endpoints("h1:1, http://h2:2/") == [("h1", 1), ("h2", 2)]
    with pytest.raises(errors.InvalidArgument):
        parse_endpoints("nohost")
    big = b'{"error":"etcdserver: too many operations in txn request","code":3}'
    assert isinstance(translate(400, big), errors.KVTooLarge)
    gone = b'{"message":"mvcc: required revision has been compacted","code":11}'
    assert isinstance(translate(400, gone), errors.KVConflict)
    assert isinstance(
        translate(503, b'{"message":"x","code":14}'), errors.KVUnavailable
    )
    assert isinstance(translate(200, b"garbage"), errors.KVError)
