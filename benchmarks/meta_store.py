"""SQL statements and CPU per namespace op of `MetaStore` over SQLite, in process.

    python benchmarks/meta_store.py [--ops 2000] [--rounds 3]

No RPC, no mount: the transaction of each op alone, as meta runs it on its
loop. Runs create (open + close), rename, unlink, mkdir, stat and rmdir
`--ops` times each in one directory, `--rounds` times on fresh databases, and
prints per op the lowest CPU time (process time; on a shared host the lowest
of several rounds is the steadiest figure) and the SQL statements SQLite ran
(its trace callback: BEGIN and COMMIT included, a multi-row statement once).
To compare two trees, run it from each in turn (`cd TREE && python
benchmarks/meta_store.py`; the tree's directory comes first on sys.path).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.getcwd())

from meta_service.id_alloc import IdAllocator
from meta_service.ops.context import OpContext
from meta_service.store import MetaStore
from py3fs.kv.sqlite import SqliteDatabase
from py3fs.proto.messages import (
    ChainInfo,
    ChainTable,
    CloseReq,
    MkdirReq,
    NodeInfo,
    OpenReq,
    PathReq,
    RenameReq,
    RoutingInfo,
    TargetInfo,
)
from py3fs.routing import RoutingView

OPS = ("create", "rename", "unlink", "mkdir", "stat", "rmdir")


def routing() -> RoutingView:
    """Two storage nodes, four 2-replica chains: enough to place a file."""
    nodes = [
        NodeInfo(node_id=n, role="storage", address=f"127.0.0.1:{n}") for n in (1, 2)
    ]
    targets = [
        TargetInfo(target_id=t, node_id=1 + t % 2, used_bytes=0, total_bytes=1 << 40)
        for t in range(100, 108)
    ]
    chains = [
        ChainInfo(chain_id=c, version=1, targets=[98 + 2 * c, 99 + 2 * c])
        for c in (1, 2, 3, 4)
    ]
    table = ChainTable(table_id=1, version=1, chains=[1, 2, 3, 4])
    info = RoutingInfo(
        version=1, nodes=nodes, targets=targets, chains=chains, tables=[table]
    )
    return RoutingView(info)


def one_round(n: int) -> dict[str, tuple[float, float]]:
    """op -> (CPU µs per op, statements per op) on a fresh database."""
    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(os.path.join(tmp, "meta.db"))
        view = routing()
        store = MetaStore(db, OpContext(routing=lambda: view), IdAllocator(db))
        store.ensure_root()
        request_ids = itertools.count(1)

        def who() -> dict[str, object]:
            # A user, not root (permission checks run), and request ids as
            # a client sends them (the idempotency records are written).
            return {
                "uid": 1000,
                "gid": 1000,
                "client_id": "bench",
                "request_id": next(request_ids),
            }

        top = store.mkdir(MkdirReq(path="/bench", mode=0o777)).inode

        def create(i: int) -> None:
            flags = os.O_CREAT | os.O_WRONLY
            reply = store.open(OpenReq(at=top, path=f"f{i}", flags=flags, **who()))
            store.close(
                CloseReq(inode=reply.inode.inode, session_id=reply.session_id, **who())
            )

        steps: dict[str, Callable[[int], object]] = {
            "create": create,
            "rename": lambda i: store.rename(
                RenameReq(src_at=top, src=f"f{i}", dst_at=top, dst=f"g{i}", **who())
            ),
            "unlink": lambda i: store.unlink(
                PathReq(at=top, path=f"g{i}", follow=False, **who())
            ),
            "mkdir": lambda i: store.mkdir(MkdirReq(at=top, path=f"d{i}", **who())),
            "stat": lambda i: store.stat(
                PathReq(at=top, path=f"d{i}", follow=False, **who())
            ),
            "rmdir": lambda i: store.rmdir(
                PathReq(at=top, path=f"d{i}", follow=False, **who())
            ),
        }
        statements: collections.Counter[str] = collections.Counter()
        out = {}
        try:
            for op in OPS:
                statements.clear()
                # The store runs on this thread's connection (no no-wait block).
                db._conn().set_trace_callback(lambda sql: statements.update(["x"]))
                t0 = time.process_time()
                for i in range(n):
                    steps[op](i)
                cpu = time.process_time() - t0
                db._conn().set_trace_callback(None)
                out[op] = (cpu / n * 1e6, statements["x"] / n)
        finally:
            db.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for op, (us, stmts) in one_round(args.ops).items():
            if op not in best or us < best[op][0]:
                best[op] = (us, stmts)
    print(f"tree {os.getcwd()}, {args.ops} ops x {args.rounds} rounds")
    print("| op | CPU µs/op (best) | SQL statements/op |")
    print("|---|---|---|")
    for op in OPS:
        us, stmts = best[op]
        print(f"| {op} | {us:.1f} | {stmts:.1f} |")


if __name__ == "__main__":
    main()
