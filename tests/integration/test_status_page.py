"""mgmtd's status page in a real browser (headless Chromium), its JSON status and
every service's /metrics, served by a real cluster.

The screenshots are kept in the test's tmp directory (printed on failure) and,
when $PY3FS_ARTIFACTS names a directory, copied there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import client_for, running_cluster
from prometheus_client.parser import text_string_to_metric_families

from py3fs.cluster import LocalCluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run Chromium once with a fresh profile (`extra`: --dump-dom, --screenshot)."""
    assert CHROMIUM is not None
    profile = out.parent / f"profile-{out.stem}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def page_text(url: str, out: Path) -> str:
    """The rendered page's main block; also saves a screenshot as `out`."""
    browser(url, out, "--window-size=1280,1400", f"--screenshot={out}")
    assert out.stat().st_size > 10_000  # a real picture, not an error stub
    artifacts = os.environ.get("PY3FS_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(artifacts) / out.name)
    dom = browser(url, out.with_suffix(".dom"), "--dump-dom").stdout
    # What the page shows: the main block, without the style sheet and script.
    return dom.split('id="main"', 1)[1].split("<script", 1)[0]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def api_status(cluster: LocalCluster) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(get(f"{cluster.status_url}api/status"))
    return doc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("status"), heartbeat_timeout="2s"
    ) as cluster:
        yield cluster


def test_metrics_parse_from_every_service(cluster: LocalCluster) -> None:
    async def write() -> None:
        async with client_for(cluster) as fs:
            await fs.write_file("/metrics.bin", os.urandom(4 * 1024 * 1024))
            assert len(await fs.read_file("/metrics.bin")) == 4 * 1024 * 1024

    import asyncio

    asyncio.run(write())
    by_role: dict[str, set[str]] = {}
    for proc in cluster.procs:
        assert proc.http, proc.name
        text = get(f"http://{proc.http}/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        by_role.setdefault(proc.role, set()).update(names)
        health = json.loads(get(f"http://{proc.http}/healthz"))
        assert health["ok"] is True
    assert {"py3fs_rpc_requests", "py3fs_rpc_seconds"} <= by_role["meta"]
    assert "py3fs_gc_queue_length" in by_role["meta"]
    assert {"py3fs_storage_bytes", "py3fs_storage_chunks"} <= by_role["storage"]
    assert "py3fs_target_state" in by_role["mgmtd"]
    written = 0.0
    for proc in cluster.storages:
        for family in text_string_to_metric_families(
            get(f"http://{proc.http}/metrics")
        ):
            for sample in family.samples:
                if sample.name == "py3fs_storage_bytes_total" and (
                    sample.labels["op"] == "write"
                ):
                    written += sample.value
    # 4 MiB, stored on each of 3 replicas.
    assert written >= 3 * 4 * 1024 * 1024


def test_status_json_shows_throughput(cluster: LocalCluster) -> None:
    async def write() -> None:
        async with client_for(cluster) as fs:
            await fs.write_file("/rate.bin", os.urandom(8 * 1024 * 1024))

    import asyncio

    api_status(cluster)  # first scrape: the baseline
    asyncio.run(write())
    doc = api_status(cluster)
    assert doc["throughput"]["write_Bps"] > 0
    assert doc["capacity"]["replicas"] == 3
    assert len(doc["chains"]) == 4
    assert all(c["health"] == "healthy" for c in doc["chains"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_status_page_in_chromium_follows_a_killed_node(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    url = cluster.status_url
    dom = page_text(url, tmp_path / "status-before.png")
    for node in (11, 12, 21, 22, 23):
        assert f'id="node-{node}"' in dom
    assert "storage nodes up" in dom
    assert "3 / 3" in dom
    assert 'id="chain-1"' in dom
    assert "healthy" in dom
    assert "serving" in dom
    assert "offline" not in dom

    victim = cluster.storages[1]  # node 22
    victim.kill()
    deadline = time.monotonic() + 30
    while True:
        nodes = {n["node_id"]: n for n in api_status(cluster)["nodes"]}
        if not nodes[victim.node_id]["up"]:
            break
        assert time.monotonic() < deadline, "mgmtd never noticed the kill"
        time.sleep(0.2)

    dom = page_text(url, tmp_path / "status-after.png")
    assert "2 / 3" in dom
    node_row = dom.split(f'id="node-{victim.node_id}"')[1].split("</tr>")[0]
    assert "down" in node_row
    assert "offline" in dom
    assert "degraded" in dom
    assert "0 / 4" in dom  # no chain is healthy with one of three replicas gone
