"""Network partitions, not crashes: every process of the cluster (3 etcd
members, 2 mgmtd, 2 meta, 3 storage) runs in a network namespace of its own, on
an address of its own (tests/netns.py), and nftables rules cut links while the
processes keep running. Clients run a register workload whose whole history
goes through the linearizability checker (tests/lincheck.py), plus, where meta
is the target, a namespace workload whose acknowledged results must survive.

Asserted in each: nothing acknowledged is lost (final reads after healing are
in the history); reads never go back in time and no two heads accept writes
for one chain (either would make the history non-linearizable); the namespace
in the KV store has no orphan or dangling entry afterwards.

Skips, with the reason, only where network namespaces cannot be made (not root,
or `ip`/`nft` missing)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fault_tools import (
    CLIENTS,
    HEARTBEAT_TIMEOUT,
    RegisterWorkload,
    all_serving,
    check_replicas,
    fresh_routing,
    node_down,
    storage_proc,
    wait_routing,
)
from harness import FAST, client_for
from lincheck import READ, Op, check
from netns import TEST, NetLab, unavailable_reason
from nscheck import check_namespace

from client import Client
from py3fs import errors, ids, wire
from py3fs.cluster import ClusterSpec, LocalCluster
from py3fs.etcd_local import find_etcd
from py3fs.proto.messages import Inode
from py3fs.routing import RoutingView

pytestmark = [
    pytest.mark.skipif(
        (why := unavailable_reason()) is not None, reason=f"partition lab: {why}"
    ),
    pytest.mark.skipif(find_etcd() is None, reason="etcd not installed"),
]

ETCD = ["etcd-1", "etcd-2", "etcd-3"]
MGMTD = ["mgmtd-1", "mgmtd-2"]
META = ["meta-11", "meta-12"]
STORAGE = ["storage-21", "storage-22", "storage-23"]
PEER_NS = "client-9"  # a client process of its own (partition_client.py)
PEER = Path(__file__).with_name("partition_client.py")


@contextmanager
def partitioned_cluster(data_dir: Path) -> Iterator[tuple[NetLab, LocalCluster]]:
    """The lab and a cluster on the etcd KV backend, every process in its own
    namespace; 2 s failure detection as in the other fault tests."""
    with NetLab() as lab:
        for name in [*ETCD, *MGMTD, *META, *STORAGE, PEER_NS]:
            lab.add(name)
        spec = ClusterSpec(
            data_dir=data_dir,
            kv="etcd",
            mgmtd=2,
            meta=2,
            storage=3,
            targets=1,
            replicas=3,
            chunk_size="256KiB",
            heartbeat_timeout=f"{HEARTBEAT_TIMEOUT}s",
            extra={
                "meta": FAST["meta"],
                "storage": ["--heartbeat-interval", "0.25s"],
            },
            net={name: list(lab.nodes[name]) for name in lab.nodes if name != PEER_NS},
        )
        cluster = LocalCluster(spec)
        try:
            cluster.up(timeout=90)
            yield lab, cluster
        finally:
            cluster.down(timeout=5)


def clients_for(cluster: LocalCluster, n: int = CLIENTS) -> list[Client]:
    # Short call timeouts: a cut link shows up as a timeout, not a refusal.
    return [client_for(cluster, call_timeout=3.0) for _ in range(n)]


def name_of_node(node_id: int) -> str:
    return f"storage-{node_id}"


async def run_workload(
    clients: list[Client], during: object, prefix: str = "/f", dump: Path | None = None
) -> RegisterWorkload:
    """Run the register workload around the coroutine `during` (which makes
    and heals the partition), then the final reads; check the history."""
    load = RegisterWorkload(clients, prefix)
    initial = await load.setup()
    tasks = [asyncio.create_task(load.worker(n)) for n in range(len(clients))]
    try:
        await asyncio.sleep(1.0)
        await during  # type: ignore[misc]
        healed = time.monotonic()
        await asyncio.sleep(1.0)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)
    await load.final_reads()
    assert load.done_after(healed) > 0, "no progress after healing"
    if dump is not None:  # the history, to study a failure
        dump.write_text(  # noqa: ASYNC240 (once, after the workload)
            "\n".join(
                json.dumps(
                    [
                        op.kind,
                        op.key,
                        op.value.decode().rstrip("."),
                        op.start,
                        op.end if op.end != math.inf else None,
                        op.client,
                    ]
                )
                for op in load.ops
            )
        )
    checked = check(load.ops, initial)
    reads = sum(op.kind == READ for op in load.ops)
    print(
        f"\n{checked} ops ({checked - reads} writes, {reads} reads, {load.failed} "
        f"failed) by {len(clients)} clients: linearizable"
    )
    return load


async def probe_old_head(
    fs: Client, view: RoutingView, node: Inode, data: bytes
) -> BaseException | None:
    """Write `data` over chunk 0 of `node` straight to the head of `view` (a
    routing view from before a partition), at that view's chain version, as a
    client with stale routing would. Returns the error, None if acknowledged."""
    assert node.layout is not None
    chain = view.chain(node.layout.chains[0])
    head = chain.targets[0]
    req = wire.WriteReq(
        chain_id=chain.chain_id,
        chain_ver=chain.version,
        target_id=head,
        chunk_id=ids.chunk_id(node.inode, 0),
        offset=0,
        chunk_size=node.layout.chunk_size,
        data_crc=wire.crc32c(data),
        client_id="stale-probe",
        request_id=1,
        cap=await fs.storage.cap(node.inode, True),  # refused for the lease only
    )
    try:
        reply, _ = await fs.storage._data.call(
            view.target_address(head), wire.MsgType.WRITE, req, [data], timeout=5.0
        )
    except errors.Py3fsError as exc:
        return exc
    assert not isinstance(reply, wire.WriteReply), f"old head acknowledged: {reply}"
    return None


async def test_isolated_head_storage_node(tmp_path: Path) -> None:
    """The chain's head loses mgmtd and its peers but the clients still reach
    it: it must stop serving (lease) while mgmtd moves the chain on, so no
    write lands on two heads and no read comes from the cut-off copy. A write
    sent straight to the old head with the old chain version is refused and
    never shows up, not even after the partition heals and the node resyncs."""
    with partitioned_cluster(tmp_path) as (lab, cluster):
        clients = clients_for(cluster)
        try:
            probe = b"P" * 64
            await clients[0].write_file("/probe", probe)
            node = await clients[0].stat("/probe")
            before = await fresh_routing(clients[0])
            (chain,) = before.chains.values()
            head = before.targets[chain.targets[0]].node_id
            refused: list[BaseException | None] = []

            async def partition() -> None:
                lab.isolate(name_of_node(head), keep=(TEST,))
                await wait_routing(clients[0], node_down(head), timeout=20)
                view = await fresh_routing(clients[0])
                new_head = view.targets[view.chains[chain.chain_id].targets[0]]
                assert new_head.node_id != head
                # Writes go on through the new head while the old one is cut
                # off; the old one, reachable by a stale client, takes none.
                await asyncio.sleep(HEARTBEAT_TIMEOUT)
                refused.append(
                    await probe_old_head(clients[0], before, node, b"X" * 64)
                )
                await asyncio.sleep(HEARTBEAT_TIMEOUT)
                lab.heal()
                await wait_routing(clients[0], all_serving, timeout=60)

            load = await run_workload(
                clients, partition(), dump=tmp_path / "history.jsonl"
            )
            assert load.failed < len(load.ops)
            print(f"  stale write to the old head refused: {refused[0]!r}")
            assert refused[0] is not None
            assert await check_replicas(clients[0]) > 0
            for c in clients:  # every replica, read by whichever clients pick
                assert await c.read_file("/probe") == probe
        finally:
            for c in clients:
                await c.aclose()


async def test_isolated_mgmtd_primary(tmp_path: Path) -> None:
    """The primary mgmtd is cut off from everyone (etcd included): the standby
    takes the lease and runs the cluster (it detects a storage kill and brings
    the node back), and the old primary does not come back as a second one."""
    with partitioned_cluster(tmp_path) as (lab, cluster):
        clients = clients_for(cluster)
        try:

            async def partition() -> None:
                lab.isolate("mgmtd-1")
                # The standby must now detect a failure on its own.
                view = await fresh_routing(clients[0])
                (chain,) = view.chains.values()
                tail = view.targets[chain.targets[-1]].node_id
                proc = storage_proc(cluster, tail)
                await asyncio.sleep(HEARTBEAT_TIMEOUT)
                proc.kill()
                await wait_routing(clients[0], node_down(tail), timeout=30)
                await asyncio.to_thread(cluster.restart, proc)
                await wait_routing(clients[0], all_serving, timeout=60)
                lab.heal()
                await asyncio.sleep(HEARTBEAT_TIMEOUT)
                await wait_routing(clients[0], all_serving, timeout=30)

            await run_workload(clients, partition())
            assert await check_replicas(clients[0]) > 0
        finally:
            for c in clients:
                await c.aclose()


class NamespaceWorkload:
    """Each client creates a file, writes it and renames it into place, over
    and over; acknowledged renames must all be there at the end."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.acked: dict[str, bytes] = {}
        self.failed = 0
        self.longest = 0.0  # seconds, of one create+write+rename
        self.stop = asyncio.Event()

    async def worker(self, n: int) -> None:
        fs = self.clients[n]
        i = 0
        while not self.stop.is_set():
            i += 1
            tmp, final = f"/ns/.c{n}-{i}", f"/ns/c{n}-{i}"
            data = f"{n}-{i}".encode() * 10
            start = time.monotonic()
            try:
                await fs.write_file(tmp, data)
                await fs.rename(tmp, final)
            except errors.Py3fsError:
                self.failed += 1
                continue
            finally:
                self.longest = max(self.longest, time.monotonic() - start)
            self.acked[final] = data

    async def verify(self, fs: Client) -> None:
        names = {e.name for e in await fs.listdir("/ns")}
        missing = [p for p in self.acked if p.rsplit("/", 1)[1] not in names]
        assert not missing, f"acknowledged renames lost: {missing[:5]}"
        for path, data in self.acked.items():
            assert await fs.read_file(path) == data, path


async def run_namespace_and_registers(
    cluster: LocalCluster, clients: list[Client], during: object
) -> NamespaceWorkload:
    await clients[0].mkdir("/ns")
    ns = NamespaceWorkload(clients)
    tasks = [asyncio.create_task(ns.worker(n)) for n in range(len(clients))]
    try:
        await run_workload(clients, during)
    finally:
        ns.stop.set()
        await asyncio.gather(*tasks)
    assert len(ns.acked) > 0
    await ns.verify(clients[0])
    await asyncio.to_thread(check_namespace, cluster.kv_url)
    return ns


async def test_meta_cut_off_from_kv(tmp_path: Path) -> None:
    """One meta loses every etcd member but still takes client requests: its
    transactions fail, clients retry on the other meta, and no half-done
    operation is left in the KV store."""
    with partitioned_cluster(tmp_path) as (lab, cluster):
        clients = clients_for(cluster)
        try:

            async def partition() -> None:
                for member in ETCD:
                    lab.cut("meta-11", member)
                await asyncio.sleep(4 * HEARTBEAT_TIMEOUT)
                lab.heal()

            ns = await run_namespace_and_registers(cluster, clients, partition())
            print(
                f"  {len(ns.acked)} renames acknowledged, {ns.failed} failed, "
                f"longest {ns.longest:.1f}s"
            )
            # Requests that reached the cut meta timed out (3 s) and were
            # retried on the other: the cut was felt, and absorbed.
            assert ns.longest >= 3.0
        finally:
            for c in clients:
                await c.aclose()


async def test_etcd_minority(tmp_path: Path) -> None:
    """The etcd leader is cut off from the other two members (a minority of
    one, still reachable by nobody): the majority elects a leader and the
    cluster goes on; nothing acknowledged is lost."""
    with partitioned_cluster(tmp_path) as (lab, cluster):
        clients = clients_for(cluster)
        try:
            [leader] = [m for m in cluster.etcd if m.is_leader()]

            async def partition() -> None:
                lab.isolate(leader.name)
                others = [m for m in cluster.etcd if m is not leader]
                async with asyncio.timeout(30):  # the majority elects a leader
                    while not any(
                        await asyncio.gather(
                            *(asyncio.to_thread(m.is_leader) for m in others)
                        )
                    ):
                        await asyncio.sleep(0.2)
                await asyncio.sleep(4 * HEARTBEAT_TIMEOUT)
                lab.heal()

            ns = await run_namespace_and_registers(cluster, clients, partition())
            print(
                f"  {len(ns.acked)} renames acknowledged, {ns.failed} failed, "
                f"longest {ns.longest:.1f}s"
            )
        finally:
            for c in clients:
                await c.aclose()


async def test_client_cut_off_mid_write(tmp_path: Path) -> None:
    """A client in a process and namespace of its own loses every storage node
    in the middle of its writes and gets them back 3 s later; its operations
    caught by the cut end late (retried) or with an error (a write's outcome
    is then unknown), while the test's clients go on.
    The merged history of all clients stays linearizable and the final reads
    show no acknowledged write lost."""
    with partitioned_cluster(tmp_path) as (lab, cluster):
        clients = clients_for(cluster)
        try:
            load = RegisterWorkload(clients)
            initial = await load.setup()
            stop, out = tmp_path / "stop", tmp_path / "peer.jsonl"
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
            peer = await asyncio.create_subprocess_exec(
                *("ip", "netns", "exec", lab.netns(PEER_NS), sys.executable),
                *(str(PEER), str(cluster.cluster_file), load.prefix, "9"),
                *(str(stop), str(out)),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            tasks = [asyncio.create_task(load.worker(n)) for n in range(CLIENTS)]
            try:
                running = Path(f"{stop}.running")
                async with asyncio.timeout(60):
                    while not await asyncio.to_thread(running.exists):
                        assert peer.returncode is None, "cut client exited early"
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                for s in STORAGE:
                    lab.cut(PEER_NS, s)
                cut = time.monotonic()
                await asyncio.sleep(3.0)
                lab.heal()
                healed = time.monotonic()
                await asyncio.sleep(2.0)
            finally:
                stop.touch()
                got, err = await asyncio.wait_for(peer.communicate(), 60)
                load.stop.set()
                await asyncio.gather(*tasks)
            assert peer.returncode == 0, err.decode()[-3000:]
            await load.final_reads()
            lines = [json.loads(x) for x in out.read_text().splitlines()]
            theirs = [
                Op(
                    kind,
                    key,
                    bytes.fromhex(v),
                    start,
                    math.inf if end is None else end,
                    9,
                )
                for kind, key, v, start, end in lines
                if kind != "error"
            ]
            errs = [(start, end) for kind, _, _, start, end in lines if kind == "error"]
            spans = [(op.start, op.end) for op in theirs] + errs
            caught = [(s, e) for s, e in spans if s < healed and e > cut]
            assert caught, f"the cut caught no op of the cut client: {got!r}"
            assert any(op.start > healed for op in theirs), "cut client never resumed"
            assert any(cut < op.end < healed for op in load.ops), "others stalled"
            checked = check(load.ops + theirs, initial)
            print(
                f"\n{checked} ops linearizable; cut client: {len(theirs)} ops, "
                f"{len(caught)} caught by the cut ({got.decode().strip()}): "
                + ", ".join(f"{e - s:.2f}s" for s, e in caught)
            )
        finally:
            for c in clients:
                await c.aclose()
