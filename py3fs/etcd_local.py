"""Run an etcd cluster on loopback: used by `py3fs cluster up --kv etcd` and tests.

Members are plain `etcd` processes (Debian's `etcd-server` package installs
/usr/bin/etcd) that listen on 127.0.0.1, keep their data in their own directory
and log to `run_dir/etcd-<n>.log`. An `EtcdMember` is a `ServiceProc`, so the
launcher records, lists and stops it like any other process; it is ready once its
`/health` endpoint reports a leader.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from py3fs.procs import ServiceProc, ServiceStartError, log_tail

ETCD_ENV = "PY3FS_ETCD"  # path of the etcd binary, when not on PATH
DEFAULT_ARGS = [
    # py3fs commits carry their range-version writes: room for bigger transactions.
    "--max-txn-ops",
    "1024",
    # Every commit adds MVCC history; transactions live far less than 10 minutes.
    "--auto-compaction-mode",
    "periodic",
    "--auto-compaction-retention",
    "10m",
    "--logger",
    "zap",
    "--log-level",
    "warn",
]


def find_etcd() -> str | None:
    """The etcd binary: $PY3FS_ETCD, else `etcd` on PATH, else None."""
    path = os.environ.get(ETCD_ENV) or shutil.which("etcd")
    return path if path and os.access(path, os.X_OK) else None


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago (etcd cannot be
    told to bind port 0 and report it, so this is the best available).

    Picked below the kernel's ephemeral range: a port there is never taken
    meanwhile by an outgoing connection's source port, which happened to the
    ports that bind(0) hands out when many services started at once."""
    low, _ = _ephemeral_range()
    pool = range(10000, low) if low - 10000 >= 1000 else None
    chosen: list[int] = []
    socks = []
    try:
        for _ in range(50 * n):
            if len(chosen) == n or pool is None:
                break
            port = random.choice(pool)
            if port in chosen:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            chosen.append(port)
        while len(chosen) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            chosen.append(s.getsockname()[1])
        return chosen
    finally:
        for s in socks:
            s.close()


def _get_json(url: str, body: bytes | None = None, timeout: float = 2.0) -> Any:
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class EtcdMember(ServiceProc):
    """One etcd member; `module` holds the etcd binary, `args` its flags."""

    client_port: int = 0
    peer_port: int = 0

    def argv(self) -> list[str]:
        return [self.module, *self.args]

    def command(self) -> list[str]:
        return self.argv()  # ready means healthy (`wait_ready`), not a ready file

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until this member serves requests with a leader elected."""
        url = f"http://{self.address}/health"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise ServiceStartError(
                    f"{self.name} exited with status {self.popen.returncode}; log "
                    f"{self.log_file}:\n{log_tail(self.log_file)}"
                )
            try:
                health: dict[str, Any] = _get_json(url)
                if health.get("health") == "true":
                    return health
                last = str(health)
            except (OSError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ServiceStartError(
            f"{self.name} not healthy after {timeout:.0f}s ({last}); log "
            f"{self.log_file}:\n{log_tail(self.log_file)}"
        )

    def status(self) -> dict[str, Any]:
        """This member's `/v3/maintenance/status` reply."""
        reply: dict[str, Any] = _get_json(
            f"http://{self.address}/v3/maintenance/status", b"{}"
        )
        return reply

    def is_leader(self) -> bool:
        try:
            st = self.status()
        except (OSError, ValueError):
            return False
        return bool(st.get("leader")) and st["leader"] == st["header"]["member_id"]


def plan_members(
    data_root: Path,
    run_dir: Path,
    size: int = 3,
    ports: list[tuple[int, int]] | None = None,
    binary: str | None = None,
    extra: list[str] | None = None,
    hosts: list[str] | None = None,
) -> list[EtcdMember]:
    """Members etcd-1..etcd-<size> with data in data_root/etcd-<n>. `ports` are
    (client, peer) pairs; a restarted cluster must reuse its peer ports, which
    etcd keeps in its membership. `hosts` gives each member an address of its
    own (default: all on 127.0.0.1); members on their own addresses use etcd's
    standard ports unless `ports` says otherwise."""
    binary = binary or find_etcd()
    if binary is None:
        raise ServiceStartError(
            f"etcd not found (apt-get install etcd-server, or set ${ETCD_ENV})"
        )
    hosts = hosts or ["127.0.0.1"] * size
    if ports is None and len(set(hosts)) == size:
        ports = [(2379, 2380)] * size
    if ports is None:
        flat = free_ports(2 * size)
        ports = [(flat[2 * i], flat[2 * i + 1]) for i in range(size)]
    names = [f"etcd-{i + 1}" for i in range(len(ports))]
    initial = ",".join(
        f"{name}=http://{host}:{peer}"
        for name, host, (_, peer) in zip(names, hosts, ports, strict=True)
    )
    token = f"py3fs-{uuid.uuid4().hex[:12]}"
    members = []
    for i, (name, host, (client, peer)) in enumerate(
        zip(names, hosts, ports, strict=True)
    ):
        args = [
            "--name", name,
            "--data-dir", str(data_root / name),
            "--listen-client-urls", f"http://{host}:{client}",
            "--advertise-client-urls", f"http://{host}:{client}",
            "--listen-peer-urls", f"http://{host}:{peer}",
            "--initial-advertise-peer-urls", f"http://{host}:{peer}",
            "--initial-cluster", initial,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            *DEFAULT_ARGS,
            *(extra or []),
        ]  # fmt: skip
        members.append(
            EtcdMember(
                role="etcd",
                node_id=i + 1,
                module=binary,
                args=args,
                run_dir=run_dir,
                address=f"{host}:{client}",
                client_port=client,
                peer_port=peer,
            )
        )
    return members


def start_members(members: list[EtcdMember], timeout: float = 60.0) -> None:
    """Start every member and wait until all are healthy; on failure stop them
    all and raise ServiceStartError with the failing log."""
    try:
        # All at once: no member can elect a leader before a quorum is up.
        for m in members:
            m.spawn()
        for m in members:
            m.wait_ready(timeout)
    except BaseException:
        stop_members(members)
        raise


def stop_members(members: list[EtcdMember], timeout: float = 10.0) -> None:
    for m in members:
        m.stop(timeout)


def endpoints_of(members: list[EtcdMember]) -> str:
    """'127.0.0.1:p1,127.0.0.1:p2,...' for `EtcdDatabase`; the KV URL is
    'etcd://' + this."""
    return ",".join(m.address for m in members)


def leader_of(members: list[EtcdMember]) -> EtcdMember | None:
    """The running member that is the Raft leader now, if any."""
    for m in members:
        if m.running() and m.is_leader():
            return m
    return None


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def ports_from_args(args: list[str]) -> tuple[int, int]:
    """(client, peer) ports of a recorded member's flags."""
    flags = dict(zip(args[::2], args[1::2], strict=False))
    return (
        port_of(flags["--listen-client-urls"]),
        port_of(flags["--listen-peer-urls"]),
    )


def wait_for_leader(members: list[EtcdMember], timeout: float = 30.0) -> EtcdMember:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (leader := leader_of(members)) is not None:
            return leader
        time.sleep(0.05)
    raise ServiceStartError(f"no etcd leader after {timeout:.0f}s")
