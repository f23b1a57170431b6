"""Storage service against real processes: mgmtd + 3 storage nodes, 3 replicas."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from py3fs import errors, ids, wire
from py3fs.dataplane import DataClient
from py3fs.mgmt_client import MgmtClient
from py3fs.procs import ServiceProc
from py3fs.proto.messages import ChainInfo
from py3fs.routing import RoutingView
from storage_service.chunk_format import content_digest

M = wire.MsgType
CS = 4 << 20  # chunk size: 4 MiB
NODES = (21, 22, 23)


@dataclass
class Cluster:
    mgmt: str
    storage: list[ServiceProc]


async def _make_chains(mgmt: str) -> None:
    client = MgmtClient([mgmt])
    try:
        await client.create_chain_table(3)
        for _ in range(200):
            view = await client.routing()
            if view.chains and all(
                len(view.serving_targets(c)) == 3 for c in view.chains
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("chains never became serving")
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("storage")
    mgmtd = ServiceProc(
        role="mgmtd",
        node_id=1,
        module="mgmt_service",
        args=["--kv", f"sqlite:///{tmp}/kv.db"],
        run_dir=tmp,
    )
    procs = [mgmtd]
    try:
        mgmtd.start()
        for node in NODES:
            proc = ServiceProc(
                role="storage",
                node_id=node,
                module="storage_service",
                args=[
                    *("--mgmt", mgmtd.address, "--node-id", str(node)),
                    *("--data-dir", str(tmp / f"storage-{node}"), "--targets", "4"),
                    *("--heartbeat-interval", "200ms"),
                ],
                run_dir=tmp,
            )
            procs.append(proc)
            proc.spawn()
        for proc in procs[1:]:
            proc.wait_ready()
        asyncio.run(_make_chains(mgmtd.address))
        yield Cluster(mgmtd.address, procs[1:])
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=5)


@pytest.fixture
async def dc() -> AsyncIterator[DataClient]:
    client = DataClient()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def view(cluster: Cluster) -> RoutingView:
    client = MgmtClient([cluster.mgmt])
    try:
        return await client.routing()
    finally:
        await client.aclose()


def chain_n(view: RoutingView, n: int) -> ChainInfo:
    return view.chains[sorted(view.chains)[n]]


_rids = iter(range(1, 1 << 30))


async def write(
    dc: DataClient,
    view: RoutingView,
    chain: ChainInfo,
    cid: bytes,
    offset: int,
    data: bytes,
    *,
    request_id: int | None = None,
    chain_ver: int | None = None,
    target: int | None = None,
    sync: bool = False,
) -> wire.WriteReply:
    head = view.head(chain.chain_id) if target is None else target
    req = wire.WriteReq(
        chain_id=chain.chain_id,
        chain_ver=chain.version if chain_ver is None else chain_ver,
        target_id=head,
        chunk_id=cid,
        offset=offset,
        chunk_size=CS,
        data_crc=wire.crc32c(data),
        client_id="test",
        request_id=next(_rids) if request_id is None else request_id,
        sync=sync,
    )
    body, _ = await dc.call(view.target_address(head), M.WRITE, req, [data])
    assert isinstance(body, wire.WriteReply)
    return body


async def read(
    dc: DataClient, view: RoutingView, target: int, cid: bytes, offset: int = 0
) -> tuple[wire.ReadResult, bytes]:
    req = wire.ReadReq(ios=[wire.ReadIO(target, cid, offset, CS)])
    body, data = await dc.call(view.target_address(target), M.READ, req)
    assert isinstance(body, wire.ReadReply)
    return body.results[0], bytes(data or b"")


async def list_chunks(
    dc: DataClient, view: RoutingView, target: int, inode: int = 0
) -> list[wire.ChunkMeta]:
    body, _ = await dc.call(
        view.target_address(target), M.LIST_CHUNKS, wire.ListChunksReq(target, inode)
    )
    assert isinstance(body, wire.ListChunksReply)
    return body.chunks


async def replicas_agree(
    dc: DataClient, view: RoutingView, chain: ChainInfo, inode: int
) -> list[wire.ChunkMeta]:
    lists = [await list_chunks(dc, view, t, inode) for t in chain.targets]
    assert all(lst == lists[0] for lst in lists), lists
    return lists[0]


async def test_write_replicates_to_every_target(
    dc: DataClient, view: RoutingView
) -> None:
    assert len(view.chains) == 4  # 3 nodes x 4 targets / 3 replicas
    for n in range(4):
        chain = chain_n(view, n)
        assert len({view.targets[t].node_id for t in chain.targets}) == 3
        cid = ids.chunk_id(1000 + n, 0)
        data = bytes([n]) * CS
        reply = await write(dc, view, chain, cid, 0, data)
        assert (reply.chunk_ver, reply.length, reply.crc) == (
            1,
            CS,
            content_digest(data),
        )
        for target in chain.targets:
            result, got = await read(dc, view, target, cid)
            assert (result.code, result.length, result.chunk_ver) == (0, CS, 1)
            assert got == data
        metas = await replicas_agree(dc, view, chain, 1000 + n)
        assert [(m.chunk_id, m.committed_ver, m.crc) for m in metas] == [
            (cid, 1, reply.crc)
        ]


async def test_partial_overwrite_and_gap(dc: DataClient, view: RoutingView) -> None:
    chain = chain_n(view, 1)
    cid = ids.chunk_id(2000, 3)
    await write(dc, view, chain, cid, 0, b"a" * 100)
    await write(dc, view, chain, cid, 10, b"B" * 5)
    reply = await write(dc, view, chain, cid, 200, b"z")
    expected = b"a" * 10 + b"B" * 5 + b"a" * 85 + b"\0" * 100 + b"z"
    assert (reply.chunk_ver, reply.length) == (3, len(expected))
    for target in chain.targets:
        result, got = await read(dc, view, target, cid)
        assert got == expected
        assert result.chunk_ver == 3
        result, got = await read(dc, view, target, cid, offset=195)
        assert got == b"\0" * 5 + b"z"
    assert (await replicas_agree(dc, view, chain, 2000))[0].crc == content_digest(
        expected
    )


async def test_concurrent_writes_serialize(dc: DataClient, view: RoutingView) -> None:
    chain = chain_n(view, 2)
    cid = ids.chunk_id(3000, 0)
    payloads = [bytes([65 + i]) * 65536 for i in range(8)]
    replies = await asyncio.gather(
        *(write(dc, view, chain, cid, 0, p) for p in payloads)
    )
    assert sorted(r.chunk_ver for r in replies) == list(range(1, 9))
    last = max(replies, key=lambda r: r.chunk_ver)
    final = payloads[replies.index(last)]
    for target in chain.targets:
        result, got = await read(dc, view, target, cid)
        assert (got, result.chunk_ver) == (final, 8)
    await replicas_agree(dc, view, chain, 3000)


async def test_retried_write_applies_once(dc: DataClient, view: RoutingView) -> None:
    chain = chain_n(view, 0)
    cid = ids.chunk_id(4000, 0)
    first = await write(dc, view, chain, cid, 0, b"x" * 10, request_id=777)
    again = await write(dc, view, chain, cid, 0, b"x" * 10, request_id=777)
    assert first == again
    assert first.chunk_ver == 1
    assert (await list_chunks(dc, view, chain.targets[-1], 4000))[0].committed_ver == 1


async def test_stale_routing_is_refused(dc: DataClient, view: RoutingView) -> None:
    chain = chain_n(view, 0)
    cid = ids.chunk_id(4001, 0)
    with pytest.raises(errors.ChainVersionMismatch):
        await write(dc, view, chain, cid, 0, b"x", chain_ver=chain.version + 5)
    with pytest.raises(errors.ChainVersionMismatch):
        await write(dc, view, chain, cid, 0, b"x", chain_ver=chain.version - 1)
    with pytest.raises(errors.TargetNotServing):
        await write(dc, view, chain, cid, 0, b"x", target=chain.targets[1])
    with pytest.raises(errors.ChunkTooLarge):
        await write(dc, view, chain, cid, CS - 1, b"xy")
    head = view.head(chain.chain_id)
    bad_crc = wire.WriteReq(chain.chain_id, chain.version, head, cid, 0, CS, 1, "t", 1)
    with pytest.raises(errors.ChecksumMismatch):
        await dc.call(view.target_address(head), M.WRITE, bad_crc, [b"abc"])
    for target in chain.targets:
        assert await list_chunks(dc, view, target, 4001) == []


async def test_head_repairs_diverged_replicas(
    dc: DataClient, view: RoutingView
) -> None:
    """A successor holding a version the head never committed (an update that
    failed on its way back) is overwritten by a full-chunk replace."""
    chain = chain_n(view, 1)
    cid = ids.chunk_id(4500, 0)
    await write(dc, view, chain, cid, 0, b"a" * 64)
    middle = chain.targets[1]
    stray = wire.WriteReq(
        chain.chain_id,
        chain.version,
        middle,
        cid,
        0,
        CS,
        wire.crc32c(b"EVIL"),
        "other",
        1,
        update_ver=2,
    )
    body, _ = await dc.call(view.target_address(middle), M.WRITE, stray, [b"EVIL"])
    assert isinstance(body, wire.WriteReply)
    assert body.chunk_ver == 2
    reply = await write(dc, view, chain, cid, 8, b"good")
    expected = b"a" * 8 + b"good" + b"a" * 52
    assert (reply.chunk_ver, reply.crc) == (3, content_digest(expected))
    for target in chain.targets:
        result, got = await read(dc, view, target, cid)
        assert (result.chunk_ver, got) == (3, expected)
    await replicas_agree(dc, view, chain, 4500)


async def test_batch_read_results(dc: DataClient, view: RoutingView) -> None:
    chain = chain_n(view, 3)
    cid = ids.chunk_id(5000, 0)
    await write(dc, view, chain, cid, 0, b"0123456789")
    tail = chain.targets[-1]
    ios = [
        wire.ReadIO(tail, cid, 2, 3),
        wire.ReadIO(tail, ids.chunk_id(5000, 1), 0, 100),  # missing: a hole
        wire.ReadIO(tail, cid, 8, 100),  # short
        wire.ReadIO(tail, cid, 50, 10),  # past the end
        wire.ReadIO(99999, cid, 0, 10),  # not on this node
        wire.ReadIO(tail, cid, 0, 4, chain.chain_id, chain.version),
    ]
    body, data = await dc.call(view.target_address(tail), M.READ, wire.ReadReq(ios))
    assert isinstance(body, wire.ReadReply)
    codes = [(r.code, r.length) for r in body.results]
    assert codes == [
        (0, 3),
        (errors.ChunkNotFound.code, 0),
        (0, 2),
        (0, 0),
        (errors.TargetNotServing.code, 0),
        (0, 4),
    ]
    assert bytes(data or b"") == b"234" + b"89" + b"0123"


async def test_remove_inodes_everywhere(dc: DataClient, view: RoutingView) -> None:
    # One REMOVE per chain takes a batch of inodes (GC's batches).
    inodes = [6000, 6001]
    for inode in inodes:
        for n in range(4):
            chain = chain_n(view, n)
            for index in range(n, 12, 4):
                await write(dc, view, chain, ids.chunk_id(inode, index), 0, b"r" * 9)
    keep = 6002
    await write(dc, view, chain_n(view, 0), ids.chunk_id(keep, 0), 0, b"k")
    for n in range(4):
        chain = chain_n(view, n)
        head = view.head(chain.chain_id)
        req = wire.RemoveReq(chain.chain_id, chain.version, head, inodes, "t", 1)
        body, _ = await dc.call(view.target_address(head), M.REMOVE, req)
        assert body == wire.RemoveReply(removed=6)
        body, _ = await dc.call(view.target_address(head), M.REMOVE, req)
        assert body == wire.RemoveReply(removed=0)
        for target in chain.targets:
            for inode in inodes:
                assert await list_chunks(dc, view, target, inode) == []
                result, _ = await read(dc, view, target, ids.chunk_id(inode, n))
                assert result.code == errors.ChunkNotFound.code
    for target in chain_n(view, 0).targets:
        assert len(await list_chunks(dc, view, target, keep)) == 1


async def test_target_stats(dc: DataClient, view: RoutingView) -> None:
    chain = chain_n(view, 0)
    await write(dc, view, chain, ids.chunk_id(7000, 0), 0, b"s" * 4096)
    tail = chain.targets[-1]
    body, _ = await dc.call(
        view.target_address(tail), M.TARGET_STATS, wire.TargetStatsReq()
    )
    assert isinstance(body, wire.TargetStatsReply)
    node = view.targets[tail].node_id
    assert [s.target_id for s in body.targets] == [node * 100 + i for i in range(1, 5)]
    stat = next(s for s in body.targets if s.target_id == tail)
    metas = await list_chunks(dc, view, tail)
    assert stat.chunk_count == len(metas) >= 1
    assert stat.used_bytes == sum(m.length for m in metas)
    assert stat.total_bytes >= stat.free_bytes > 0


async def test_flush_puts_acked_writes_on_disk(
    dc: DataClient, view: RoutingView
) -> None:
    """Writes are acknowledged from memory (no --fsync); FLUSH flushes the chunks
    written since the last one, on the targets named, and only those."""
    chain = chain_n(view, 2)
    for i in range(3):
        await write(dc, view, chain, ids.chunk_id(8500, i), 0, b"x" * 100)
    counts = []
    for _ in range(2):
        for target in chain.targets:
            body, _ = await dc.call(
                view.target_address(target), M.FLUSH, wire.FlushReq([target])
            )
            assert isinstance(body, wire.FlushReply)
            counts.append(body.chunks)
    # Earlier tests' writes to this chain count too.
    assert all(n >= 3 for n in counts[:3])
    assert counts[3:] == [0, 0, 0]


async def flush_counts(
    dc: DataClient, view: RoutingView, chain: ChainInfo
) -> list[int]:
    counts = []
    for target in chain.targets:
        body, _ = await dc.call(
            view.target_address(target), M.FLUSH, wire.FlushReq([target])
        )
        assert isinstance(body, wire.FlushReply)
        counts.append(body.chunks)
    return counts


async def test_sync_write_is_on_disk_on_every_replica_when_acked(
    dc: DataClient, view: RoutingView
) -> None:
    """A write with `sync` is flushed by every replica before the head answers:
    a FLUSH right after finds nothing of it left, where a plain write leaves
    its chunk to flush on every replica."""
    chain = chain_n(view, 3)
    await flush_counts(dc, view, chain)  # earlier tests' writes
    await write(dc, view, chain, ids.chunk_id(8550, 0), 0, b"x" * 100)
    assert await flush_counts(dc, view, chain) == [1, 1, 1]
    cid = ids.chunk_id(8551, 0)
    await write(dc, view, chain, cid, 0, b"s" * 100, sync=True)
    await write(dc, view, chain, cid, 100, b"t" * 50, sync=True)  # an append
    await write(dc, view, chain, cid, 10, b"u" * 5, sync=True)  # an overwrite
    assert await flush_counts(dc, view, chain) == [0, 0, 0]
    for target in chain.targets:
        result, data = await read(dc, view, target, cid)
        assert result.code == 0
        assert data == b"s" * 10 + b"u" * 5 + b"s" * 85 + b"t" * 50


async def test_read_asking_too_much_is_refused_before_allocating(
    dc: DataClient, view: RoutingView
) -> None:
    chain = chain_n(view, 0)
    tail = chain.targets[-1]
    cid = ids.chunk_id(8600, 0)
    await write(dc, view, chain, cid, 0, b"small")
    # 20 ios of one chunk, each announcing 64 MiB: a tiny frame asking 1.3 GB.
    io = wire.ReadIO(tail, cid, 0, 64 << 20, chain.chain_id, chain.version)
    with pytest.raises(errors.FrameTooLarge):
        await dc.call(view.target_address(tail), M.READ, wire.ReadReq([io] * 20))
    _, got = await read(dc, view, tail, cid)
    assert got == b"small"


# ---------------------------------------------------------------- bad input


def _raw(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _recv_reply_or_close(sock: socket.socket) -> int | None:
    """The type of the reply frame, or None if the server closed the connection."""
    buf = b""
    while len(buf) < wire.HEADER_SIZE:
        chunk = sock.recv(wire.HEADER_SIZE - len(buf))
        if not chunk:
            return None
        buf += chunk
    return int(wire.HEADER.unpack(buf)[3])


def _header(mtype: int, body: bytes, plen: int = 0, blen: int | None = None) -> bytes:
    return wire.HEADER.pack(
        wire.MAGIC,
        wire.VERSION,
        0,
        mtype,
        1,
        len(body) if blen is None else blen,
        plen,
        wire.crc32c(body),
    )


def _bad_input_cases() -> dict[str, tuple[bytes, bool]]:
    ping = b"\x80"  # msgpack of an empty map: the Ping body
    return {
        "garbage": (b"\x00garbage-bytes-not-a-frame" * 4, False),
        "bad magic": (b"XXXX" + _header(2, ping)[4:] + ping, False),
        "truncated": (_header(2, ping)[:10], True),
        "unknown type": (_header(999, ping) + ping, False),
        "huge body": (_header(2, ping, blen=1 << 31), False),
        "huge payload": (_header(10, ping, plen=1 << 31) + ping, False),
        "bad body crc": (_header(2, ping)[:-4] + struct.pack("<I", 1) + ping, False),
        "undecodable body": (_header(12, b"\xc1") + b"\xc1", False),
    }


@pytest.mark.parametrize("case", list(_bad_input_cases()))
async def test_bad_input_does_not_hurt_the_server(
    cluster: Cluster, dc: DataClient, view: RoutingView, case: str
) -> None:
    chain = chain_n(view, 0)
    tail = chain.targets[-1]
    address = view.target_address(tail)
    cid = ids.chunk_id(8000, 0)
    await write(dc, view, chain, cid, 0, b"survivor")
    raw, close_early = _bad_input_cases()[case]

    def attack() -> int | None:
        with _raw(address) as sock:
            sock.sendall(raw)
            if close_early:
                sock.shutdown(socket.SHUT_WR)
            return _recv_reply_or_close(sock)

    reply_type = await asyncio.to_thread(attack)
    assert reply_type in (None, int(M.ERROR))
    body, _ = await dc.call(address, M.PING, wire.Ping())
    assert isinstance(body, wire.Ping)
    result, got = await read(dc, view, tail, cid)
    assert (result.code, got) == (0, b"survivor")
    assert all(proc.running() for proc in cluster.storage)


async def test_unknown_type_keeps_connection(view: RoutingView) -> None:
    """An unknown type is answered and the same connection goes on serving."""
    address = view.target_address(chain_n(view, 0).targets[0])
    ping = b"\x80"

    def exchange() -> tuple[int | None, int | None]:
        with _raw(address) as sock:
            sock.sendall(_header(999, ping) + ping)
            first = _recv_reply_or_close(sock)
            sock.recv(65536)  # the rest of the error frame
            sock.sendall(_header(int(M.PING), ping) + ping)
            return first, _recv_reply_or_close(sock)

    assert await asyncio.to_thread(exchange) == (int(M.ERROR), int(M.PONG))


def test_storage_directories(cluster: Cluster, tmp_path: Path) -> None:
    run_dir = cluster.storage[0].run_dir
    targets = sorted(p.name for p in (run_dir / "storage-21").iterdir())
    assert targets == [f"target-{2100 + i}" for i in range(1, 5)]
