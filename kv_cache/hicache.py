"""An SGLang HiCache storage backend over a py3fs `KVCacheStore`.

`Py3fsHiCacheStorage` implements SGLang's `HiCacheStorage`
(python/sglang/srt/mem_cache/hicache_storage.py): `get`/`set`/`exists`,
`batch_get`/`batch_set`/`batch_exists`, the zero-copy `batch_get_v1`/
`batch_set_v1` that move pages between storage and the host KV pool,
`register_mem_pool_host`, `clear` and `get_stats`. When sglang is importable it
subclasses `HiCacheStorage`, so SGLang loads it as a dynamic backend:

    python -m sglang.launch_server ... --enable-hierarchical-cache \
        --hicache-storage-backend dynamic \
        --hicache-storage-backend-extra-config '{"backend_name": "py3fs",
            "module_path": "kv_cache.hicache", "class_name": "Py3fsHiCacheStorage",
            "cluster": "/etc/py3fs/cluster.toml", "store_name": "deepseek-v3"}'

SGLang then calls `Py3fsHiCacheStorage(storage_config, kwargs)`. Without sglang
it is a plain class with the same methods (SGLang's objects are used by duck
typing), so py3fs needs nothing from SGLang.

Keys are SGLang's page hash strings, suffixed like HiCacheFile's (model name,
and the TP rank for non-MLA models, whose ranks hold different heads). Errors
from py3fs are logged and reported as misses/failures, as HiCache expects of a
backend: a storage hiccup must not kill its prefetch or backup threads.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from client import ClientConfig, load_client_config
from client.config import with_token
from kv_cache.sync import SyncKVCacheStore
from py3fs import errors

try:  # SGLang's base class when SGLang is installed; plain object otherwise.
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)
MAX_RAW_KEY = 100


class Py3fsHiCacheStorage(_Base):  # type: ignore[misc,valid-type]
    """`storage_config` is SGLang's HiCacheStorageConfig (or None). `kwargs`
    is the dict SGLang's dynamic loader passes second; its keys, then
    `storage_config.extra_config`'s, then the keyword arguments, configure the
    store: `store_name`, `page_bytes` (one flat page of the host pool; 0: taken
    from the pool SGLang registers), `capacity_bytes`, the cluster as
    `cluster` (a cluster file) or `mgmt` (addresses), and the identity as
    `token` or `token_file` (else $PY3FS_TOKEN, $PY3FS_TOKEN_FILE, ...)."""

    def __init__(
        self,
        storage_config: Any = None,
        kwargs: dict[str, Any] | None = None,
        *,
        name: str = "hicache",
        page_bytes: int = 0,
        capacity_bytes: int = 0,
        client_config: ClientConfig | None = None,
        store: SyncKVCacheStore | None = None,
        **store_kw: Any,
    ) -> None:
        cfg = storage_config
        opts = {
            **((getattr(cfg, "extra_config", None) or {}) if cfg else {}),
            **(kwargs or {}),
        }
        model = (getattr(cfg, "model_name", None) or "") if cfg else ""
        self.suffix = "_" + model.replace("/", "-")
        if cfg is not None and not getattr(cfg, "is_mla_model", False):
            self.suffix += f"_{cfg.tp_rank}_{cfg.tp_size}"
        if cfg is not None and getattr(cfg, "pp_size", 1) > 1:
            self.suffix += f"_{cfg.pp_size}_{cfg.pp_rank}"
        self.zero_copy = bool(getattr(cfg, "is_page_first_layout", True))
        self.mem_pool_host: Any = None
        if client_config is None and opts.get("mgmt"):
            mgmt = opts["mgmt"]
            client_config = ClientConfig(mgmt=[mgmt] if isinstance(mgmt, str) else mgmt)
        elif client_config is None:
            client_config = load_client_config(opts.get("cluster"))
        client_config = with_token(
            client_config, opts.get("token"), opts.get("token_file")
        )
        self._open_args = (
            client_config,
            opts.get("store_name", name),
            int(opts.get("page_bytes", page_bytes)),
            int(opts.get("capacity_bytes", capacity_bytes)),
        )
        self._store_kw = store_kw
        self._store = store
        if store is None and self._open_args[2]:
            self._store = self._open()

    def _open(self) -> SyncKVCacheStore:
        config, name, page_bytes, capacity = self._open_args
        return SyncKVCacheStore(config, name, page_bytes, capacity, **self._store_kw)

    @property
    def store(self) -> SyncKVCacheStore:
        """The store, opened on first use: SGLang's dynamic loader makes the
        backend before it registers the host pool that gives the page size."""
        if self._store is None:
            if not self._open_args[2]:
                raise errors.InvalidArgument(
                    "py3fs HiCache backend: no page_bytes and no host pool yet"
                )
            self._store = self._open()
        return self._store

    # ------------------------------------------------------------ helpers

    def _key(self, key: str) -> bytes:
        raw = (key + self.suffix).encode()
        if len(raw) <= MAX_RAW_KEY:
            return raw
        return hashlib.blake2b(raw, digest_size=32).digest()

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        self.mem_pool_host = mem_pool_host
        if not self._open_args[2] and self._store is None:
            page = mem_pool_host.get_data_page(0, flat=True)
            nbytes = (
                memoryview(page).nbytes
                if not hasattr(page, "numel")
                else (page.numel() * page.element_size())
            )
            self._open_args = (*self._open_args[:2], nbytes, self._open_args[3])

    def _new_page(self) -> Any:
        import torch

        return torch.empty(self.store.store.page_bytes, dtype=torch.uint8)

    # ------------------------------------------------------------ single keys

    def get(
        self,
        key: str,
        target_location: Any = None,
        target_sizes: Any = None,
    ) -> Any:
        """The page read into `target_location` (a new uint8 tensor if None),
        or None when it is not cached."""
        out = self.batch_get([key], [target_location], target_sizes)
        return out[0]

    def set(
        self,
        key: str,
        value: Any = None,
        target_location: Any = None,
        target_sizes: Any = None,
    ) -> bool:
        return self.batch_set([key], [value], [target_location], target_sizes)

    def exists(self, key: str) -> bool:
        try:
            return self.store.exists([self._key(key)])[0]
        except errors.Py3fsError as exc:
            logger.warning("py3fs exists failed: %s", exc)
            return False

    # ------------------------------------------------------------ batches

    def batch_get(
        self,
        keys: list[str],
        target_locations: Any = None,
        target_sizes: Any = None,
    ) -> list[Any]:
        targets = list(target_locations or [None] * len(keys))
        targets = [t if t is not None else self._new_page() for t in targets]
        try:
            found = self.store.get([self._key(k) for k in keys], targets)
        except errors.Py3fsError as exc:
            logger.warning("py3fs batch_get failed: %s", exc)
            return [None] * len(keys)
        return [t if ok else None for t, ok in zip(targets, found, strict=True)]

    def batch_set(
        self,
        keys: list[str],
        values: Any = None,
        target_locations: Any = None,
        target_sizes: Any = None,
    ) -> bool:
        """Store pages from `values` (or `target_locations`); True when all are
        stored."""
        bufs = list(values) if values is not None else list(target_locations or [])
        if len(bufs) != len(keys) or any(b is None for b in bufs):
            return False
        try:
            return all(self.store.put([self._key(k) for k in keys], bufs))
        except errors.Py3fsError as exc:
            logger.warning("py3fs batch_set failed: %s", exc)
            return False

    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        """How many leading keys are cached."""
        try:
            return self.store.batch_exists([self._key(k) for k in keys])
        except errors.Py3fsError as exc:
            logger.warning("py3fs batch_exists failed: %s", exc)
            return 0

    # ------------------------------------------------------------ host pool

    def _pages(self, host_indices: Any, n: int) -> list[int]:
        page = getattr(self.mem_pool_host, "page_size", 1) or 1
        return [int(host_indices[i * page]) for i in range(n)]

    def batch_get_v1(
        self, keys: list[str], host_indices: Any, extra_info: Any = None
    ) -> list[bool]:
        """Load pages into the registered host pool at `host_indices` (one
        index per token; each page starts at a multiple of the pool's page
        size). Straight into the pool's memory for page-first layouts."""
        pool = self.mem_pool_host
        slots = self._pages(host_indices, len(keys))
        if self.zero_copy:
            bufs = [pool.get_data_page(s, flat=False) for s in slots]
        else:
            bufs = [pool.get_dummy_flat_data_page() for _ in slots]
        try:
            found = self.store.get([self._key(k) for k in keys], bufs)
        except errors.Py3fsError as exc:
            logger.warning("py3fs batch_get_v1 failed: %s", exc)
            return [False] * len(keys)
        if not self.zero_copy:
            for s, b, ok in zip(slots, bufs, found, strict=True):
                if ok:
                    pool.set_from_flat_data_page(s, b)
        return found

    def batch_set_v1(
        self, keys: list[str], host_indices: Any, extra_info: Any = None
    ) -> list[bool]:
        pool = self.mem_pool_host
        slots = self._pages(host_indices, len(keys))
        bufs = [pool.get_data_page(s, flat=not self.zero_copy) for s in slots]
        try:
            return self.store.put([self._key(k) for k in keys], bufs)
        except errors.Py3fsError as exc:
            logger.warning("py3fs batch_set_v1 failed: %s", exc)
            return [False] * len(keys)

    # ------------------------------------------------------------ admin

    def clear(self) -> bool:
        """Evict every unleased page of the store."""
        try:
            self.store.evict(0)
        except errors.Py3fsError as exc:
            logger.warning("py3fs clear failed: %s", exc)
            return False
        return True

    def get_stats(self) -> dict[str, int]:
        return self.store.metrics

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
