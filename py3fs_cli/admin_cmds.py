"""Operator commands: `py3fs admin list-nodes|list-targets|list-chains`,
`py3fs fsck`, `py3fs dump`, `py3fs load` and `py3fs gc`.

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
from py3fs.routing import RoutingView
from py3fs.units import format_size
from py3fs_cli import dump as dump_mod
from py3fs_cli import fsck as fsck_mod
from py3fs_cli.options import cluster_option

T = TypeVar("T")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output."
)


def _run(cluster_file: str | None, fn: Callable[[Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Client.from_cluster(cluster_file) as fs:
            return await fn(fs)

    return uvloop.run(main())


def _cluster_keys(cluster_file: str | None) -> caps.Keys | None:
    """The cluster secret beside the cluster file (a local cluster's data
    directory), if this operator can read it: fsck signs its direct removes
    and replica reads with it, as meta's GC does. None: storage checks
    nothing, or the operator lacks the secret and storage will refuse."""
    secret = Path(client_config.cluster_file(cluster_file)).parent / "cluster.secret"
    try:
        return caps.Keys.load(str(secret))
    except OSError:
        return None


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
            "state": "up" if n.up else "down",
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
