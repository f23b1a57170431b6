"""KVCache store and checkpoints on py3fs (DESIGN.md section 8).

- `kv_cache.store.KVCacheStore`: pages keyed by `kv_cache.page_keys`, indexed in
  meta, zero-copy batch get/put, leases, LRU/TTL eviction;
  `kv_cache.sync.SyncKVCacheStore` is its blocking face.
- `kv_cache.hicache.Py3fsHiCacheStorage`: SGLang HiCache storage backend.
- `kv_cache.checkpoint`: safetensors checkpoints, atomic, retained, async.
- `kv_cache.gc`: a periodic `KVCacheStore.gc()` loop.

Submodules import torch only where tensors are made (checkpoint loads).
"""

from kv_cache.page_keys import PAGE_TOKENS, page_key, page_keys
from kv_cache.store import KVCacheStore

__all__ = ["PAGE_TOKENS", "KVCacheStore", "page_key", "page_keys"]
