"""The service runner: uvloop, signals, logging, and the ready-file handshake.

`run(service, node_id, make_server, ready_file)` is the only place that starts an
event loop for a service. `make_server()` returns an async context manager whose
value has an `address`. The runner starts the service's HTTP endpoint
(py3fs.web: `/metrics`, `/healthz`, and whatever `srv.http_app()` adds) and
sets `srv.http_address` before entering the server; once it is entered (the
service accepts connections) the runner writes `{"pid", "address", "http",
"service", "node_id"}` as JSON to `ready_file` (atomically, via rename), then
waits for SIGTERM/SIGINT and exits the contexts.

A server may provide `http_app() -> FastAPI` (its own app, built on
`py3fs.web.base_app`), `health() -> str | None` (None: healthy) and
`before_scrape()` (refresh gauges read from live state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, Self

import uvloop
from fastapi import FastAPI

from py3fs import log
from py3fs.web import HttpServer, base_app

logger = logging.getLogger(__name__)


class Service(Protocol):
    address: str


class ServiceResource:
    """Base of the service servers: `async with Server(cfg) as srv`. `_start` may
    fail halfway; `aclose` must release whatever it got to (trio's contract)."""

    async def _start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def write_ready_file(path: str, info: dict[str, Any]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)


def run(
    service: str,
    node_id: int,
    make_server: Callable[[], AbstractAsyncContextManager[Any]],
    ready_file: str | None,
    log_level: str = "INFO",
    *,
    http_host: str = "127.0.0.1",
    http_port: int | None = 0,
) -> None:
    """Run the service until SIGTERM/SIGINT. `http_port` None: no HTTP endpoint;
    0: any free port (announced in the ready file)."""
    log.setup(service, node_id, log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = make_server()
        async with contextlib.AsyncExitStack() as stack:
            # HTTP first: the server registers with mgmtd on entry, naming it.
            http_address = ""
            if http_port is not None:
                http = await stack.enter_async_context(
                    HttpServer(
                        _http_app(service, node_id, server), http_host, http_port
                    )
                )
                http_address = http.address
                server.http_address = http_address  # type: ignore[attr-defined]
            srv = await stack.enter_async_context(server)
            info = {
                "pid": os.getpid(),
                "address": srv.address,
                "http": http_address,
                "service": service,
                "node_id": node_id,
            }
            logger.info("%s %d ready on %s", service, node_id, srv.address)
            if ready_file:
                write_ready_file(ready_file, info)
            await stop.wait()
            logger.info("%s %d stopping", service, node_id)

    uvloop.run(main())


def _http_app(service: str, node_id: int, srv: Any) -> FastAPI:
    make = getattr(srv, "http_app", None)
    if make is not None:
        app: FastAPI = make()
        return app
    return base_app(
        service,
        node_id,
        health=getattr(srv, "health", lambda: None),
        before_scrape=getattr(srv, "before_scrape", lambda: None),
    )
