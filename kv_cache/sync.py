"""`SyncKVCacheStore`: the blocking face of `KVCacheStore`, for inference
engines whose cache managers are threads, not coroutines (SGLang's HiCache).

It owns a private event loop in a daemon thread with its own `Client`, like
`client.SyncClient`, and runs every store call there; calls are safe from any
thread except that loop's own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import uvloop

from client import Client, ClientConfig, load_client_config
from kv_cache.store import KVCacheStore

T = TypeVar("T")


class SyncKVCacheStore:
    """`KVCacheStore(client, name, ...)` with blocking methods: `batch_exists`,
    `exists`, `get`, `put`, `remove`, `touch`, `evict`, `enforce_capacity`,
    `gc`, `stats`, the `metrics` dict and `lease` as a plain context manager."""

    def __init__(self, config: ClientConfig | None, name: str, *args: Any, **kw: Any):
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="py3fs-kvcache", daemon=True
        )
        self._thread.start()
        try:
            cfg = config or load_client_config()
            self.store: KVCacheStore = self._run(_open(cfg, name, args, kw))
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("SyncKVCacheStore called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(attr(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = attr.__doc__
        return call

    @property
    def metrics(self) -> dict[str, int]:
        return self.store.metrics

    @contextmanager
    def lease(self, keys: Sequence[bytes], ttl: float = 60.0) -> Iterator[int]:
        cm = self.store.lease(keys, ttl)
        n = self._run(cm.__aenter__())
        try:
            yield n
        finally:
            self._run(cm.__aexit__(None, None, None))

    def close(self) -> None:
        try:
            self._run(self.store.__aexit__(None, None, None))  # leases released
            self._run(self.store.client.aclose())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncKVCacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _open(
    cfg: ClientConfig, name: str, args: tuple[Any, ...], kw: dict[str, Any]
) -> KVCacheStore:
    # Built inside the loop thread: gRPC channels and semaphores bind to it.
    client = Client(cfg)
    try:
        return await KVCacheStore(client, name, *args, **kw).open()
    except BaseException:
        await client.aclose()
        raise
