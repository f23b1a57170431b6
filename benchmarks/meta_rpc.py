"""One meta RPC over gRPC and over py3fs.msgrpc frames, same run, same handler.

    python benchmarks/meta_rpc.py [--calls 5000] [--inflight 50]

A child process serves `MetaService` twice, over grpc.aio (the envelope, as
mgmtd uses it) and over msgrpc (what meta uses), with the same handlers: a
`null` Stat that answers a fixed inode at once (the transport alone), and a
`store` Stat that resolves a path in a real sqlite MetaStore in a worker
thread, as meta does. A raw 64-byte ping-pong on a loopback socket is the
floor. Prints µs per sequential call and calls/s with `--inflight` in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc.aio
import uvloop

from meta_service.ops.context import OpContext
from meta_service.store import MetaStore
from py3fs.kv.sqlite import SqliteDatabase
from py3fs.msgrpc import MsgServer, Stub
from py3fs.proto.messages import Inode, InodeType, MkdirReq, Msg, PathReq
from py3fs.proto.services import MetaService
from py3fs.rpc import GrpcStub, table_handler

FIXED = Inode(inode=7, type=InodeType.FILE, mode=0o644, uid=0, gid=0, nlink=1)


class NullImpl:
    def __getattr__(self, name: str) -> Callable[[Msg], Awaitable[Msg]]:
        async def answer(req: Msg) -> Msg:
            return FIXED

        return answer


class StoreImpl:
    def __init__(self, store: MetaStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Callable[[Msg], Awaitable[Msg]]:
        # The servers look up a handler for every RPC of the table at start;
        # the server-only ones (capability, whoami, trash...) the store lacks
        # are not called here.
        op = getattr(self._store, name, None)

        async def call(req: Msg) -> Msg:
            if op is None:
                raise NotImplementedError(name)
            result: Msg = await asyncio.to_thread(op, req)
            return result

        return call


def _ping_server(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        while data := conn.recv(64):
            conn.sendall(data)


def _serve(conn: Any, kind: str, db_dir: str) -> None:
    async def main() -> None:
        if kind == "null":
            impl: object = NullImpl()
        else:
            store = MetaStore(
                SqliteDatabase(os.path.join(db_dir, "kv.db")), OpContext()
            )
            store.ensure_root()
            store.mkdir(MkdirReq(path="/a", parents=True))
            impl = StoreImpl(store)
        msg = MsgServer(MetaService, impl)
        msg_addr = await msg.start()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((table_handler(MetaService, impl),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send((msg_addr, f"127.0.0.1:{port}"))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop(0)
        await msg.aclose()

    uvloop.run(main())


class MsgStub(Stub, MetaService):
    pass


class GStub(GrpcStub, MetaService):
    pass


async def measure(stub: Any, calls: int, inflight: int) -> tuple[float, float]:
    req = PathReq(path="/a")
    for _ in range(100):
        await stub.stat(req)
    start = time.perf_counter()
    for _ in range(calls):
        await stub.stat(req)
    seq_us = (time.perf_counter() - start) / calls * 1e6
    sem = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with sem:
            await stub.stat(req)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return seq_us, calls / (time.perf_counter() - start)


def raw_ping_us(calls: int) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    proc = multiprocessing.get_context("fork").Process(
        target=_ping_server, args=(server,)
    )
    proc.start()
    with socket.create_connection(server.getsockname()) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b"x" * 64
        start = time.perf_counter()
        for _ in range(calls):
            sock.sendall(payload)
            got = 0
            while got < 64:
                got += len(sock.recv(64))
        elapsed = time.perf_counter() - start
    proc.join()
    server.close()
    return elapsed / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--inflight", type=int, default=50)
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    print(f"raw loopback 64 B ping-pong: {raw_ping_us(args.calls):.0f} µs")
    print(f"| handler | transport | µs/call | calls/s ({args.inflight} in flight) |")
    print("|---|---|---|---|")
    for kind in ("null", "store"):
        with tempfile.TemporaryDirectory() as db_dir:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, kind, db_dir))
            proc.start()
            msg_addr, grpc_addr = parent.recv()

            async def run_both(
                msg_addr: str, grpc_addr: str
            ) -> dict[str, tuple[float, float]]:
                out = {}
                for name, stub in (
                    ("grpc", GStub(grpc_addr)),
                    ("msgrpc", MsgStub(msg_addr)),
                ):
                    out[name] = await measure(stub, args.calls, args.inflight)
                    await stub.aclose()
                return out

            results = uvloop.run(run_both(msg_addr, grpc_addr))
            parent.send("stop")
            proc.join(10)
            for name, (seq, par) in results.items():
                print(f"| {kind} | {name} | {seq:,.0f} | {par:,.0f} |")
            lat = results["grpc"][0] / results["msgrpc"][0]
            thr = results["msgrpc"][1] / results["grpc"][1]
            print(f"| {kind} | msgrpc gain | {lat:.1f}x | {thr:.1f}x |")


if __name__ == "__main__":
    main()
