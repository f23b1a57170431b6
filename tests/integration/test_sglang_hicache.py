"""SGLang loads `kv_cache.hicache.Py3fsHiCacheStorage` as a dynamic HiCache
backend through its own `StorageBackendFactory`, and moves MLA pages between a
CPU host pool and py3fs, bit for bit.

Needs sglang importable (CI: `pip install --no-deps sglang==0.5.23` plus the few
modules its hicache import path needs; see .ci/run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
hicache_storage = pytest.importorskip(
    "sglang.srt.mem_cache.hicache_storage", reason="sglang not installed"
)
backend_factory = pytest.importorskip("sglang.srt.mem_cache.storage.backend_factory")

from kv_cache.hicache import Py3fsHiCacheStorage  # noqa: E402
from kv_cache.page_keys import page_keys  # noqa: E402
from py3fs.cluster import LocalCluster  # noqa: E402

LAYERS, PAGE, DIM = 4, 64, 576  # DeepSeek MLA latent: kv_lora_rank 512 + rope 64


class CpuMLAHostPool:
    """A host KV pool on CPU memory with the page interface of SGLang's
    `MLATokenToKVPoolHost` (sglang/srt/mem_cache/pool_host/mla.py), whose own
    module cannot be imported without SGLang's CUDA kernel packages.

    `kv_buffer` is `[tokens, layers, 1, dim]` bf16 ("page_first" layout); a
    page is addressed by the index of its first token, as SGLang does."""

    page_size = PAGE
    layout = "page_first"

    def __init__(self, pages: int) -> None:
        self.layer_num, self.kv_cache_dim, self.dtype = LAYERS, DIM, torch.bfloat16
        self.kv_buffer = torch.zeros(pages * PAGE, LAYERS, 1, DIM, dtype=self.dtype)

    def get_data_page(self, index: int, flat: bool = True) -> Any:
        page = self.kv_buffer[index : index + self.page_size]
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self) -> Any:
        return torch.zeros(PAGE, LAYERS, 1, DIM, dtype=self.dtype).flatten()

    def set_from_flat_data_page(self, index: int, data_page: Any) -> None:
        page = data_page.reshape(PAGE, LAYERS, 1, DIM)
        self.kv_buffer[index : index + self.page_size] = page


@pytest.fixture(autouse=True)
def _no_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clients built from mgmt addresses get their token from the `token`
    # option alone (an integrator's way), not from the environment.
    monkeypatch.delenv("PY3FS_TOKEN", raising=False)
    monkeypatch.delenv("PY3FS_TOKEN_FILE", raising=False)


def admin_token(cluster: LocalCluster) -> str:
    return cluster.admin_token_file.read_text().strip()


def storage_config(cluster: LocalCluster, *, page_first: bool = True) -> Any:
    return hicache_storage.HiCacheStorageConfig(
        tp_rank=0,
        tp_size=1,
        pp_rank=0,
        pp_size=1,
        attn_cp_rank=0,
        attn_cp_size=1,
        is_mla_model=True,
        enable_storage_metrics=False,
        is_page_first_layout=page_first,
        model_name="deepseek-ai/DeepSeek-V3",
        extra_config={
            # What --hicache-storage-backend-extra-config carries.
            "backend_name": "py3fs",
            "module_path": "kv_cache.hicache",
            "class_name": "Py3fsHiCacheStorage",
            "mgmt": cluster.mgmt_addresses,
            "token": admin_token(cluster),
            "store_name": f"sglang-mla-{int(page_first)}",
        },
    )


@pytest.fixture
def make_backend(cluster: LocalCluster) -> Iterator[Any]:
    made: list[Any] = []

    def make(**kw: Any) -> Any:
        backend = backend_factory.StorageBackendFactory.create_backend(
            "dynamic", storage_config(cluster, **kw), mem_pool_host=None
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def mla_pages(pool: CpuMLAHostPool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=gen))


def hashes(n: int, seed: int) -> list[str]:
    tokens = torch.randint(
        0, 100_000, (n * PAGE,), generator=torch.Generator().manual_seed(seed)
    )
    return [k.hex() for k in page_keys(tokens.tolist())]


def same_bits(a: Any, b: Any) -> bool:
    return bool(a.view(torch.int16).equal(b.view(torch.int16)))


def test_factory_loads_our_class(make_backend: Any) -> None:
    backend = make_backend()
    assert isinstance(backend, Py3fsHiCacheStorage)
    assert isinstance(backend, hicache_storage.HiCacheStorage)


def test_mla_pages_roundtrip_v1_zero_copy(make_backend: Any) -> None:
    backend = make_backend()
    src = CpuMLAHostPool(pages=6)
    mla_pages(src, 1)
    backend.register_mem_pool_host(src)  # what SGLang's cache controller does
    keys = hashes(5, 1)

    # Back up host pages 0..2 (host_indices: one per token, as SGLang passes).
    assert backend.batch_set_v1(keys[:3], torch.arange(0, 3 * PAGE)) == [True] * 3
    assert backend.batch_exists(keys) == 3
    # A page past a gap does not extend the prefix.
    assert backend.set(keys[4], src.get_data_page(4 * PAGE))
    assert backend.batch_exists(keys) == 3
    assert backend.exists(keys[4])
    assert not backend.exists(keys[3])

    # Prefetch into another pool at other slots: straight into its memory.
    dst = CpuMLAHostPool(pages=6)
    backend.register_mem_pool_host(dst)
    slots = torch.cat([torch.arange(s * PAGE, (s + 1) * PAGE) for s in (5, 1, 3)])
    assert backend.batch_get_v1(keys[:3], slots) == [True] * 3
    for got, want in ((5, 0), (1, 1), (3, 2)):
        assert same_bits(dst.get_data_page(got * PAGE), src.get_data_page(want * PAGE))
    # A missing page reports False and leaves its slot alone.
    assert backend.batch_get_v1([keys[3]], torch.arange(0, PAGE)) == [False]
    assert dst.get_data_page(0).abs().sum() == 0

    one = backend.get(keys[4])
    assert same_bits(one.view(torch.bfloat16), src.get_data_page(4 * PAGE))
    stats = backend.get_stats()
    assert stats["pages_written"] == 4
    assert backend.clear()
    assert backend.batch_exists(keys) == 0


def test_v1_through_flat_pages(make_backend: Any) -> None:
    """Layouts that are not page-first copy through SGLang's flat data pages."""
    backend = make_backend(page_first=False)
    src, dst = CpuMLAHostPool(pages=2), CpuMLAHostPool(pages=2)
    mla_pages(src, 2)
    backend.register_mem_pool_host(src)
    keys = hashes(2, 2)
    assert backend.batch_set_v1(keys, torch.arange(0, 2 * PAGE)) == [True, True]
    backend.register_mem_pool_host(dst)
    assert backend.batch_get_v1(keys[::-1], torch.arange(0, 2 * PAGE)) == [True, True]
    assert same_bits(dst.get_data_page(0), src.get_data_page(PAGE))
    assert same_bits(dst.get_data_page(PAGE), src.get_data_page(0))
