"""Identities (issue 11): meta derives who a client is from its token.

Attacks, each against a real cluster (`py3fs cluster up` processes): a user's
client claiming uid 0, a client with no token, a revoked token. On the code
before tokens, the uid-0 claim read root's 0600 file and created root-owned
files; both are refused now.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest
from harness import client_for, running_cluster

from client import Client, ClientConfig
from py3fs import auth, errors
from py3fs.cluster import LocalCluster
from py3fs.kv.registry import open_database
from py3fs.proto.messages import CloseReq, SyncReq

SECRET = b"root only" * 100


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("sec")) as c:
        yield c


def add_user(cluster: LocalCluster, name: str, uid: int, gid: int) -> str:
    token = harness.add_user(cluster, name, uid, gid, groups="5000,5001")
    assert token.startswith("p3t_")
    return token


def user_client(cluster: LocalCluster, token: str, **kw: object) -> Client:
    # The attacker claims uid/gid 0; only the token should count.
    return Client(
        ClientConfig(mgmt=cluster.mgmt_addresses, token=token, uid=0, gid=0, **kw)
    )


async def test_cluster_up_writes_private_admin_token(cluster: LocalCluster) -> None:
    mode = os.stat(cluster.admin_token_file).st_mode & 0o777
    assert mode == 0o600
    assert f'token_file = "{cluster.admin_token_file}"' in (
        cluster.cluster_file.read_text()
    )
    # The quickstart path: a client built from the cluster file just works.
    async with Client.from_cluster(str(cluster.cluster_file)) as fs:
        await fs.write_file("/quickstart", b"hi")
        assert (await fs.stat("/quickstart")).uid == 0


async def test_claimed_uid0_is_replaced_by_token_identity(
    cluster: LocalCluster,
) -> None:
    async with client_for(cluster) as admin:
        await admin.mkdir("/private", mode=0o700)
        await admin.write_file("/private/secret", SECRET)
        await admin.chmod("/private/secret", 0o600)
        await admin.mkdir("/pub", mode=0o777)
    token = add_user(cluster, "alice", 1000, 1000)
    async with user_client(cluster, token) as alice:
        with pytest.raises(errors.PermissionDenied):
            await alice.read_file("/private/secret")
        with pytest.raises(errors.PermissionDenied):
            await alice.listdir("/private")
        with pytest.raises(errors.OperationNotPermitted):
            await alice.chmod("/private", 0o777)
        await alice.write_file("/pub/mine", b"x")
        node = await alice.stat("/pub/mine")
        assert (node.uid, node.gid) == (1000, 1000)
    async with client_for(cluster) as admin:
        assert await admin.read_file("/private/secret") == SECRET


async def test_no_token_and_unknown_token_refused(cluster: LocalCluster) -> None:
    for token in ("", "p3t_forged"):
        fs = Client(
            ClientConfig(mgmt=cluster.mgmt_addresses, token=token, retry_timeout=2)
        )
        os.environ.pop(auth.TOKEN_ENV, None)
        async with fs:
            if token == "":
                fs.meta.token = ""  # nothing found on this machine either
            with pytest.raises(errors.Unauthenticated):
                await fs.stat("/")


async def test_rotate_and_remove_revoke(cluster: LocalCluster) -> None:
    token = add_user(cluster, "bob", 1001, 1001)
    async with user_client(cluster, token) as bob:
        await bob.stat("/")
        with open_database(cluster.kv_url) as db:
            new = auth.rotate(db, "bob")
        await asyncio.sleep(2.5)  # meta caches identities for 2 s
        with pytest.raises(errors.Unauthenticated):
            await bob.stat("/")
        bob.meta.token = new
        await bob.stat("/")
        with open_database(cluster.kv_url) as db:
            auth.remove_user(db, "bob")
        await asyncio.sleep(2.5)
        with pytest.raises(errors.Unauthenticated):
            await bob.stat("/")


def test_cli_lists_users_without_tokens(cluster: LocalCluster) -> None:
    token = add_user(cluster, "carol", 1002, 1002)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "py3fs",
            "admin",
            "user",
            "list",
            "--data-dir",
            str(cluster.data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "carol" in out
    assert "admin" in out
    assert token not in out
    with open_database(cluster.kv_url) as db:
        raw = b"".join(v for _, v in db.run(lambda tx: tx.get_range(b"", b"\xff")))
    assert token.encode() not in raw


def test_token_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    monkeypatch.delenv(auth.TOKEN_FILE_ENV, raising=False)
    f = tmp_path / "tok"
    auth.write_token_file(f, "p3t_abc")
    assert os.stat(f).st_mode & 0o777 == 0o600
    assert auth.find_token(str(f)) == "p3t_abc"
    monkeypatch.setenv(auth.TOKEN_ENV, "p3t_env")
    assert auth.find_token(str(f)) == "p3t_env"


async def test_sync_and_close_on_others_files_refused(cluster: LocalCluster) -> None:
    """Before, any client could set any file's length with Sync/Close (2^40),
    with no session and no permission."""
    async with client_for(cluster) as admin:
        await admin.write_file("/len-victim", b"v" * 100)
        node = await admin.stat("/len-victim")
        await admin.mkdir("/dave", mode=0o777)
    token = add_user(cluster, "dave", 1003, 1003)
    async with user_client(cluster, token) as dave:
        with pytest.raises(errors.PermissionDenied):
            await dave.meta.sync(SyncReq(inode=node.inode, length=1 << 40))
        with pytest.raises(errors.PermissionDenied):
            await dave.meta.close(
                CloseReq(inode=node.inode, session_id="guess", length=1 << 40)
            )
        # Dave's own file: his session (and his permission) let him.
        await dave.write_file("/dave/f", b"d")
        async with await dave.open("/dave/f", "ab") as f:
            await f.write(b"more")
        assert (await dave.stat("/dave/f")).length == 5
    async with client_for(cluster) as admin:
        assert (await admin.stat("/len-victim")).length == 100
