"""FlashMLA decode attention over KV pages cached in py3fs.

`flash_mla_with_kvcache` and `get_mla_metadata` come from FlashMLA when it is
installed and CUDA is available (`BACKEND == "flash_mla"`), else from the PyTorch
reference (`BACKEND == "reference"`). `plugins.flash_mla.paged` fills the paged cache
and block table from tensors or from a `kv_cache.KVCacheStore`.
"""

from __future__ import annotations

from plugins import kernel_available

if kernel_available("flash_mla"):
    from plugins.flash_mla.kernel import flash_mla_with_kvcache, get_mla_metadata

    BACKEND = "flash_mla"
else:
    from plugins.flash_mla.reference import flash_mla_with_kvcache, get_mla_metadata

    BACKEND = "reference"

__all__ = ["BACKEND", "flash_mla_with_kvcache", "get_mla_metadata"]
