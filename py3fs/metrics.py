"""Prometheus metrics every py3fs process may export (prometheus_client).

One module owns the names so that dashboards and the status page agree on them.
The objects live in prometheus_client's default registry; a service exposes
them at `/metrics` through `py3fs.web` (every service does). Counters are
cumulative since the process started; the status page turns them into rates.

Names and labels:
- `py3fs_rpc_requests_total{method, outcome}` / `py3fs_rpc_seconds{method}`:
  control-plane (gRPC) and data-plane requests a server answered, by method
  (RPC name or data-plane message type) and outcome (`ok` or an error class).
- `py3fs_storage_bytes_total{op}`: payload bytes a storage node read (`read`) or
  stored (`write`, forwarded replica writes included) or received in resync.
- `py3fs_storage_chunks{target}`, `py3fs_storage_used_bytes{target}`: per target,
  refreshed with every heartbeat.
- `py3fs_target_state{target, state}` (mgmtd): 1 for the state a target is in.
- `py3fs_resync_chunks_total{target}`: chunks a node pushed to a syncing peer.
- `py3fs_gc_queue_length` (meta): removed files whose chunks await deletion.
- `py3fs_kvcache_lookups_total{result}`: KV cache page lookups, `hit` or `miss`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

RPC_REQUESTS = Counter("py3fs_rpc_requests", "Requests answered", ["method", "outcome"])
RPC_SECONDS = Histogram(
    "py3fs_rpc_seconds",
    "Time to answer a request",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
STORAGE_BYTES = Counter("py3fs_storage_bytes", "Chunk payload bytes", ["op"])
STORAGE_CHUNKS = Gauge("py3fs_storage_chunks", "Chunks on a target", ["target"])
STORAGE_USED = Gauge("py3fs_storage_used_bytes", "Bytes used by a target", ["target"])
TARGET_STATE = Gauge(
    "py3fs_target_state", "1 for a target's state", ["target", "state"]
)
RESYNC_CHUNKS = Counter(
    "py3fs_resync_chunks", "Chunks pushed to a syncing target", ["target"]
)
GC_QUEUE = Gauge("py3fs_gc_queue_length", "Removed files awaiting chunk deletion")
KVCACHE_LOOKUPS = Counter("py3fs_kvcache_lookups", "KV cache page lookups", ["result"])


# The labelled children of the two RPC metrics, by (method, outcome): `labels()`
# validates and locks on every call, a few µs that every request paid. The key
# space is small (RPC names x error classes) and bounded by the code.
_rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def record(method: str, outcome: str, seconds: float) -> None:
    children = _rpc_children.get((method, outcome))
    if children is None:
        children = (RPC_SECONDS.labels(method), RPC_REQUESTS.labels(method, outcome))
        _rpc_children[(method, outcome)] = children
    children[0].observe(seconds)
    children[1].inc()


@contextmanager
def observe(method: str) -> Iterator[None]:
    """Count and time one request to `method`; the outcome is `ok` or the class
    name of the exception that escaped."""
    start = time.perf_counter()
    outcome = "ok"
    try:
        yield
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        record(method, outcome, time.perf_counter() - start)
