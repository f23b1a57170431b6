"""`py3fs admin user add|list|remove|rotate`: users and tokens (py3fs.auth).

These write the KV store directly, so they run where the cluster's KV store
is reachable with the rights of whoever started it (the local admin).
"""

from __future__ import annotations

from pathlib import Path

import click

from py3fs import auth
from py3fs.cluster import LocalCluster
from py3fs.kv.base import Database
from py3fs.kv.registry import open_database
from py3fs_cli.cluster_cmds import DEFAULT_DIR

_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    help="The local cluster whose KV store holds the users.",
)
_kv = click.option("--kv", default="", help="KV URL (instead of --data-dir).")


def _open(data_dir: Path, kv: str) -> Database:
    return open_database(kv or LocalCluster.load(data_dir).kv_url)


@click.group()
def user() -> None:
    """Users: each holds a token from which meta derives uid, gid and groups."""


@user.command("add")
@click.argument("name")
@click.option("--uid", type=int, required=True)
@click.option("--gid", type=int, required=True)
@click.option("--groups", default="", help="Supplementary gids, comma-separated.")
@click.option(
    "--mount",
    "act_for_others",
    is_flag=True,
    help="A mount daemon's token: may act for the local callers it serves.",
)
@_data_dir
@_kv
def add(
    name: str,
    uid: int,
    gid: int,
    groups: str,
    act_for_others: bool,
    data_dir: Path,
    kv: str,
) -> None:
    """Create user NAME and print its token (shown once; stored hashed)."""
    gids = [int(g) for g in groups.split(",") if g.strip()]
    with _open(data_dir, kv) as db:
        token = auth.add_user(db, name, uid, gid, gids, act_for_others=act_for_others)
    click.echo(token)


@user.command("list")
@_data_dir
@_kv
def list_(data_dir: Path, kv: str) -> None:
    """Users with their uid, gid and groups (never tokens)."""
    with _open(data_dir, kv) as db:
        users = auth.list_users(db)
    click.echo(f"{'NAME':16} {'UID':>6} {'GID':>6}  GROUPS  MOUNT")
    for u in users:
        gids = ",".join(map(str, u.groups)) or "-"
        mount = "yes" if u.act_for_others else "no"
        click.echo(f"{u.name:16} {u.uid:>6} {u.gid:>6}  {gids:7} {mount}")


@user.command("remove")
@click.argument("name")
@_data_dir
@_kv
def remove(name: str, data_dir: Path, kv: str) -> None:
    """Delete user NAME; its token stops working."""
    with _open(data_dir, kv) as db:
        auth.remove_user(db, name)
    click.echo(f"removed {name}")


@user.command("rotate")
@click.argument("name")
@_data_dir
@_kv
def rotate(name: str, data_dir: Path, kv: str) -> None:
    """Give NAME a new token (printed); the old one stops working."""
    with _open(data_dir, kv) as db:
        click.echo(auth.rotate(db, name))
