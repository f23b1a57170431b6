"""A single mgmtd killed and restarted comes back on its address with its state."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import client_for, running_cluster


async def test_restarted_mgmtd_keeps_address_and_routing(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        fs = client_for(cluster)
        try:
            await fs.write_file("/before", b"before")
            assert cluster.mgmtd is not None
            address = cluster.mgmtd.address
            chains = (await fs.routing.refresh()).chains
            cluster.mgmtd.kill(signal.SIGKILL)
            cluster.restart(cluster.mgmtd)
            assert cluster.mgmtd.address == address
            view = await fs.routing.refresh()
            assert view.chains.keys() == chains.keys()
            await fs.write_file("/after", b"after")
            assert await fs.read_file("/before") == b"before"
            assert await fs.read_file("/after") == b"after"
        finally:
            await fs.aclose()
