"""`py3fs cluster up|down|status`: a local cluster (see `py3fs.cluster`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from py3fs.cluster import ClusterSpec, LocalCluster

DEFAULT_DIR = ".py3fs"
_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    help="Where the cluster keeps its data, logs and cluster file.",
)


@click.group()
def cluster() -> None:
    """Run a whole py3fs cluster on this machine."""


@cluster.command()
@_data_dir
@click.option("--meta", default=2, show_default=True, help="Meta processes.")
@click.option("--storage", default=3, show_default=True, help="Storage nodes.")
@click.option("--targets", default=4, show_default=True, help="Targets per node.")
@click.option("--replicas", default=3, show_default=True, help="Replicas per chain.")
@click.option(
    "--kv",
    default="",
    help="KV store URL, or 'etcd' to run a local 3-member etcd "
    "(default: sqlite in DATA_DIR).",
)
@click.option(
    "--fsync/--no-fsync",
    default=False,
    show_default=True,
    help="fsync every chunk write before acking (else on client fsync/close)",
)
@click.option("--chunk-size", default="4MiB", show_default=True)
@click.option("--heartbeat-timeout", default="10s", show_default=True)
def up(
    data_dir: Path,
    meta: int,
    storage: int,
    targets: int,
    replicas: int,
    kv: str,
    fsync: bool,
    chunk_size: str,
    heartbeat_timeout: str,
) -> None:
    """Start mgmtd, meta and storage processes and create the chain table."""
    spec = ClusterSpec(
        data_dir=data_dir,
        meta=meta,
        storage=storage,
        targets=targets,
        replicas=replicas,
        kv=kv,
        fsync=fsync,
        chunk_size=chunk_size,
        heartbeat_timeout=heartbeat_timeout,
    )
    local = LocalCluster(spec)
    local.up()
    _print_table(local)
    click.echo(f"\ncluster file: {local.cluster_file}")
    click.echo(f"data:         {local.data_dir}")
    click.echo(f"logs:         {local.run_dir}/*.log")
    click.echo(f"KV store:     {local.kv_url}")


@cluster.command()
@_data_dir
def down(data_dir: Path) -> None:
    """Stop every process of the cluster (data is kept)."""
    local = LocalCluster.load(data_dir)
    stopped = local.down()
    click.echo(f"stopped {len(stopped)} process(es); data kept in {local.data_dir}")


@cluster.command()
@_data_dir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir: Path, as_json: bool) -> None:
    """List the cluster's processes with role, node id, pid, address and state."""
    local = LocalCluster.load(data_dir)
    if as_json:
        click.echo(json.dumps(local.status(), indent=2))
    else:
        _print_table(local)


def _print_table(local: LocalCluster) -> None:
    rows = local.status()
    click.echo(f"{'ROLE':<8} {'NODE':>4} {'PID':>8}  {'ADDRESS':<22} STATE")
    for r in rows:
        click.echo(
            f"{r['role']:<8} {r['node_id']:>4} {r['pid']:>8}  {r['address']:<22} "
            f"{r['state']}"
        )
