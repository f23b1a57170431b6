"""FlashMLA's CUDA kernels, passed through unchanged.

Both FlashMLA interfaces work: before 2025-09 `get_mla_metadata(cache_seqlens,
s_q * h_q // h_kv, h_kv)` returns `(tile_scheduler_metadata, num_splits)` tensors;
later it returns `(FlashMLASchedMeta, None)` filled on the first call. Callers hand
whatever it returned to `flash_mla_with_kvcache`, so neither shape leaks here.
"""

from __future__ import annotations

from flash_mla import flash_mla_with_kvcache, get_mla_metadata

__all__ = ["flash_mla_with_kvcache", "get_mla_metadata"]
