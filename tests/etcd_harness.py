"""A real 3-member etcd cluster on loopback for tests (see `py3fs.etcd_local`)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from py3fs.etcd_local import (
    EtcdMember,
    endpoints_of,
    find_etcd,
    plan_members,
    start_members,
    stop_members,
)

SKIP_REASON = "etcd binary not found: apt-get install etcd-server (or set PY3FS_ETCD)"


def require_etcd() -> str:
    """The etcd binary, or skip the test with the reason."""
    binary = find_etcd()
    if binary is None:
        pytest.skip(SKIP_REASON)
    return binary


@contextmanager
def etcd_cluster(tmp: Path, size: int = 3) -> Iterator[list[EtcdMember]]:
    """Start `size` members with data under `tmp` and always stop them."""
    members = plan_members(tmp / "etcd", tmp / "run", size, binary=require_etcd())
    start_members(members)
    try:
        yield members
    finally:
        stop_members(members, timeout=5)


def wipe(members: list[EtcdMember]) -> None:
    """Delete every key (tests share one cluster and each wants it empty)."""
    body = json.dumps({"key": "AA==", "range_end": "AA=="}).encode()  # all keys
    for m in members:
        if not m.running():
            continue
        req = urllib.request.Request(
            f"http://{m.address}/v3/kv/deleterange", data=body, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
        return
    raise RuntimeError("no etcd member is running")


__all__ = ["endpoints_of", "etcd_cluster", "require_etcd", "wipe"]
