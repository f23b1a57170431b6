"""mgmtd's HTTP face: the cluster status page, JSON status, /metrics, /healthz.

- `GET /` — the status page: nodes, chains with each target's state, capacity
  and live throughput. Rendered on the server (readable without JavaScript, and
  by a headless browser at once); a small script swaps in a fresh rendering
  (`GET /?fragment=1`) every two seconds.
- `GET /api/status` — the same facts as JSON (`status()` below).
- `GET /metrics` — Prometheus text: the process's metrics plus one
  `py3fs_target_state{target, state}` gauge per target.
- `GET /healthz` — 200 on the primary and on a healthy standby.

Throughput comes from the storage nodes' own `/metrics` (the HTTP address each
registered with): the page's mgmtd scrapes them and turns the byte counters
into rates between two scrapes.
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import TYPE_CHECKING, Any

from fastapi import Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from py3fs import errors, metrics
from py3fs.proto.messages import RoutingInfo, TargetState
from py3fs.units import format_size
from py3fs.web import base_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from mgmt_service.server import MgmtServer

SCRAPE_TIMEOUT = 1.0  # seconds per storage node; a slow node shows no rate
STATES = (
    TargetState.SERVING,
    TargetState.SYNCING,
    TargetState.WAITING,
    TargetState.LASTSRV,
    TargetState.OFFLINE,
)


async def scrape(address: str, timeout: float = SCRAPE_TIMEOUT) -> str:
    """GET http://address/metrics; returns the body."""
    host, _, port = address.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n".encode("ascii")
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise errors.RPCUnavailable(f"{address}/metrics answered {head[:40]!r}")
    return body.decode()


def storage_bytes(text: str) -> dict[str, float]:
    """`py3fs_storage_bytes_total` by op from a scrape."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "py3fs_storage_bytes":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["op"]] = sample.value
    return out


class Throughput:
    """Cluster-wide read and write rates from successive scrapes of storage."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, dict[str, float]]] = {}
        self.rates: dict[int, dict[str, float]] = {}

    async def update(self, info: RoutingInfo) -> None:
        nodes = [n for n in info.nodes if n.role == "storage" and n.up and n.http]

        async def one(node_id: int, address: str) -> None:
            try:
                now, totals = time.monotonic(), storage_bytes(await scrape(address))
            except (OSError, TimeoutError, ValueError, errors.Py3fsError):
                self.rates.pop(node_id, None)
                return
            last = self._last.get(node_id)
            self._last[node_id] = (now, totals)
            if last is not None and now > last[0]:
                dt = now - last[0]
                self.rates[node_id] = {
                    op: max(0.0, (totals.get(op, 0.0) - last[1].get(op, 0.0)) / dt)
                    for op in ("read", "write")
                }

        await asyncio.gather(*(one(n.node_id, n.http) for n in nodes))
        for gone in set(self.rates) - {n.node_id for n in nodes}:
            self.rates.pop(gone, None)

    def total(self, op: str) -> float:
        return sum(r.get(op, 0.0) for r in self.rates.values())


def status(srv: MgmtServer, throughput: Throughput) -> dict[str, Any]:
    """The cluster as JSON-ready dicts. On a standby, only who we are."""
    me = {
        "node_id": srv.cfg.node_id,
        "address": srv.address,
        "primary": srv.is_primary,
        "heartbeat_timeout": srv.cfg.heartbeat_timeout,
    }
    if not srv.is_primary:
        return {"mgmtd": me}
    info = srv.state.routing()
    now = time.time()
    targets = {t.target_id: t for t in info.targets}
    chains = []
    for c in info.chains:
        states = [targets[t].state if t in targets else "unknown" for t in c.targets]
        serving = states.count(TargetState.SERVING)
        chains.append(
            {
                "chain_id": c.chain_id,
                "version": c.version,
                "targets": [
                    {"target_id": t, "state": s}
                    for t, s in zip(c.targets, states, strict=True)
                ],
                "health": "healthy"
                if serving == len(states)
                else ("degraded" if serving else "unavailable"),
            }
        )
    devices: dict[str, tuple[int, int]] = {}
    used = 0
    for t in info.targets:
        used += t.used_bytes
        devices[t.device or f"target-{t.target_id}"] = (t.free_bytes, t.total_bytes)
    free = sum(f for f, _ in devices.values())
    replicas = (
        round(sum(len(c.targets) for c in info.chains) / len(info.chains))
        if (info.chains)
        else 1
    )
    return {
        "mgmtd": me,
        "routing_version": info.version,
        "nodes": [
            {
                "node_id": n.node_id,
                "role": n.role,
                "address": n.address,
                "http": n.http,
                "up": n.up,
                "pid": n.pid,
                "heartbeat_age_s": round(max(0.0, now - n.last_heartbeat), 1)
                if n.last_heartbeat
                else None,
                "read_Bps": throughput.rates.get(n.node_id, {}).get("read"),
                "write_Bps": throughput.rates.get(n.node_id, {}).get("write"),
            }
            for n in info.nodes
        ],
        "targets": [
            {
                "target_id": t.target_id,
                "node_id": t.node_id,
                "state": t.state,
                "used_bytes": t.used_bytes,
                "free_bytes": t.free_bytes,
                "total_bytes": t.total_bytes,
                "chunks": t.chunk_count,
            }
            for t in info.targets
        ],
        "chains": chains,
        "tables": [
            {"table_id": t.table_id, "version": t.version, "chains": len(t.chains)}
            for t in info.tables
        ],
        "capacity": {
            "replicas": replicas,
            "raw_used_bytes": used,
            "raw_free_bytes": free,
            "logical_used_bytes": used // max(replicas, 1),
            "logical_free_bytes": free // max(replicas, 1),
        },
        "throughput": {
            "read_Bps": throughput.total("read"),
            "write_Bps": throughput.total("write"),
        },
    }


# ---------------------------------------------------------------- rendering

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .3em} h2{font-size:16px;margin:1.4em 0 .4em}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f0f0f0}
.state{border-radius:3px;padding:1px 6px;margin-right:3px;font-size:12px}
.serving,.up,.healthy{background:#c8f0c8}
.syncing,.waiting,.degraded{background:#fde7a6}
.lastsrv{background:#fcd0a0}
.offline,.down,.unavailable,.unknown{background:#f6b0b0}
.muted{color:#888}
"""

_SCRIPT = """
setInterval(async () => {
  try {
    const r = await fetch('/?fragment=1');
    if (r.ok) document.getElementById('main').innerHTML = await r.text();
  } catch (e) {}
}, 2000);
"""


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{format_size(int(value))}/s"


def render(doc: dict[str, Any]) -> str:
    """The page body (what `?fragment=1` returns)."""
    e = html.escape
    me = doc["mgmtd"]
    role = "primary" if me["primary"] else "standby"
    out = [
        f"<h1>py3fs cluster</h1><p class=muted>mgmtd {me['node_id']} ({role}) at "
        f"{e(me['address'])}, failure timeout {me['heartbeat_timeout']:g}s, "
        f"updated {time.strftime('%H:%M:%S')}</p>"
    ]
    if not me["primary"]:
        out.append("<p>This mgmtd is a standby: open the primary's page.</p>")
        return "".join(out)
    nodes, chains, cap = doc["nodes"], doc["chains"], doc["capacity"]
    storage = [n for n in nodes if n["role"] == "storage"]
    healthy = sum(c["health"] == "healthy" for c in chains)
    cards = [
        ("storage nodes up", f"{sum(n['up'] for n in storage)} / {len(storage)}"),
        ("chains healthy", f"{healthy} / {len(chains)}"),
        ("used (logical)", format_size(cap["logical_used_bytes"])),
        ("free (logical)", format_size(cap["logical_free_bytes"])),
        ("read", _rate(doc["throughput"]["read_Bps"])),
        ("write", _rate(doc["throughput"]["write_Bps"])),
    ]
    out.append("<div class=cards>")
    out += [f"<div class=card>{e(k)}<b>{e(v)}</b></div>" for k, v in cards]
    out.append("</div><h2>Nodes</h2><table id=nodes><tr><th>node</th><th>role</th>")
    out.append(
        "<th>address</th><th>state</th><th>last heartbeat</th><th>read</th>"
        "<th>write</th><th>metrics</th></tr>"
    )
    for n in nodes:
        state = "up" if n["up"] else "down"
        age = "-" if n["heartbeat_age_s"] is None else f"{n['heartbeat_age_s']}s ago"
        link = (
            f"<a href='http://{e(n['http'])}/metrics'>metrics</a>" if n["http"] else ""
        )
        out.append(
            f"<tr id=node-{n['node_id']}><td>{n['node_id']}</td><td>{e(n['role'])}</td>"
            f"<td>{e(n['address'])}</td><td><span class='state {state}'>{state}</span>"
            f"</td><td>{age}</td><td>{_rate(n['read_Bps'])}</td>"
            f"<td>{_rate(n['write_Bps'])}</td><td>{link}</td></tr>"
        )
    out.append("</table><h2>Chains</h2><table id=chains><tr><th>chain</th>")
    out.append("<th>version</th><th>health</th><th>targets (head first)</th></tr>")
    for c in chains:
        spans = "".join(
            f"<span class='state {e(t['state'])}'>{t['target_id']} "
            f"{e(t['state'])}</span>"
            for t in c["targets"]
        )
        out.append(
            f"<tr id=chain-{c['chain_id']}><td>{c['chain_id']}</td>"
            f"<td>{c['version']}</td><td><span class='state {c['health']}'>"
            f"{c['health']}</span></td><td>{spans}</td></tr>"
        )
    out.append("</table><h2>Targets</h2><table id=targets><tr><th>target</th>")
    out.append("<th>node</th><th>state</th><th>chunks</th><th>used</th>")
    out.append("<th>free</th></tr>")
    for t in doc["targets"]:
        out.append(
            f"<tr><td>{t['target_id']}</td><td>{t['node_id']}</td>"
            f"<td><span class='state {e(t['state'])}'>{e(t['state'])}</span></td>"
            f"<td>{t['chunks']}</td><td>{format_size(t['used_bytes'])}</td>"
            f"<td>{format_size(t['free_bytes'])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def page(body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>py3fs cluster</title>"
        f"<style>{_STYLE}</style></head><body><div id=main>{body}</div>"
        f"<script>{_SCRIPT}</script></body></html>"
    )


def make_app(srv: MgmtServer) -> FastAPI:
    throughput = Throughput()

    def health() -> str | None:
        return None if srv.address else "starting"

    def before_scrape() -> None:
        if not srv.is_primary:
            return
        metrics.TARGET_STATE.clear()
        for t in srv.state.routing().targets:
            for state in STATES:
                metrics.TARGET_STATE.labels(t.target_id, state).set(
                    1 if t.state == state else 0
                )

    app = base_app("mgmtd", srv.cfg.node_id, health, before_scrape)

    async def current() -> dict[str, Any]:
        if srv.is_primary:
            await throughput.update(srv.state.routing())
        return status(srv, throughput)

    @app.get("/api/status")
    async def api_status() -> JSONResponse:
        return JSONResponse(await current())

    @app.get("/", response_class=HTMLResponse)
    async def index(fragment: int = 0) -> Response:
        body = render(await current())
        return HTMLResponse(body if fragment else page(body))

    return app
