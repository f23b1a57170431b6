"""Blocking wrappers over `Client` and `File`, for scripts and the CLI.

Like fsspec's `sync()`, a `SyncClient` owns a private event loop in a daemon
thread and runs each call there, so it works from any thread, including ones that
already run an event loop of their own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from client.client import Client, File
from client.config import ClientConfig, load_client_config

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="py3fs-client", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("SyncClient called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class SyncFile:
    def __init__(self, loop: _Loop, file: File) -> None:
        self._loop = loop
        self.file = file

    def read(self, size: int = -1) -> bytes:
        return self._loop.run(self.file.read(size))

    def readinto(self, buf: Any) -> int:
        return self._loop.run(self.file.readinto(buf))

    def pread(self, size: int, offset: int) -> bytes:
        return self._loop.run(self.file.pread(size, offset))

    def preadinto(self, buf: Any, offset: int) -> int:
        return self._loop.run(self.file.preadinto(buf, offset))

    def write(self, data: Any) -> int:
        return self._loop.run(self.file.write(data))

    def pwrite(self, data: Any, offset: int) -> int:
        return self._loop.run(self.file.pwrite(data, offset))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def fsync(self) -> None:
        self._loop.run(self.file.fsync())

    def close(self) -> None:
        self._loop.run(self.file.close())

    def __enter__(self) -> SyncFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncClient:
    """Every coroutine method of `Client` as a blocking call; `open` gives a
    `SyncFile`. Use as a context manager, or call `close()`."""

    def __init__(self, config: ClientConfig) -> None:
        self._loop = _Loop()
        self.client = self._loop.run(_make(config))

    @classmethod
    def from_cluster(cls, path: str | None = None, **overrides: Any) -> SyncClient:
        return cls(load_client_config(path, **overrides))

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> SyncFile:
        return SyncFile(
            self._loop, self._loop.run(self.client.open(path, mode, **kwargs))
        )

    def listdir(self, path: str) -> list[Any]:
        return self._loop.run(self.client.listdir(path))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call

    def close(self) -> None:
        try:
            self._loop.run(self.client.aclose())
        finally:
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make(config: ClientConfig) -> Client:
    # Built inside the loop thread: gRPC channels and semaphores bind to it.
    return Client(config)
