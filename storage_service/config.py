"""Storage service configuration (`[storage]` in the TOML file)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StorageConfig:
    # Identity: which node this is, where its data lives, whom it reports to.
    node_id: int = 0
    data_dir: str = ""
    mgmt: list[str] = field(default_factory=list)
    # The cluster secret (py3fs.caps); "" = accept requests unchecked.
    secret_file: str = ""
    # Tunables.
    targets: int = 4
    host: str = "127.0.0.1"
    port: int = 0
    # /metrics and /healthz (mgmtd: also the status page); 0: any free port.
    http_port: int = 0
    # Durability: False (the default) acknowledges a write once every replica has
    # it in its page cache and puts it on disk at the client's fsync/close (FLUSH),
    # as HDFS's hsync; True puts every write on disk before acknowledging it.
    fsync: bool = False
    heartbeat_interval: float = 0.5  # mgmtd fails a node after 2 s (4 beats)
    # How long startup keeps retrying registration while mgmtd is not up yet.
    register_timeout: float = 60.0
    # A forward must cover the whole rest of the chain writing a 64 MiB chunk.
    forward_timeout: float = 30.0
    # Replies remembered per node to answer retried writes without reapplying them.
    dedup_entries: int = 65536
    # Bounds on what clients may hold (py3fs.dataplane.DataServer): open
    # connections, seconds a connection may sit between frames and to deliver
    # a frame's payload, payload bytes in memory across all connections.
    max_connections: int = 4096
    idle_timeout: float = 600.0
    payload_timeout: float = 60.0
    payload_budget_bytes: int = 1 << 30
    # A small read the page cache cannot serve waits for the disk on the
    # event loop (less CPU than a worker thread's round trip) while such reads
    # take at most this long on average; 0: always in a worker thread (slow
    # disks). See FileChunkStore.read.
    disk_wait_on_loop_s: float = 0.002
