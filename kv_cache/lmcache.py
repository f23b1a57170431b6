"""An LMCache remote storage plugin for `py3fs://`, over a `KVCacheStore`.

LMCache loads it through its remote-storage plugin interface (not its hf3fs
path), from the engine's LMCache config:

    remote_url: "py3fs:///lmcache-deepseek"        # the path names the store
    remote_serde: "naive"
    remote_storage_plugins: ["py3fs"]
    extra_config:
      remote_storage_plugin.py3fs.module_path: kv_cache.lmcache
      remote_storage_plugin.py3fs.class_name: Py3fsConnectorAdapter
      py3fs.cluster: /etc/py3fs/cluster.toml       # or py3fs.mgmt: "h1:p,h2:p"
      py3fs.token_file: ~/.config/py3fs/token      # or py3fs.token: "p3t_..."
      py3fs.capacity_bytes: 1099511627776          # optional, 0: unlimited

Each LMCache chunk is one page of the store: LMCache's remote metadata header
(length, shapes, dtypes, format) followed by the chunk's bytes, so partial
chunks come back with their own shape. The page index lives in meta, with
`KVCacheStore`'s guarantees: a page is published atomically with its data, a
reader never sees a torn page, LRU/TTL eviction never removes a page being
read, and every process naming the same store shares it. A chunk key is
LMCache's `CacheEngineKey.to_string()` (hashed when longer than 100 bytes).

The connector's coroutines run on the event loop LMCache hands it, where it
builds its own py3fs `Client` on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector import (
    ConnectorAdapter,
    ConnectorContext,
    extract_plugin_type,
)
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from client import Client, ClientConfig, load_client_config
from client.config import with_token
from kv_cache.store import KVCacheStore
from py3fs import errors

logger = logging.getLogger(__name__)
SCHEME = "py3fs://"
PLUGIN_TYPE = "py3fs"
MAX_RAW_KEY = 100


def _extra(config: Any, name: str, default: Any = None) -> Any:
    extra = getattr(config, "extra_config", None) or {}
    return extra.get(f"py3fs.{name}", default)


def client_config_for(config: Any) -> ClientConfig:
    """The cluster named in LMCache's extra_config (`py3fs.mgmt` addresses or
    a `py3fs.cluster` file), else the usual cluster-file lookup; with
    `py3fs.token` or `py3fs.token_file`, that identity."""
    mgmt = _extra(config, "mgmt")
    if mgmt:
        addrs = mgmt.split(",") if isinstance(mgmt, str) else list(mgmt)
        cfg = ClientConfig(mgmt=[a.strip() for a in addrs if a.strip()])
    else:
        cfg = load_client_config(_extra(config, "cluster"))
    return with_token(cfg, _extra(config, "token"), _extra(config, "token_file"))


def store_name_from_url(url: str) -> str:
    """`py3fs:///lmcache/deepseek` -> `lmcache-deepseek` (default `lmcache`)."""
    path = url[len(SCHEME) :] if url.startswith(SCHEME) else ""
    return path.strip("/").replace("/", "-") or "lmcache"


class Py3fsConnector(RemoteConnector):
    """LMCache's `RemoteConnector` over a py3fs `KVCacheStore`."""

    def __init__(
        self,
        url: str,
        loop: asyncio.AbstractEventLoop,
        local_cpu_backend: Any,
        config: Any,
    ) -> None:
        super().__init__(local_cpu_backend.config, local_cpu_backend.metadata)
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self.name = store_name_from_url(url)
        self.client_config = client_config_for(config)
        self.capacity_bytes = int(_extra(config, "capacity_bytes", 0))
        self.header = self.remote_metadata_bytes
        # One page holds the header and a full chunk; partial chunks pad it.
        self.page_bytes = self.header + self.full_chunk_size_bytes
        self._store: KVCacheStore | None = None
        self._opening: asyncio.Lock | None = None

    async def _get_store(self) -> KVCacheStore:
        if self._store is None:
            self._opening = self._opening or asyncio.Lock()
            async with self._opening:
                if self._store is None:
                    client = Client(self.client_config)
                    try:
                        self._store = await KVCacheStore(
                            client, self.name, self.page_bytes, self.capacity_bytes
                        ).open()
                    except BaseException:
                        await client.aclose()
                        raise
        return self._store

    @staticmethod
    def _key(key: Any) -> bytes:
        raw = key.to_string().encode()
        if len(raw) <= MAX_RAW_KEY:
            return raw
        return hashlib.blake2b(raw, digest_size=32).digest()

    def _on_loop(self, coro: Any) -> Any:
        """Run a coroutine on the connector's loop from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    # ------------------------------------------------------------ lookups

    async def exists(self, key: Any) -> bool:
        store = await self._get_store()
        return (await store.exists([self._key(key)]))[0]

    def exists_sync(self, key: Any) -> bool:
        return self._on_loop(self.exists(key))

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(
        self, lookup_id: str, keys: list[Any], pin: bool = False
    ) -> int:
        """How many leading chunks are stored: one meta transaction."""
        store = await self._get_store()
        return await store.batch_exists([self._key(k) for k in keys])

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: list[Any]) -> int:
        return self._on_loop(self.batched_async_contains("", keys))

    # ------------------------------------------------------------ data

    def _page(self, memory_obj: Any) -> bytearray:
        data = memoryview(memory_obj.byte_array).cast("B")
        if data.nbytes > self.full_chunk_size_bytes:
            raise ValueError(f"chunk of {data.nbytes} bytes exceeds a full chunk")
        page = bytearray(self.page_bytes)
        RemoteMetadata(
            data.nbytes,
            memory_obj.get_shapes(),
            memory_obj.get_dtypes(),
            memory_obj.get_memory_format(),
        ).serialize_into(page)
        memoryview(page)[self.header : self.header + data.nbytes] = data
        return page

    def _chunk(self, page: bytearray) -> Any:
        """The memory object for a stored page (None when allocation fails)."""
        meta = RemoteMetadata.deserialize(bytes(page[: self.header]))
        obj = self.local_cpu_backend.allocate(meta.shapes, meta.dtypes, meta.fmt)
        if obj is None:
            logger.debug("LMCache allocation failed for a py3fs chunk")
            return None
        dst = memoryview(obj.byte_array).cast("B")
        dst[: meta.length] = memoryview(page)[self.header : self.header + meta.length]
        return obj

    async def put(self, key: Any, memory_obj: Any) -> None:
        await self.batched_put([key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: list[Any], memory_objs: list[Any]) -> None:
        store = await self._get_store()
        pages = [self._page(m) for m in memory_objs]
        ok = await store.put([self._key(k) for k in keys], pages)
        if not all(ok):
            raise errors.NoSpace(f"py3fs store {self.name}: {ok.count(False)} not put")

    async def get(self, key: Any) -> Any:
        return (await self.batched_get([key]))[0]

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: list[Any]) -> list[Any]:
        """Memory objects of the chunks (None for a missing one); one meta
        transaction for the batch, page bytes straight from storage."""
        store = await self._get_store()
        pages = [bytearray(self.page_bytes) for _ in keys]
        try:
            found = await store.get([self._key(k) for k in keys], pages)
        except errors.Py3fsError as exc:
            logger.warning("py3fs LMCache get failed: %s", exc)
            return [None] * len(keys)
        return [
            self._chunk(p) if ok else None for p, ok in zip(pages, found, strict=True)
        ]

    def remove_sync(self, key: Any) -> bool:
        async def remove() -> int:
            return await (await self._get_store()).remove([self._key(key)])

        return self._on_loop(remove()) == 1

    async def list(self) -> list[str]:
        store = await self._get_store()
        return [e.key.decode(errors="replace") async for e in store.list_pages()]

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.__aexit__(None, None, None)  # read leases released
            await store.client.aclose()


class Py3fsConnectorAdapter(ConnectorAdapter):
    """LMCache's adapter for `py3fs://` URLs (and `plugin://py3fs`)."""

    def __init__(self) -> None:
        super().__init__(SCHEME)

    def can_parse(self, url: str) -> bool:
        if url.startswith(SCHEME):
            return True
        if url.startswith("plugin://"):
            return extract_plugin_type(url[len("plugin://") :]) == PLUGIN_TYPE
        return False

    def create_connector(self, context: ConnectorContext) -> RemoteConnector:
        return Py3fsConnector(
            context.url, context.loop, context.local_cpu_backend, context.config
        )
