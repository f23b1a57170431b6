"""A whole py3fs cluster on one machine: the launcher behind `py3fs cluster`.

Everything lives under one data directory:

    DIR/cluster.toml     what clients need ([client] mgmt = [...])
    DIR/cluster.json     the launcher's record of its processes (for status and down)
    DIR/kv.db            the embedded KV store (default backend)
    DIR/storage-<id>/    storage targets
    DIR/run/             ready files and one log per process

Processes run in their own sessions, so they outlive the command that started them.
Node ids: mgmtd 1, meta 11, 12, ..., storage 21, 22, ... (targets <node>01...).
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

from py3fs import errors
from py3fs.mgmt_client import MgmtClient
from py3fs.procs import ServiceProc

MGMT_NODE = 1
META_BASE = 11
STORAGE_BASE = 21
T = TypeVar("T")


@dataclass
class ClusterSpec:
    data_dir: Path
    meta: int = 2
    storage: int = 3
    targets: int = 4
    replicas: int = 3
    kv: str = ""  # default: sqlite under data_dir
    fsync: bool = True
    heartbeat_timeout: str = "10s"
    chunk_size: str = "4MiB"
    # Extra command-line arguments per role ("mgmtd", "meta", "storage").
    extra: dict[str, list[str]] = field(default_factory=dict)

    def kv_url(self) -> str:
        return self.kv or f"sqlite://{(self.data_dir / 'kv.db').resolve()}"


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.data_dir = spec.data_dir.resolve()
        self.run_dir = self.data_dir / "run"
        self.mgmtd: ServiceProc | None = None
        self.metas: list[ServiceProc] = []
        self.storages: list[ServiceProc] = []

    # ------------------------------------------------------------- files

    @property
    def cluster_file(self) -> Path:
        return self.data_dir / "cluster.toml"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "cluster.json"

    @property
    def procs(self) -> list[ServiceProc]:
        return [p for p in [self.mgmtd, *self.metas, *self.storages] if p is not None]

    @property
    def mgmt_addresses(self) -> list[str]:
        return [self.mgmtd.address] if self.mgmtd and self.mgmtd.address else []

    def _write_files(self) -> None:
        mgmt = ", ".join(f'"{a}"' for a in self.mgmt_addresses)
        self.cluster_file.write_text(
            "# Written by `py3fs cluster up`; clients read [client].\n"
            f"[client]\nmgmt = [{mgmt}]\n"
        )
        state = {
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
                    "address": p.address,
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
            proc = ServiceProc(
                role=rec["role"],
                node_id=rec["node_id"],
                module=rec["module"],
                args=rec["args"],
                run_dir=cluster.run_dir,
                pid=rec["pid"],
                address=rec["address"],
            )
            if proc.role == "mgmtd":
                cluster.mgmtd = proc
            elif proc.role == "meta":
                cluster.metas.append(proc)
            else:
                cluster.storages.append(proc)
        return cluster

    # ------------------------------------------------------------ lifecycle

    def _plan(self) -> None:
        spec = self.spec
        kv = spec.kv_url()
        extra = spec.extra
        self.mgmtd = ServiceProc(
            "mgmtd",
            MGMT_NODE,
            "mgmt_service",
            [
                "--kv",
                kv,
                "--node-id",
                str(MGMT_NODE),
                "--heartbeat-timeout",
                spec.heartbeat_timeout,
                *extra.get("mgmtd", []),
            ],
            self.run_dir,
        )
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

    def _bind_mgmt(self) -> None:
        """Fill in the arguments that need mgmtd's address, known once it is up."""
        spec = self.spec
        mgmt = ",".join(self.mgmt_addresses)
        for p in self.metas:
            p.args = [
                "--kv",
                spec.kv_url(),
                "--mgmt",
                mgmt,
                "--node-id",
                str(p.node_id),
                "--chunk-size",
                spec.chunk_size,
                *spec.extra.get("meta", []),
            ]
        for p in self.storages:
            p.args = [
                "--mgmt",
                mgmt,
                "--node-id",
                str(p.node_id),
                "--data-dir",
                str(self.data_dir / f"storage-{p.node_id}"),
                "--targets",
                str(spec.targets),
                "--fsync" if spec.fsync else "--no-fsync",
                *spec.extra.get("storage", []),
            ]

    def running(self) -> list[ServiceProc]:
        return [p for p in self.procs if p.running()]

    def up(self, timeout: float = 60.0) -> None:
        """Start every process and the chain table; returns when clients can work.
        On failure, stops whatever it started and raises with the failing log."""
        if self.state_file.exists():
            old = LocalCluster.load(self.data_dir)
            if alive := old.running():
                names = ", ".join(f"{p.name} (pid {p.pid})" for p in alive)
                raise errors.AlreadyExists(
                    f"a cluster is already running in {self.data_dir}: {names}"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._plan()
        try:
            assert self.mgmtd is not None
            self.mgmtd.start(timeout)
            self._bind_mgmt()
            others = [*self.storages, *self.metas]
            for p in others:
                p.spawn()
            for p in others:
                p.wait_ready(timeout)
            self._write_files()
            _run_sync(self._create_chains(timeout))
        except BaseException:
            self.down()
            raise

    async def _create_chains(self, timeout: float) -> None:
        mgmt = MgmtClient(self.mgmt_addresses)
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
                "state": "running" if p.running() else "stopped",
                "log": str(p.log_file),
            }
            for p in self.procs
        ]

    def restart(self, proc: ServiceProc, timeout: float = 30.0) -> None:
        """Start a stopped or killed process again with the same identity."""
        proc.start(timeout)
        self._write_files()


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion, also when called from inside an event loop
    (async tests start clusters): then it runs on a loop of its own thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
