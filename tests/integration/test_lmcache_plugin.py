"""LMCache stores and retrieves KV chunks through the `py3fs://` remote storage
plugin (kv_cache.lmcache), loaded by LMCache's own connector manager.

Needs lmcache importable (CI: `pip install --no-deps lmcache==0.5.6` plus the
modules its connector import path needs; see scripts/bootstrap.sh)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
connector_mod = pytest.importorskip(
    "lmcache.v1.storage_backend.connector", reason="lmcache not installed"
)

from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402

from kv_cache.lmcache import Py3fsConnector  # noqa: E402
from py3fs.cluster import LocalCluster  # noqa: E402

CHUNK, LAYERS, DIM = 256, 4, 576  # MLA latent chunks of 256 tokens


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clients built from mgmt addresses get their token from the `token`
    # option alone (an integrator's way), not from the environment.
    monkeypatch.delenv("PY3FS_TOKEN", raising=False)
    monkeypatch.delenv("PY3FS_TOKEN_FILE", raising=False)


def admin_token(cluster: LocalCluster) -> str:
    return cluster.admin_token_file.read_text().strip()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """LMCache runs its remote connectors on an event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def engine(cluster: LocalCluster, store: str) -> tuple[Any, Any, Any]:
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK,
        local_cpu=False,
        max_local_cpu_size=0.1,
        remote_url=f"py3fs:///{store}",
        remote_serde="naive",
        remote_storage_plugins=["py3fs"],
        extra_config={
            "remote_storage_plugin.py3fs.module_path": "kv_cache.lmcache",
            "remote_storage_plugin.py3fs.class_name": "Py3fsConnectorAdapter",
            "py3fs.mgmt": ",".join(cluster.mgmt_addresses),
            "py3fs.token_file": str(cluster.admin_token_file),
        },
    )
    metadata = LMCacheMetadata(
        model_name="deepseek-ai/DeepSeek-V3",
        world_size=1,
        local_world_size=1,
        worker_id=0,
        local_worker_id=0,
        kv_dtype=torch.bfloat16,
        kv_shape=(LAYERS, 1, CHUNK, 1, DIM),
        use_mla=True,
        chunk_size=CHUNK,
    )
    return config, metadata, LocalCPUBackend(config, metadata)


def connect(loop: Any, config: Any, metadata: Any, backend: Any) -> Any:
    return connector_mod.CreateConnector(
        config.remote_url, loop, backend, config, metadata
    )


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)


def chunk(backend: Any, tokens: int, seed: int) -> Any:
    obj = backend.allocate(
        [torch.Size([1, LAYERS, tokens, DIM])],
        [torch.bfloat16],
        MemoryFormat.KV_MLA_FMT,
    )
    gen = torch.Generator().manual_seed(seed)
    obj.tensor.copy_(torch.randn(obj.tensor.shape, generator=gen))
    return obj


def key(i: int) -> Any:
    return CacheEngineKey("deepseek-ai/DeepSeek-V3", 1, 0, 1000 + i, torch.bfloat16)


def same(got: Any, want: bytes) -> bool:
    """`got`'s bytes equal `want`; releases `got` back to LMCache's allocator,
    as LMCache's own callers do."""
    try:
        return bytes(got.byte_array) == want
    finally:
        got.ref_count_down()


def test_lmcache_loads_plugin_and_roundtrips_chunks(
    cluster: LocalCluster, loop: asyncio.AbstractEventLoop
) -> None:
    config, metadata, backend = engine(cluster, "lmcache-test")
    conn = connect(loop, config, metadata, backend)
    # LMCache wraps connectors for metrics; ours is inside.
    inner = getattr(conn, "getWrappedConnector", lambda: conn)()
    assert isinstance(inner, Py3fsConnector)
    try:
        chunks = [chunk(backend, CHUNK, i) for i in range(3)]
        partial = chunk(backend, 100, 9)  # a sequence's tail: fewer tokens
        want = [bytes(c.byte_array) for c in chunks]
        want_tail = bytes(partial.byte_array)
        for i, c in enumerate(chunks):
            run(loop, conn.put(key(i), c))
        run(loop, conn.put(key(5), partial))

        assert run(loop, conn.exists(key(0)))
        assert not run(loop, conn.exists(key(3)))
        assert conn.exists_sync(key(2))
        assert (
            run(loop, conn.batched_async_contains("req", [key(i) for i in range(6)]))
            == 3
        )

        for i, c in enumerate(chunks):
            got = run(loop, conn.get(key(i)))
            assert got.get_shapes() == c.get_shapes()
            assert same(got, want[i])  # bit-exact
        tail = run(loop, conn.get(key(5)))
        assert tail.get_shapes() == [torch.Size([1, LAYERS, 100, DIM])]
        assert same(tail, want_tail)
        assert run(loop, conn.get(key(3))) is None

        # The index lives in meta: a second engine (own client and memory)
        # naming the same store sees the chunks.
        config2, metadata2, backend2 = engine(cluster, "lmcache-test")
        other = connect(loop, config2, metadata2, backend2)
        try:
            assert same(run(loop, other.get(key(1))), want[1])
            assert other.remove_sync(key(1))
        finally:
            run(loop, other.close())
        assert not run(loop, conn.exists(key(1)))
        assert run(loop, conn.batched_async_contains("req", [key(0), key(1)])) == 1
    finally:
        run(loop, conn.close())
