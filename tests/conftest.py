from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from harness import client_for, running_cluster

from client import Client
from py3fs.cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 2-meta, 3-storage, 3-replica cluster shared by a test module."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
async def fs(cluster: LocalCluster) -> AsyncIterator[Client]:
    client = client_for(cluster)
    try:
        yield client
    finally:
        await client.aclose()
