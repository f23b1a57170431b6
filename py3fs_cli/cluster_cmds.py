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
@click.option("--heartbeat-timeout", default="2s", show_default=True)
@click.option(
    "--tls/--no-tls",
    default=False,
    show_default=True,
    help="TLS on mgmtd's gRPC, meta's RPCs and the data plane, with a local CA "
    "in DATA_DIR/tls "
    "(clients find it through the cluster file's tls_dir)",
)
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
    tls: bool,
) -> None:
    """Start mgmtd, meta and storage processes and create the chain table.

    On a cluster that already exists in DATA_DIR, start only the processes that
    are down, on the ports they had."""
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
        tls=tls,
    )
    local = LocalCluster(spec)
    if local.state_file.exists():
        _check_same_spec(LocalCluster.load(data_dir).spec, spec)
    started = local.up()
    _print_table(local)
    if len(started) < len(local.procs):
        click.echo(
            f"\nstarted {len(started)} of {len(local.procs)} process(es); "
            "the others were running"
        )
    click.echo(f"\ncluster file: {local.cluster_file}")
    click.echo(f"data:         {local.data_dir}")
    click.echo(f"logs:         {local.run_dir}/*.log")
    click.echo(f"KV store:     {local.kv_url}")
    if local.status_url:
        click.echo(f"status page:  {local.status_url}")


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


def _check_same_spec(recorded: ClusterSpec, asked: ClusterSpec) -> None:
    """Options given explicitly must match the cluster recorded in the directory:
    `up` resumes that cluster and does not reshape it."""
    ctx = click.get_current_context()
    names = ("meta", "storage", "targets", "replicas", "kv", "fsync", "chunk_size")
    for name in (*names, "heartbeat_timeout"):
        source = ctx.get_parameter_source(name)
        if source is not click.core.ParameterSource.COMMANDLINE:
            continue
        if getattr(recorded, name) != getattr(asked, name):
            raise click.UsageError(
                f"the cluster in {recorded.data_dir} was made with "
                f"{name}={getattr(recorded, name)!r}; `cluster up` resumes it as it "
                "is (remove the directory to make a different one)"
            )


def _print_table(local: LocalCluster) -> None:
    rows = local.status()
    click.echo(f"{'ROLE':<8} {'NODE':>4} {'PID':>8}  {'ADDRESS':<22} STATE")
    for r in rows:
        click.echo(
            f"{r['role']:<8} {r['node_id']:>4} {r['pid']:>8}  {r['address']:<22} "
            f"{r['state']}"
        )
