"""mgmtd configuration (section `[mgmt]`, env `PY3FS_MGMT_*`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MgmtConfig:
    kv_url: str = ""  # where the routing state is persisted, e.g. sqlite:///x/kv.db
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port, announced through the ready file
    # /metrics and /healthz (mgmtd: also the status page); 0: any free port.
    http_port: int = 0
    # A node silent for this long is marked down and its targets offline. With
    # heartbeats every 0.5 s this is four missed beats; writes resume about
    # this long after a storage node dies (benchmarks/failover.py).
    heartbeat_timeout: float = 2.0
    # How often silent nodes are looked for; 0: an eighth of heartbeat_timeout.
    expire_interval: float = 0.0
    # This mgmtd's id in the primary lease; each mgmtd of a cluster needs its own.
    node_id: int = 1
    # How long the primary's lease lasts (renewed every third of it); a standby
    # takes over this long after the primary stops renewing. 0: heartbeat_timeout.
    lease_timeout: float = 0.0
    # The cluster secret (py3fs.caps): registrations, heartbeats and chain
    # table creation must be signed with it. "" = accept anyone (tests).
    secret_file: str = ""
    # What one node may report: a forged or buggy report must not grow the
    # routing past what every process fetches on each change.
    max_targets_per_node: int = 256
    max_nodes: int = 4096
