"""A whole py3fs cluster on one machine: the launcher behind `py3fs cluster`.

Everything lives under one data directory:

    DIR/cluster.toml     what clients need ([client] mgmt = [...])
    DIR/cluster.json     the launcher's record of its processes (for status and down)
    DIR/kv.db            the embedded KV store (default backend)
    DIR/etcd/etcd-<n>/   etcd members' data, with `--kv etcd` (a local 3-member etcd)
    DIR/storage-<id>/    storage targets
    DIR/run/             ready files and one log per process

Processes run in their own sessions, so they outlive the command that started them.
Node ids: mgmtd 1..N, meta 11, 12, ..., storage 21, 22, ... (targets <node>01...);
etcd members are numbered 1, 2, 3 in their own role.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from py3fs import auth, caps, errors, tls
from py3fs.etcd_local import (
    EtcdMember,
    endpoints_of,
    free_ports,
    plan_members,
    ports_from_args,
    start_members,
)
from py3fs.mgmt_client import MgmtClient
from py3fs.procs import ServiceProc

HOST = "127.0.0.1"
MGMT_NODE = 1
META_BASE = 11
STORAGE_BASE = 21
LOCAL_ETCD = "etcd"  # ClusterSpec.kv value: start a local 3-member etcd
ETCD_MEMBERS = 3
T = TypeVar("T")


@dataclass
class ClusterSpec:
    data_dir: Path
    meta: int = 2
    storage: int = 3
    targets: int = 4
    replicas: int = 3
    kv: str = ""  # a KV URL, "etcd" (local etcd members), or "": sqlite in data_dir
    fsync: bool = False  # fsync every chunk write (else on client fsync/close)
    heartbeat_timeout: str = "2s"
    chunk_size: str = "4MiB"
    # mgmtd processes (node ids 1..N): the first to take the lease is primary.
    mgmtd: int = 1
    # Capabilities and node signatures on the data plane (py3fs.caps); off
    # only to measure what they cost (benchmarks/caps_cost.py).
    capabilities: bool = True
    # TLS on mgmtd's gRPC, meta's msgrpc and the data plane, with a local CA
    # (py3fs.tls).
    tls: bool = False
    # Extra command-line arguments per role ("mgmtd", "meta", "storage").
    extra: dict[str, list[str]] = field(default_factory=dict)
    # Process name ("etcd-1", "mgmtd-1", "meta-11", "storage-21") -> [network
    # namespace, address]: run it in that namespace, bound to that address
    # (partition tests). Processes not named run on 127.0.0.1.
    net: dict[str, list[str]] = field(default_factory=dict)

    def kv_url(self) -> str:
        return self.kv or f"sqlite://{(self.data_dir / 'kv.db').resolve()}"


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.data_dir = spec.data_dir.resolve()
        self.run_dir = self.data_dir / "run"
        self.etcd: list[EtcdMember] = []
        self.mgmtd: ServiceProc | None = None  # the first of mgmtds
        self.mgmtds: list[ServiceProc] = []
        self.metas: list[ServiceProc] = []
        self.storages: list[ServiceProc] = []

    # ------------------------------------------------------------- files

    @property
    def cluster_file(self) -> Path:
        return self.data_dir / "cluster.toml"

    @property
    def admin_token_file(self) -> Path:
        """The admin's token (0600): clients of the user who ran `up` find it
        through the cluster file; nobody else can read it."""
        return self.data_dir / "admin.token"

    @property
    def secret_file(self) -> Path:
        """The cluster secret (0600) services sign and check with (py3fs.caps)."""
        return self.data_dir / "cluster.secret"

    @property
    def tls_dir(self) -> Path:
        """Certificates when `spec.tls` (py3fs.tls): ca.pem for clients,
        cert.pem and key.pem (0600) for services."""
        return self.data_dir / "tls"

    def _tls_env(self) -> None:
        """Services find the certificates through $PY3FS_TLS_DIR."""
        if self.spec.tls:
            for proc in [*self.mgmtds, *self.metas, *self.storages]:
                proc.env[tls.TLS_ENV] = str(self.tls_dir)

    def _tls(self) -> tls.Tls | None:
        return tls.Tls.load(str(self.tls_dir)) if self.spec.tls else None

    def _secret_args(self) -> list[str]:
        if not self.spec.capabilities:
            return []
        return ["--secret-file", str(self.secret_file)]

    def _ensure_admin(self) -> None:
        """Create the admin user on first `up` (which turns authentication on)
        and keep its token file; a later `up` reuses both."""
        from py3fs.kv.registry import open_database

        token = ""
        if self.admin_token_file.exists():
            token = self.admin_token_file.read_text().strip()
        with open_database(self.kv_url) as db:
            users = {u.name: u for u in auth.list_users(db)}
            admin = users.get(auth.ADMIN)
            if token and admin is not None and admin.token_sha256 == auth.digest(token):
                return
            token = auth.add_user(
                db, auth.ADMIN, 0, 0, act_for_others=True, replace=True
            )
        auth.write_token_file(self.admin_token_file, token)

    @property
    def state_file(self) -> Path:
        return self.data_dir / "cluster.json"

    @property
    def procs(self) -> list[ServiceProc]:
        # Order matters: down stops them in reverse, the KV store last.
        mgmtds = self.mgmtds or [self.mgmtd]
        procs = [*self.etcd, *mgmtds, *self.metas, *self.storages]
        return [p for p in procs if p is not None]

    @property
    def kv_url(self) -> str:
        """The KV URL that mgmtd and meta use."""
        if self.spec.kv == LOCAL_ETCD:
            return f"etcd://{endpoints_of(self.etcd)}"
        return self.spec.kv_url()

    @property
    def status_url(self) -> str:
        """The status page of the first mgmtd ("" if it has no HTTP endpoint)."""
        mgmtd = self.mgmtds[0] if self.mgmtds else self.mgmtd
        return f"http://{mgmtd.http}/" if mgmtd is not None and mgmtd.http else ""

    @property
    def mgmt_addresses(self) -> list[str]:
        mgmtds = self.mgmtds or [self.mgmtd]
        return [p.address for p in mgmtds if p is not None and p.address]

    def _write_files(self) -> None:
        mgmt = ", ".join(f'"{a}"' for a in self.mgmt_addresses)
        # The secret (0600) lets this user's admin tools (fsck, decommission)
        # sign what only services may send; other users cannot read it.
        secret = (
            f'secret_file = "{self.secret_file}"\n' if self.spec.capabilities else ""
        )
        if self.spec.tls:
            secret += f'tls_dir = "{self.tls_dir}"\n'

        self.cluster_file.write_text(
            "# Written by `py3fs cluster up`; clients read [client].\n"
            f"[client]\nmgmt = [{mgmt}]\n"
            f'token_file = "{self.admin_token_file}"\n' + secret
        )
        state = {
            "kv_url": self.kv_url,
            "spec": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(self.spec).items()
            },
            "processes": [
                {
                    "role": p.role,
                    "node_id": p.node_id,
                    "module": p.module,
                    "args": p.args,
                    "pid": p.pid,
                    "start_time": p.start_time,
                    "address": p.address,
                    "http": p.http,
                    "log": str(p.log_file),
                }
                for p in self.procs
            ],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, data_dir: Path) -> LocalCluster:
        """The cluster recorded in `data_dir` (processes may be running or not)."""
        state_file = data_dir.resolve() / "cluster.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            raise errors.InvalidArgument(
                f"no cluster recorded in {data_dir} ({exc})"
            ) from None
        spec_fields = {f.name for f in dataclasses.fields(ClusterSpec)}
        spec = ClusterSpec(
            **{k: v for k, v in state["spec"].items() if k in spec_fields}
        )
        spec.data_dir = Path(spec.data_dir)
        cluster = cls(spec)
        for rec in state["processes"]:
            fields = {
                "role": rec["role"],
                "node_id": rec["node_id"],
                "module": rec["module"],
                "args": rec["args"],
                "run_dir": cluster.run_dir,
                "pid": rec["pid"],
                "start_time": rec.get("start_time", 0),
                "address": rec["address"],
                "http": rec.get("http", ""),
            }
            if rec["role"] == "etcd":
                client, peer = ports_from_args(rec["args"])
                cluster.etcd.append(
                    EtcdMember(**fields, client_port=client, peer_port=peer)
                )
                continue
            proc = ServiceProc(**fields)
            if proc.role == "mgmtd":
                cluster.mgmtds.append(proc)
                cluster.mgmtd = cluster.mgmtds[0]
            elif proc.role == "meta":
                cluster.metas.append(proc)
            else:
                cluster.storages.append(proc)
        cluster._tls_env()
        return cluster

    # ------------------------------------------------------------ lifecycle

    def _plan_etcd(self, old: LocalCluster | None) -> None:
        if self.spec.kv != LOCAL_ETCD:
            return
        # A restarted etcd must keep its peer ports: members find each other by
        # the URLs stored in their data.
        ports = [ports_from_args(m.args) for m in old.etcd] if old else []
        names = [f"etcd-{i + 1}" for i in range(ETCD_MEMBERS)]
        placed = all(n in self.spec.net for n in names)
        self.etcd = plan_members(
            self.data_dir / "etcd",
            self.run_dir,
            ETCD_MEMBERS,
            ports=ports or None,
            hosts=[self.spec.net[n][1] for n in names] if placed else None,
        )
        for m in self.etcd:
            self._place(m, bind=False)

    def _place(self, proc: ServiceProc, bind: bool = True) -> None:
        """Run `proc` in its network namespace on its own address, if it has one."""
        if proc.name in self.spec.net:
            netns, host = self.spec.net[proc.name]
            proc.prefix = ["ip", "netns", "exec", netns]
            if bind:
                proc.args = [*proc.args, "--host", host]

    def _plan(self) -> None:
        """Every service gets a fixed port, chosen free now and kept in the cluster
        file: clients, mounts and copied cluster files stay valid across restarts."""
        spec = self.spec
        kv = self.kv_url
        extra = spec.extra
        self.mgmtds = [
            ServiceProc(
                "mgmtd",
                MGMT_NODE + i,
                "mgmt_service",
                [
                    "--kv",
                    kv,
                    "--node-id",
                    str(MGMT_NODE + i),
                    "--heartbeat-timeout",
                    spec.heartbeat_timeout,
                    *self._secret_args(),
                    *extra.get("mgmtd", []),
                ],
                self.run_dir,
            )
            for i in range(max(spec.mgmtd, 1))
        ]
        self.mgmtd = self.mgmtds[0]
        for p in self.mgmtds:
            self._place(p)
        self.metas = [
            ServiceProc("meta", META_BASE + i, "meta_service", [], self.run_dir)
            for i in range(spec.meta)
        ]
        self.storages = [
            ServiceProc(
                "storage", STORAGE_BASE + i, "storage_service", [], self.run_dir
            )
            for i in range(spec.storage)
        ]
        procs = [*self.mgmtds, *self.metas, *self.storages]
        self._tls_env()
        ports = free_ports(2 * len(procs))
        for proc, port, http in zip(procs, ports[::2], ports[1::2], strict=True):
            proc.address = f"{HOST}:{port}"
            proc.http = f"{HOST}:{http}"
        for p in self.mgmtds:
            p.args += ["--port", _port(p), "--http-port", _port(p, http=True)]

    def _bind_mgmt(self) -> None:
        """Fill in the arguments that need mgmtd's address, known once it is up."""
        spec = self.spec
        mgmt = ",".join(self.mgmt_addresses)
        for p in self.metas:
            p.args = [
                "--kv",
                self.kv_url,
                "--mgmt",
                mgmt,
                "--node-id",
                str(p.node_id),
                "--chunk-size",
                spec.chunk_size,
                "--port",
                _port(p),
                "--http-port",
                _port(p, http=True),
                *self._secret_args(),
                *spec.extra.get("meta", []),
            ]
        for p in self.storages:
            p.args = [
                "--mgmt",
                mgmt,
                "--node-id",
                str(p.node_id),
                *self._secret_args(),
                "--data-dir",
                str(self.data_dir / f"storage-{p.node_id}"),
                "--targets",
                str(spec.targets),
                "--port",
                _port(p),
                "--http-port",
                _port(p, http=True),
                "--fsync" if spec.fsync else "--no-fsync",
                *spec.extra.get("storage", []),
            ]
        for p in [*self.metas, *self.storages]:
            self._place(p)

    def running(self) -> list[ServiceProc]:
        return [p for p in self.procs if p.running()]

    def up(self, timeout: float = 60.0) -> list[ServiceProc]:
        """Start the cluster and its chain table; returns when clients can work.

        A cluster already recorded in the data directory is resumed: only its
        processes that are down start again, with the ports and arguments they
        had (the recorded spec wins over this one). Returns the processes
        started. On failure, stops what it started and raises with the log."""
        if self.state_file.exists():
            return self._resume(timeout)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._plan_etcd(None)
        try:
            start_members(self.etcd, timeout)
            caps.write_secret(self.secret_file)
            if self.spec.tls:
                tls.make_local(self.tls_dir)
            self._ensure_admin()
            self._plan()
            # One by one: the first takes the lease, the others stand by.
            for p in self.mgmtds:
                p.start(timeout)
            self._bind_mgmt()
            self._start_all([*self.storages, *self.metas], timeout)
            self._write_files()
            _run_sync(self._create_chains(timeout))
        except BaseException:
            self.down()
            raise
        return self.procs

    def _resume(self, timeout: float) -> list[ServiceProc]:
        old = LocalCluster.load(self.data_dir)
        self.spec = old.spec
        self.etcd, self.mgmtds, self.mgmtd = old.etcd, old.mgmtds, old.mgmtd
        self.metas, self.storages = old.metas, old.storages
        down = [p for p in self.procs if not p.running()]
        if not down:
            return []
        # Fixed in the records of clusters made before ports were kept.
        for p in self.mgmtds:
            if p.address and "--port" not in p.args:
                p.args += ["--port", _port(p)]
        started: list[ServiceProc] = []
        try:
            etcd = [p for p in self.etcd if p in down]
            for p in etcd:
                p.spawn()
                started.append(p)
            for p in etcd:
                p.wait_ready(timeout)
            for p in self.mgmtds:
                if p in down:
                    started.append(p)
                    p.start(timeout)
            rest = [p for p in [*self.storages, *self.metas] if p in down]
            started += rest
            self._start_all(rest, timeout)
            self._write_files()
            _run_sync(self._create_chains(timeout))
        except BaseException:
            for p in reversed(started):
                p.stop()
            self._write_files()
            raise
        return down

    @staticmethod
    def _start_all(procs: list[ServiceProc], timeout: float) -> None:
        for p in procs:
            p.spawn()
        for p in procs:
            p.wait_ready(timeout)

    async def _create_chains(self, timeout: float) -> None:
        mgmt = MgmtClient(
            self.mgmt_addresses,
            keys=caps.Keys.load(str(self.secret_file)),
            tls=self._tls(),
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                view = await mgmt.routing()
                storage_up = {n.node_id for n in view.nodes_of_role("storage")}
                meta_up = {n.node_id for n in view.nodes_of_role("meta")}
                want_storage = {p.node_id for p in self.storages}
                if want_storage <= storage_up and meta_up:
                    break
                if time.monotonic() > deadline:
                    raise errors.RoutingUnavailable(
                        f"storage nodes {sorted(want_storage - storage_up)} or meta "
                        "did not register with mgmtd"
                    )
                await asyncio.sleep(0.05)
            await mgmt.create_chain_table(self.spec.replicas)
        finally:
            await mgmt.aclose()

    def down(self, timeout: float = 10.0) -> list[ServiceProc]:
        """Stop every process (SIGTERM, then SIGKILL); returns those stopped.
        Data stays; `up` on the same directory brings it back."""
        stopped = []
        for p in reversed(self.procs):
            if p.running():
                p.stop(timeout)
                stopped.append(p)
        return stopped

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "role": p.role,
                "node_id": p.node_id,
                "pid": p.pid,
                "address": p.address,
                "http": p.http,
                "state": "running" if p.running() else "stopped",
                "log": str(p.log_file),
            }
            for p in self.procs
        ]

    def restart(self, proc: ServiceProc, timeout: float = 30.0) -> None:
        """Start a stopped or killed process again with the same identity. mgmtd
        keeps its port: clients and nodes know it only by the address they were
        given."""
        if proc.role == "mgmtd" and proc.address and "--port" not in proc.args:
            proc.args = [*proc.args, "--port", proc.address.rpartition(":")[2]]
        proc.start(timeout)
        self._write_files()


def _port(proc: ServiceProc, *, http: bool = False) -> str:
    return (proc.http if http else proc.address).rpartition(":")[2]


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion, also when called from inside an event loop
    (async tests start clusters): then it runs on a loop of its own thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
