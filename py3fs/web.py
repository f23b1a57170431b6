"""The HTTP side of every service: FastAPI apps served by uvicorn on the
service's own event loop.

`base_app(service, node_id, health)` gives the routes every process has:
`/metrics` (Prometheus text format, py3fs.metrics) and `/healthz` (200 while
`health()` returns None, 503 with the reason otherwise). mgmtd adds its status
page and JSON status (mgmt_service.admin_http). `HttpServer` runs an app as an
async resource inside a service: `async with HttpServer(app, host, port)`.

uvicorn's `serve()` installs its own SIGINT/SIGTERM handlers; py3fs.app owns
the signals, so the server is driven through startup/main_loop/shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Self

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from py3fs import errors

logger = logging.getLogger(__name__)


def base_app(
    service: str,
    node_id: int,
    health: Callable[[], str | None] = lambda: None,
    before_scrape: Callable[[], None] = lambda: None,
) -> FastAPI:
    """A FastAPI app with `/metrics` and `/healthz`. `before_scrape()` runs
    before each scrape, for gauges read from live state."""
    app = FastAPI(title=f"py3fs {service} {node_id}", docs_url=None, redoc_url=None)

    @app.get("/metrics")
    def metrics() -> Response:
        before_scrape()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        problem = health()
        doc = {"service": service, "node_id": node_id, "ok": problem is None}
        if problem is not None:
            doc["reason"] = problem
        return JSONResponse(doc, status_code=200 if problem is None else 503)

    return app


class HttpServer:
    """Serve `app` on host:port (0: any free port) until closed; `address` is
    the bound host:port. Raises AddressInUse when the port is taken."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.address = ""

    async def __aenter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise errors.AddressInUse(
                f"cannot bind HTTP {self._host}:{self._port}: {exc.strerror}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        config = uvicorn.Config(
            self._app, log_level="warning", access_log=False, lifespan="off"
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name="http")
        logger.info("HTTP (metrics, health) on http://%s", self.address)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            if self._task is not None:
                with contextlib.suppress(Exception):
                    await self._task
            with contextlib.suppress(Exception):
                await server.shutdown(sockets=[self._sock] if self._sock else None)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
