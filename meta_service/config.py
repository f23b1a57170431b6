"""Meta service configuration: node identity first, then tunables with defaults."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetaConfig:
    # identity and wiring
    node_id: int = 0
    kv: str = ""
    mgmt: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    # /metrics and /healthz (mgmtd: also the status page); 0: any free port.
    http_port: int = 0
    # The cluster secret (py3fs.caps): meta issues capabilities and signs GC's
    # removes with it; "" = storage checks nothing.
    secret_file: str = ""
    # How often meta empties expired trash entries (py3fs.trash).
    trash_interval: float = 60.0
    # tunables
    chunk_size: int = 4 * 1024 * 1024
    heartbeat_interval: float = 0.5  # mgmtd fails a node after 2 s (4 beats)
    gc_interval: float = 1.0
    # between full GC passes, how often to look for due files (a read of one
    # key when there are none), so removal follows unlinks closely
    gc_poll: float = 0.1
    gc_batch: int = 256
    # a claimed GC entry comes due again after this long unless its removal finishes,
    # so a meta killed mid-removal leaves the work to another
    gc_retry_interval: float = 30.0
    idempotency_ttl: float = 600.0
    # how often to look for write sessions whose client stopped renewing
    session_scan_interval: float = 1.0
    id_batch: int = 1000
    # Bounds on RPC peers (py3fs.msgrpc.ServerLimits): connections, idle
    # seconds before a connection with nothing in flight is closed, and the
    # largest request body in bytes.
    rpc_max_connections: int = 4096
    rpc_idle_timeout: float = 600.0
    rpc_max_request: int = 4 * 1024 * 1024
