"""The service runner: uvloop, signals, logging, and the ready-file handshake.

`run(service, node_id, make_server, ready_file)` is the only place that starts an
event loop for a service. `make_server()` returns an async context manager whose
value has an `address`; once it is entered (the service accepts connections) the
runner writes `{"pid", "address", "service", "node_id"}` as JSON to `ready_file`
(atomically, via rename), then waits for SIGTERM/SIGINT and exits the context.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, Self

import uvloop

from py3fs import log

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
) -> None:
    log.setup(service, node_id, log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with make_server() as srv:
            info = {
                "pid": os.getpid(),
                "address": srv.address,
                "service": service,
                "node_id": node_id,
            }
            logger.info("%s %d ready on %s", service, node_id, srv.address)
            if ready_file:
                write_ready_file(ready_file, info)
            await stop.wait()
            logger.info("%s %d stopping", service, node_id)

    uvloop.run(main())
