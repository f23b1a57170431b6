"""The write checksum is checked on every path (issue 11). Before, after one
write failed its checksum the chunk went down the chain whole, with a
checksum the head computed over the client's unchecked bytes: the next
corrupt payload was accepted on every replica."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import client_for, list_chunks, running_cluster

from py3fs import errors, ids, wire
from py3fs.cluster import LocalCluster
from py3fs.dataplane import DataClient

GOOD = bytes(range(256)) * 16  # 4 KiB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("crc")) as c:
        yield c


async def test_corrupt_payload_refused_after_a_checksum_failure(
    cluster: LocalCluster,
) -> None:
    async with client_for(cluster) as fs:
        await fs.write_file("/c", GOOD)
        node = await fs.stat("/c")
        assert node.layout is not None
        view = await fs.routing.refresh()
        chain = view.chain(node.layout.chains[0])
        cap = await fs.storage.cap(node.inode, True)
        cid = ids.chunk_id(node.inode, 0)
        dc = DataClient()
        try:
            for attempt in range(3):
                sent, claimed = b"X" * 100, b"Y" * 100  # bytes flipped in transit
                req = wire.WriteReq(
                    chain_id=chain.chain_id,
                    chain_ver=chain.version,
                    target_id=chain.targets[0],
                    chunk_id=cid,
                    offset=0,
                    chunk_size=node.layout.chunk_size,
                    data_crc=wire.crc32c(claimed),
                    client_id="flaky-nic",
                    request_id=100 + attempt,
                    cap=cap,
                )
                with pytest.raises(errors.ChecksumMismatch):
                    await dc.call(
                        view.target_address(chain.targets[0]),
                        wire.MsgType.WRITE,
                        req,
                        [sent],
                    )
        finally:
            await dc.aclose()
        assert await fs.read_file("/c") == GOOD
        crcs = set()
        for target in chain.targets:
            for m in await list_chunks(fs, view, target):
                if m.chunk_id == cid:
                    crcs.add((m.crc, m.length))
        assert len(crcs) == 1  # every replica holds the same chunk
        assert next(iter(crcs))[1] == len(GOOD)
