"""Background garbage collection of a KVCache store.

Meta removes the chunks of evicted pages on its own (its GC queue); what needs
a driver is the store-level policy: pages idle past the store's TTL, staging
files of writers that died before publishing, and capacity above the high
watermark. `run_gc` calls `KVCacheStore.gc()` every `interval` seconds; any
number of processes may run it for one store (each batch is one transaction,
so concurrent collectors only conflict and retry).
"""

from __future__ import annotations

import asyncio
import logging

from kv_cache.store import KVCacheStore
from py3fs import errors

logger = logging.getLogger(__name__)


async def run_gc(store: KVCacheStore, interval: float = 10.0) -> None:
    """Collect until cancelled. py3fs errors are logged and retried next round."""
    while True:
        try:
            done = await store.gc()
            if any(done.values()):
                logger.info("kvcache %s gc: %s", store.name, done)
        except errors.Py3fsError as exc:
            logger.warning("kvcache %s gc failed: %s", store.name, exc)
        await asyncio.sleep(interval)
