"""Operator commands: `py3fs admin list-nodes|list-targets|list-chains`,
`py3fs admin set-layout|decommission`, `py3fs fsck`, `py3fs dump`,
`py3fs load` and `py3fs gc`.

All of them work through the client layer (routing from mgmtd, namespace from
meta, chunks through the data plane), against the cluster named by `--cluster`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from client import Client
from client import config as client_config
from py3fs import caps, errors
from py3fs.proto.messages import DirLayout
from py3fs.routing import RoutingView
from py3fs.units import format_size, parse_size
from py3fs_cli import dump as dump_mod
from py3fs_cli import fsck as fsck_mod
from py3fs_cli.options import cluster_option

T = TypeVar("T")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output."
)


def _run(cluster_file: str | None, fn: Callable[[Client], Awaitable[T]]) -> T:
    cfg = client_config.load_client_config(cluster_file)
    if not cfg.secret_file:
        # A cluster file from before it named the secret.
        cfg = client_config.replace(cfg, secret_file=_secret_path(cluster_file))

    async def main() -> T:
        async with Client(cfg) as fs:
            return await fn(fs)

    return uvloop.run(main())


def _secret_path(cluster_file: str | None) -> str:
    return str(Path(client_config.cluster_file(cluster_file)).parent / "cluster.secret")


def _cluster_keys(cluster_file: str | None) -> caps.Keys | None:
    """The cluster secret beside the cluster file (a local cluster's data
    directory), if this operator can read it: fsck signs its direct removes,
    chunk listings and replica reads with it, as meta's GC does; decommission
    and create-chain-table sign for mgmtd. None: nothing checks, or the
    operator lacks the secret and storage and mgmtd will refuse."""
    return caps.Keys.load_if_readable(_secret_path(cluster_file))


def _routing(cluster_file: str | None) -> RoutingView:
    return _run(cluster_file, lambda fs: fs.mgmt.routing())


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


@click.group()
def admin() -> None:
    """Inspect the cluster's nodes, targets and chains."""


@admin.command("list-nodes")
@cluster_option
@json_option
def list_nodes(cluster_file: str | None, as_json: bool) -> None:
    """Nodes registered with mgmtd, with their state."""
    view = _routing(cluster_file)
    now = time.time()
    rows = [
        {
            "node_id": n.node_id,
            "role": n.role,
            "address": n.address,
            "state": "decommissioned" if n.decommissioned else "up" if n.up else "down",
            "heartbeat_age_s": round(now - n.last_heartbeat, 1)
            if n.last_heartbeat
            else None,
            "pid": n.pid,
            "http": n.http,
        }
        for n in view.info.nodes
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _table(rows, ["node_id", "role", "address", "state", "heartbeat_age_s"])


@admin.command("list-targets")
@cluster_option
@json_option
def list_targets(cluster_file: str | None, as_json: bool) -> None:
    """Storage targets: node, chain, state, chunks and space."""
    view = _routing(cluster_file)
    chain_of = {t: c.chain_id for c in view.chains.values() for t in c.targets}
    rows = [
        {
            "target_id": t.target_id,
            "node_id": t.node_id,
            "chain_id": chain_of.get(t.target_id),
            "state": t.state,
            "chunks": t.chunk_count,
            "used_bytes": t.used_bytes,
            "free_bytes": t.free_bytes,
        }
        for t in view.info.targets
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        r["used"], r["free"] = (
            format_size(r["used_bytes"]),
            format_size(r["free_bytes"]),
        )
    _table(
        rows, ["target_id", "node_id", "chain_id", "state", "chunks", "used", "free"]
    )


@admin.command("list-chains")
@cluster_option
@json_option
def list_chains(cluster_file: str | None, as_json: bool) -> None:
    """Chains (head first) with each target's state."""
    view = _routing(cluster_file)
    rows = [
        {
            "chain_id": c.chain_id,
            "version": c.version,
            "targets": [
                {"target_id": t, "state": view.targets[t].state} for t in c.targets
            ],
        }
        for c in view.info.chains
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        r["targets"] = " ".join(f"{t['target_id']}:{t['state']}" for t in r["targets"])
    _table(rows, ["chain_id", "version", "targets"])


@admin.command("create-chain-table")
@cluster_option
@click.option("--replicas", default=3, show_default=True, help="Targets per chain.")
@click.option(
    "--wait-storage",
    default=0,
    help="First wait until this many storage nodes are up (deployments start "
    "all services at once).",
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
def create_chain_table(
    cluster_file: str | None, replicas: int, wait_storage: int, timeout: float
) -> None:
    """Create the chain table from the storage targets that are up (does nothing
    when the table exists)."""

    async def go(fs: Client) -> RoutingView:
        deadline = time.monotonic() + timeout
        while True:
            try:
                view = await fs.mgmt.routing()
            except errors.Py3fsError as exc:
                if not exc.retryable or time.monotonic() > deadline:
                    raise
            else:
                up = len(view.nodes_of_role("storage"))
                if up >= wait_storage:
                    break
                if time.monotonic() > deadline:
                    raise errors.RoutingUnavailable(
                        f"{up} of {wait_storage} storage nodes up after {timeout:g}s"
                    )
            await asyncio.sleep(0.5)
        return await fs.mgmt.create_chain_table(replicas)

    view = _run(cluster_file, go)
    click.echo(f"chain table: {len(view.chains)} chains of {replicas} targets")


def draining(view: RoutingView, node_id: int) -> list[int]:
    """Chains that still hold a target of `node_id`."""
    return sorted(
        c.chain_id
        for c in view.chains.values()
        if any(
            t in view.targets and view.targets[t].node_id == node_id for t in c.targets
        )
    )


@admin.command("decommission")
@cluster_option
@click.option(
    "--wait",
    default=300.0,
    show_default=True,
    help="Seconds to wait for the drain (0: start it and return).",
)
@click.argument("node_id", type=int)
def decommission(cluster_file: str | None, wait: float, node_id: int) -> None:
    """Drain storage node NODE_ID: each chain holding one of its targets gets a
    spare target of another node, resynced from the chain, and then drops the
    node's target. The node is placed in no new chain."""

    async def go(fs: Client) -> list[int]:
        view = await fs.mgmt.decommission(node_id)
        deadline = time.monotonic() + wait
        while (left := draining(view, node_id)) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            view = await fs.mgmt.routing()
        return left

    try:
        left = _run(cluster_file, go)
    except errors.Py3fsError as exc:
        raise click.ClickException(
            f"cannot decommission node {node_id}: {exc}"
        ) from None
    if left and wait:
        raise click.ClickException(
            f"node {node_id} still holds targets of chains {left} after {wait:g}s "
            "(the drain goes on; run the command again to wait)"
        )
    click.echo(
        f"node {node_id}: drained, in no chain"
        if not left
        else f"node {node_id}: draining chains {left}"
    )


def pick_table(view: RoutingView, replicas: int) -> int:
    """The lowest-numbered chain table whose chains all have `replicas` targets.
    Raises InvalidArgument, naming the replica counts there are, when none has."""
    counts: dict[int, set[int]] = {}
    for table in view.tables.values():
        counts[table.table_id] = {
            len(view.chain(c).targets) for c in table.chains if c in view.chains
        }
    fits = sorted(t for t, n in counts.items() if n == {replicas})
    if not fits:
        have = sorted({n for ns in counts.values() for n in ns})
        raise errors.InvalidArgument(
            f"no chain table of {replicas} replicas (tables have {have}); "
            f"create one with `py3fs admin create-chain-table --replicas {replicas}`"
        )
    return fits[0]


@admin.command("set-layout")
@cluster_option
@click.option(
    "--chunk-size", default="0", help="Chunk size (4MiB); 0: cluster default."
)
@click.option("--stripe", default=0, help="Chains per file; 0: every chain.")
@click.option(
    "--replicas", default=0, help="Use a chain table of this many replicas; 0: default."
)
@click.option("--clear", is_flag=True, help="Remove the layout (back to defaults).")
@click.argument("path")
def set_layout(
    cluster_file: str | None,
    chunk_size: str,
    stripe: int,
    replicas: int,
    clear: bool,
    path: str,
) -> None:
    """Set the layout that new files and subdirectories under directory PATH
    inherit (files already there keep theirs)."""
    try:
        size = parse_size(chunk_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chunk-size") from None

    async def go(fs: Client) -> DirLayout | None:
        table_id = pick_table(await fs.mgmt.routing(), replicas) if replicas else 0
        new = DirLayout() if clear else DirLayout(size, stripe, table_id)
        return (await fs.setattr(path, dir_layout=new)).dir_layout

    try:
        lay = _run(cluster_file, go)
    except errors.Py3fsError as exc:
        raise click.ClickException(f"cannot set the layout of {path}: {exc}") from None
    click.echo(f"{path}: {describe_dir_layout(lay)}")


def describe_dir_layout(lay: DirLayout | None) -> str:
    if lay is None:
        return "default layout"
    return (
        f"chunk {format_size(lay.chunk_size) if lay.chunk_size else 'default'}, "
        f"stripe {lay.stripe or 'all'}, table {lay.table_id or 'default'}"
    )


@click.command()
@cluster_option
@click.option("--repair", is_flag=True, help="Fix what is found.")
@click.option("--scrub", "do_scrub", is_flag=True, help="Verify every replica.")
@json_option
def fsck(cluster_file: str | None, repair: bool, do_scrub: bool, as_json: bool) -> None:
    """Check the namespace against storage: dangling entries, orphan chunks,
    lengths, and (with --scrub) checksums of every replica. Exits 1 while a
    problem remains unrepaired."""
    keys = _cluster_keys(cluster_file)
    report = _run(
        cluster_file,
        lambda fs: fsck_mod.fsck(fs, repair=repair, do_scrub=do_scrub, keys=keys),
    )
    if as_json:
        doc = {
            "files": report.files,
            "directories": report.directories,
            "chunks": report.chunks,
            "replicas_read": report.replicas_read,
            "problems": [p.as_dict() for p in report.problems],
            "clean": report.clean,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        for p in report.problems:
            state = "repaired" if p.repaired else "FOUND"
            click.echo(f"{state:<9} {p.kind:<9} {p.what}: {p.detail}")
        scrubbed = f", {report.replicas_read} replicas verified" if do_scrub else ""
        click.echo(
            f"{report.files} files, {report.directories} directories, "
            f"{report.chunks} chunks{scrubbed}: {len(report.problems)} problem(s), "
            f"{sum(not p.repaired for p in report.problems)} unrepaired"
        )
    if not report.clean:
        sys.exit(1)


@click.command()
@cluster_option
@click.option("-o", "--output", type=click.File("w"), default="-", show_default=True)
@click.argument("root", default="/")
def dump(cluster_file: str | None, output: Any, root: str) -> None:
    """Write the namespace under ROOT (metadata, not file data) as JSON lines."""

    async def go(fs: Client) -> int:
        count = 0
        async for rec in dump_mod.dump(fs, root):
            output.write(dump_mod.encode(rec) + "\n")
            count += 1
        return count - 1

    count = _run(cluster_file, go)
    output.flush()
    click.echo(f"dumped {count} names under {root}", err=True)


@click.command()
@cluster_option
@click.option("-i", "--input", "source", type=click.File("r"), default="-")
@click.argument("root", default="/")
def load(cluster_file: str | None, source: Any, root: str) -> None:
    """Recreate a dumped namespace under ROOT (files come back as holes of their
    recorded length)."""
    records = [json.loads(line) for line in source if line.strip()]
    count = _run(cluster_file, lambda fs: dump_mod.load(fs, records, root))
    click.echo(f"loaded {count} names under {root}", err=True)


@click.command()
@cluster_option
@click.option(
    "--wait", default=0.0, help="Seconds to wait for the GC queue to drain (0: no)."
)
def gc(cluster_file: str | None, wait: float) -> None:
    """Show how many removed files await chunk deletion, per meta service; with
    --wait, wait until none do (exit 1 if the time runs out)."""

    async def go(fs: Client) -> int:
        deadline = time.monotonic() + wait
        while True:
            queues = await gc_queues(fs)
            total = int(sum(queues.values()))
            if total == 0 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        for node_id, n in sorted(queues.items()):
            click.echo(f"meta {node_id}: {int(n)} file(s) queued for chunk removal")
        return total

    left = _run(cluster_file, go)
    if wait and left:
        click.echo(f"py3fs: {left} file(s) still queued after {wait:g}s", err=True)
        sys.exit(1)


async def gc_queues(fs: Client) -> dict[int, float]:
    """py3fs_gc_queue_length from every meta's /metrics, by node id."""
    view = await fs.mgmt.routing()
    out: dict[int, float] = {}
    for node in view.nodes_of_role("meta"):
        if not node.http:
            continue
        text = await _http_get(node.http, "/metrics")
        for family in text_string_to_metric_families(text):
            if family.name == "py3fs_gc_queue_length":
                out[node.node_id] = family.samples[0].value
    return out


async def _http_get(address: str, path: str, timeout: float = 5.0) -> str:
    host, _, port = address.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    return raw.partition(b"\r\n\r\n")[2].decode()


COMMANDS = [admin, fsck, dump, load, gc]
