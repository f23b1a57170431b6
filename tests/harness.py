"""Cluster helpers for integration and fault tests: real processes on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from client import Client, ClientConfig
from py3fs import caps, wire
from py3fs.cluster import ClusterSpec, LocalCluster
from py3fs.routing import RoutingView

# Short intervals so GC and failure detection happen within a test's patience.
FAST = {
    "meta": ["--gc-interval", "0.2s", "--heartbeat-interval", "0.5s"],
    "storage": ["--heartbeat-interval", "0.5s"],
}


@contextmanager
def running_cluster(data_dir: Path, **overrides: Any) -> Iterator[LocalCluster]:
    """Start a local cluster with the shipped durability (storage fsyncs as
    `py3fs cluster up` does) and always stop it."""
    fields: dict[str, Any] = {"extra": FAST}
    fields.update(overrides)
    cluster = LocalCluster(ClusterSpec(data_dir=data_dir, **fields))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down(timeout=5)


def client_for(cluster: LocalCluster, **overrides: Any) -> Client:
    fields: dict[str, Any] = {
        "token_file": str(cluster.admin_token_file),
        # The cluster's admin: raw chunk listings are signed as fsck's are.
        "secret_file": str(cluster.secret_file),
    }
    if cluster.spec.tls:
        fields["tls_dir"] = str(cluster.tls_dir)
    fields.update(overrides)
    return Client(ClientConfig(mgmt=cluster.mgmt_addresses, **fields))


def add_user(
    cluster: LocalCluster, name: str, uid: int, gid: int | None = None, groups: str = ""
) -> str:
    """`py3fs admin user add` as an operator runs it; returns the token it prints."""
    args = ["--uid", str(uid), "--gid", str(uid if gid is None else gid)]
    if groups:
        args += ["--groups", groups]
    args += ["--data-dir", str(cluster.data_dir)]
    return subprocess.run(
        [sys.executable, "-m", "py3fs", "admin", "user", "add", name, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def mint_capabilities(cluster: LocalCluster, fs: Client) -> None:
    """Let `fs` read and write chunks of inodes meta does not know (storage
    tests that bypass meta), signing capabilities with the cluster secret as
    meta would."""
    keys = caps.Keys.load(str(cluster.secret_file))
    assert keys is not None

    async def mint(inode: int, write: bool) -> tuple[bytes, float]:
        return keys.issue(inode, write), caps.DEFAULT_TTL

    fs.storage.capability = mint


async def list_chunks(
    fs: Client, view: RoutingView, target: int
) -> list[wire.ChunkMeta]:
    body, _ = await fs.storage.call(
        view.target_address(target),
        wire.MsgType.LIST_CHUNKS,
        wire.ListChunksReq(target_id=target),
    )
    assert isinstance(body, wire.ListChunksReply)
    return body.chunks
