"""Capabilities on the data plane (issue 11), against a real cluster.

Attacks a user could make with the layout `StatInode` hands out, straight to
storage: a READ of another user's 0600 file, a WRITE to the head without a
capability, a forged WRITE to the tail posing as a chain forward, a REMOVE of
another user's chunks. On the code before capabilities each one was served
(the READ returned root's bytes, the REMOVE left root reading zeros, the forged
forward left the replicas holding different data); now each is refused with
PermissionDenied and every replica still holds root's bytes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from harness import add_user, client_for, list_chunks, running_cluster

from client import Client, ClientConfig
from py3fs import caps, errors, ids, wire
from py3fs.cluster import LocalCluster
from py3fs.dataplane import DataClient
from py3fs.proto.messages import CapReq, CloseReq, Inode, OpenReq

SECRET = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("caps")) as c:
        yield c


@pytest.fixture
async def dc() -> AsyncIterator[DataClient]:
    client = DataClient()
    try:
        yield client
    finally:
        await client.aclose()


async def secret_file(cluster: LocalCluster, name: str) -> Inode:
    async with client_for(cluster) as root:
        await root.write_file(name, SECRET)
        await root.chmod(name, 0o600)
        return await root.stat(name)


async def assert_intact(cluster: LocalCluster, node: Inode, name: str) -> None:
    """Root still reads its bytes, and every replica of chunk 0 agrees."""
    async with client_for(cluster) as root:
        assert await root.read_file(name) == SECRET
        view = await root.routing.get()
        assert node.layout is not None
        chain = view.chain(node.layout.chains[0])
        cid = ids.chunk_id(node.inode, 0)
        metas = []
        for target in chain.targets:
            metas += [
                m for m in await list_chunks(root, view, target) if m.chunk_id == cid
            ]
        assert len(metas) == len(chain.targets)
        assert len({(m.crc, m.length, m.committed_ver) for m in metas}) == 1


def user(cluster: LocalCluster, token: str) -> Client:
    return Client(ClientConfig(mgmt=cluster.mgmt_addresses, token=token))


async def test_stat_inode_then_direct_read_refused(
    cluster: LocalCluster, dc: DataClient
) -> None:
    node = await secret_file(cluster, "/r-secret")
    async with user(cluster, add_user(cluster, "mallory", 2000)) as mallory:
        # The capability meta would give is refused: no read permission.
        with pytest.raises(errors.PermissionDenied):
            await mallory.storage.cap(node.inode, False)
        # Mallory's own file gives her a genuine capability, for another inode.
        async with client_for(cluster) as root:
            await root.mkdir("/pub", mode=0o777)
        await mallory.write_file("/pub/mine", b"m")
        mine = await mallory.stat("/pub/mine")
        own_cap = await mallory.storage.cap(mine.inode, False)
        # Meta no longer shows her the layout (test_meta_reads); the chains
        # are few, so she could still guess: storage must refuse on its own.
        assert (await mallory.stat_inode(node.inode)).layout is None
        assert node.layout is not None
        view = await mallory.routing.get()
        chain = view.chain(node.layout.chains[0])
        io = wire.ReadIO(
            target_id=chain.targets[-1],
            chunk_id=ids.chunk_id(node.inode, 0),
            offset=0,
            length=len(SECRET),
            chain_id=chain.chain_id,
            chain_ver=chain.version,
        )
        forged = caps.Keys(b"guess").issue(node.inode, False)
        for cap_list in ([], [own_cap], [forged], [own_cap[:-1] + b"\0"]):
            with pytest.raises(errors.PermissionDenied):
                await dc.call(
                    view.target_address(io.target_id),
                    wire.MsgType.READ,
                    wire.ReadReq([io], caps=cap_list),
                )
    await assert_intact(cluster, node, "/r-secret")


async def test_write_without_capability_and_forged_forward_refused(
    cluster: LocalCluster, dc: DataClient
) -> None:
    node = await secret_file(cluster, "/w-secret")
    assert node.layout is not None
    async with client_for(cluster) as root:
        view = await root.routing.get()
        read_cap = await root.storage.cap(node.inode, False)
    chain = view.chain(node.layout.chains[0])
    evil = b"EVIL" * 1024
    base = {
        "chain_id": chain.chain_id,
        "chain_ver": chain.version,
        "chunk_id": ids.chunk_id(node.inode, 0),
        "offset": 0,
        "chunk_size": node.layout.chunk_size,
        "data_crc": wire.crc32c(evil),
        "client_id": "mallory",
        "request_id": 1,
    }
    attacks = [
        # To the head, as a client, with no capability or a read-only one.
        wire.WriteReq(target_id=chain.targets[0], **base),
        wire.WriteReq(target_id=chain.targets[0], cap=read_cap, **base),
        # To the tail, posing as the predecessor's forward (and as a repair).
        wire.WriteReq(target_id=chain.targets[-1], update_ver=99, **base),
        wire.WriteReq(
            target_id=chain.targets[-1], update_ver=99, auth=b"x" * 16, **base
        ),
        wire.WriteReq(target_id=chain.targets[-1], repair=True, update_ver=99, **base),
    ]
    for req in attacks:
        with pytest.raises(errors.PermissionDenied):
            await dc.call(
                view.target_address(req.target_id), wire.MsgType.WRITE, req, [evil]
            )
    await assert_intact(cluster, node, "/w-secret")


async def test_remove_and_resync_only_from_services(
    cluster: LocalCluster, dc: DataClient
) -> None:
    node = await secret_file(cluster, "/rm-secret")
    assert node.layout is not None
    async with client_for(cluster) as root:
        view = await root.routing.get()
    chain = view.chain(node.layout.chains[0])
    for target in chain.targets:
        reqs: list[wire.Body] = [
            wire.RemoveReq(
                chain_id=chain.chain_id,
                chain_ver=chain.version,
                target_id=target,
                inodes=[node.inode],
                client_id="mallory",
                request_id=7,
            ),
            wire.SyncDoneReq(
                chain_id=chain.chain_id, chain_ver=chain.version, target_id=target
            ),
        ]
        for req, mtype in zip(
            reqs, [wire.MsgType.REMOVE, wire.MsgType.SYNC_DONE], strict=False
        ):
            with pytest.raises(errors.PermissionDenied):
                await dc.call(view.target_address(target), mtype, req)
        sync = wire.SyncChunkReq(
            chain_id=chain.chain_id,
            chain_ver=chain.version,
            target_id=target,
            chunk_id=ids.chunk_id(node.inode, 0),
            remove=True,
        )
        with pytest.raises(errors.PermissionDenied):
            await dc.call(view.target_address(target), wire.MsgType.SYNC_CHUNK, sync)
    await assert_intact(cluster, node, "/rm-secret")


async def test_gc_still_removes_with_node_signature(cluster: LocalCluster) -> None:
    """Meta's GC signs its removes: unlinking a file still frees its chunks."""
    async with client_for(cluster) as root:
        await root.write_file("/gone", b"g" * 4096)
        node = await root.stat("/gone")
        assert node.layout is not None
        view = await root.routing.get()
        target = view.chain(node.layout.chains[0]).targets[0]
        await root.unlink("/gone")
        cid = ids.chunk_id(node.inode, 0)
        for _ in range(100):
            chunks = await list_chunks(root, view, target)
            if all(c.chunk_id != cid for c in chunks):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("GC did not remove the unlinked file's chunk")


async def test_open_hands_out_the_capability(cluster: LocalCluster) -> None:
    """Open's reply carries the capability an open may have (so a create and
    its first write cost no Capability call), and only that one: read for a
    read open, write for a write open, none without the read bit."""
    async with client_for(cluster) as root:
        await root.mkdir("/capopen", mode=0o777)
        calls: list[tuple[int, bool]] = []
        ask = root.storage.capability
        assert ask is not None

        async def counted(inode: int, write: bool) -> tuple[bytes, float]:
            calls.append((inode, write))
            return await ask(inode, write)

        root.storage.capability = counted
        await root.write_file("/capopen/f", b"data")
        assert await root.read_file("/capopen/f") == b"data"
        assert calls == []
        keys = caps.Keys.load(str(cluster.secret_file))
        assert keys is not None
        node = await root.stat("/capopen/f")
        reply = await root.meta.open(OpenReq(path="/capopen/f", flags=os.O_RDONLY))
        keys.check(reply.cap, node.inode, write=False)
        with pytest.raises(errors.PermissionDenied):
            keys.check(reply.cap, node.inode, write=True)
        reply = await root.meta.open(OpenReq(path="/capopen/f", flags=os.O_WRONLY))
        keys.check(reply.cap, node.inode, write=True)
        await root.meta.close(CloseReq(inode=node.inode, session_id=reply.session_id))
        await root.chmod("/capopen/f", 0o622)
    async with user(cluster, add_user(cluster, "wonly", 2100)) as wonly:
        # Writable but not readable: a write capability would also read.
        reply = await wonly.meta.open(OpenReq(path="/capopen/f", flags=os.O_WRONLY))
        assert reply.cap == b""
        await wonly.meta.close(
            CloseReq(inode=reply.inode.inode, session_id=reply.session_id)
        )


async def test_capability_covers_only_its_chunk_range(
    cluster: LocalCluster, dc: DataClient
) -> None:
    """A capability names a chunk range: one for chunk 0 of a two-chunk file
    reads chunk 0 and is refused chunk 1 (and a write there)."""
    async with client_for(cluster) as root:
        await root.mkdir("/ranged", mode=0o777)
        data = bytes(range(256)) * (2 * 4096)  # 2 MiB: two 1 MiB chunks
        async with await root.open("/ranged/two", "wb", chunk_size=1 << 20) as f:
            await f.write(data)
        node = await root.stat("/ranged/two")
        view = await root.routing.get()
        narrow = await root.meta.capability(
            CapReq(inode=node.inode, write=True, first_chunk=0, end_chunk=1)
        )
        with pytest.raises(errors.InvalidArgument):
            await root.meta.capability(
                CapReq(inode=node.inode, first_chunk=2, end_chunk=1)
            )
    assert node.layout is not None
    chunk = node.layout.chunk_size

    def read_io(index: int) -> wire.ReadIO:
        chain = view.chain(node.layout.chains[index % len(node.layout.chains)])
        return wire.ReadIO(
            target_id=chain.targets[-1],
            chunk_id=ids.chunk_id(node.inode, index),
            offset=0,
            length=chunk,
            chain_id=chain.chain_id,
            chain_ver=chain.version,
        )

    first = read_io(0)
    reply, payload = await dc.call(
        view.target_address(first.target_id),
        wire.MsgType.READ,
        wire.ReadReq([first], caps=[narrow.cap]),
    )
    assert isinstance(reply, wire.ReadReply)
    assert reply.results[0].code == 0
    assert bytes(payload or b"") == data[:chunk]
    second = read_io(1)
    with pytest.raises(errors.PermissionDenied, match="does not cover"):
        await dc.call(
            view.target_address(second.target_id),
            wire.MsgType.READ,
            wire.ReadReq([second], caps=[narrow.cap]),
        )
    chain = view.chain(second.chain_id)
    evil = b"E" * 16
    write = wire.WriteReq(
        chain_id=chain.chain_id,
        chain_ver=chain.version,
        target_id=chain.targets[0],
        chunk_id=second.chunk_id,
        offset=0,
        chunk_size=chunk,
        data_crc=wire.crc32c(evil),
        client_id="ranged",
        request_id=1,
        cap=narrow.cap,
    )
    with pytest.raises(errors.PermissionDenied, match="does not cover"):
        await dc.call(
            view.target_address(write.target_id), wire.MsgType.WRITE, write, [evil]
        )
    async with client_for(cluster) as root:
        assert await root.read_file("/ranged/two") == data
