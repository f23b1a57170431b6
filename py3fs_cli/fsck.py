"""`py3fs fsck`: check the namespace against the chunks storage holds.

Everything goes through the client layer (namespace walk through meta, chunk
listings and reads through the data plane), so it checks a live cluster:

- dangling entries: a name whose inode is gone (repair: remove the name);
- orphan chunks: chunks whose inode no longer exists, not even in the GC queue
  (repair: remove them through their chain's head, as meta's GC does);
- lengths: a file whose chunks hold data past its recorded length (repair: set
  the length to what storage holds, as meta does for an expired write session);
- scrub (`--scrub`): every replica of every chunk is read with checksums
  verified. Storage repairs a corrupt replica from a good one when a read finds
  it; `--repair` waits until a re-read of each corrupt replica is clean.

Files open for writing may show a length mismatch that is not one yet: run
fsck on a quiet cluster, or without `--repair` first.
"""

from __future__ import annotations

import asyncio
import itertools
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TypeVar

from client import Client
from py3fs import caps, errors, ids, wire
from py3fs.proto.messages import Inode, InodeType
from py3fs.routing import RoutingView

T = TypeVar("T")

REPAIR_WAIT = 30.0  # seconds a corrupt replica may take to be repaired


@dataclass
class Problem:
    kind: str  # dangling | orphan | length | corrupt
    what: str
    detail: str
    repaired: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "what": self.what,
            "detail": self.detail,
            "repaired": self.repaired,
        }


@dataclass
class Report:
    files: int = 0
    directories: int = 0
    chunks: int = 0
    replicas_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return all(p.repaired for p in self.problems)


# (target, chunk id) -> ChunkMeta, and inode -> its chunks' ids
Chunks = dict[tuple[int, bytes], wire.ChunkMeta]


async def list_chunks(
    fs: Client, view: RoutingView, keys: caps.Keys | None = None
) -> Chunks:
    out: Chunks = {}
    for target in sorted(view.targets):
        try:
            address = view.target_address(target)
        except errors.RoutingUnavailable:
            continue
        if not view.nodes[view.targets[target].node_id].up:
            continue
        body, _ = await fs.storage.call(
            address,
            wire.MsgType.LIST_CHUNKS,
            _signed(keys, wire.ListChunksReq(target_id=target)),
        )
        assert isinstance(body, wire.ListChunksReply)
        for meta in body.chunks:
            out[(target, meta.chunk_id)] = meta
    return out


async def walk(
    fs: Client, report: Report, repair: bool
) -> dict[int, tuple[Inode, str]]:
    """Every inode reachable from the root, by id, with a path to it; dangling
    names reported (and removed with `repair`)."""
    found: dict[int, tuple[Inode, str]] = {}
    root = await fs.stat("/")
    found[root.inode] = (root, "/")
    report.directories += 1
    stack = ["/"]
    while stack:
        path = stack.pop()
        async for entry in fs.iterdir(path):
            child = posixpath.join(path, entry.name)
            try:
                node = await fs.stat(child, follow=False)
            except errors.NotFound:
                problem = Problem(
                    "dangling", child, f"names inode {entry.inode}, which is gone"
                )
                if repair:
                    await _remove_name(fs, child, entry.type)
                    problem.repaired = True
                report.problems.append(problem)
                continue
            if node.inode in found:
                continue  # a hard link seen before
            found[node.inode] = (node, child)
            if node.type == InodeType.DIRECTORY:
                report.directories += 1
                stack.append(child)
            elif node.type == InodeType.FILE:
                report.files += 1
    return found


async def _remove_name(fs: Client, path: str, kind: InodeType) -> None:
    if kind == InodeType.DIRECTORY:
        await fs.rmdir(path)
    else:
        await fs.unlink(path)


async def _exists(fs: Client, inode: int) -> bool:
    try:
        await fs.stat_inode(inode)
    except errors.NotFound:
        return False
    return True


async def check_orphans(
    fs: Client, view: RoutingView, chunks: Chunks, known: set[int], report: Report
) -> dict[int, set[int]]:
    """Report chunks of inodes that are gone; returns the chains each orphan
    inode has chunks on (for the repair)."""
    by_inode: dict[int, set[int]] = defaultdict(set)
    for target, cid in chunks:
        inode, _ = ids.split_chunk_id(cid)
        if inode not in known:
            by_inode[inode].add(target)
    orphans: dict[int, set[int]] = {}
    for inode, targets in sorted(by_inode.items()):
        # Unlinked but still open, or queued for GC: meta still knows it.
        if await _exists(fs, inode):
            continue
        prefix = ids.inode_prefix(inode)
        count = sum(1 for t, c in chunks if t in targets and c.startswith(prefix))
        report.problems.append(
            Problem(
                "orphan",
                f"inode {inode}",
                f"{count} chunk replica(s) on targets {sorted(targets)}, no inode",
            )
        )
        orphans[inode] = {
            c.chain_id for c in view.chains.values() if set(c.targets) & targets
        }
    return orphans


def _signed(keys: caps.Keys | None, body: T) -> T:
    """`body` with the node signature storage wants for removes and for reads
    of chunks no capability covers (orphans); unsigned without the secret,
    which a cluster that checks nothing accepts."""
    return body if keys is None else keys.sign(body)


async def remove_orphans(
    fs: Client,
    view: RoutingView,
    orphans: dict[int, set[int]],
    report: Report,
    keys: caps.Keys | None = None,
) -> None:
    request_ids = itertools.count(1)
    todo = {f"inode {i}": chains for i, chains in orphans.items()}
    for problem in report.problems:
        if problem.kind != "orphan" or problem.what not in todo:
            continue
        inode = int(problem.what.split()[1])
        for chain_id in sorted(todo[problem.what]):
            head = view.head(chain_id)
            req = wire.RemoveReq(
                chain_id=chain_id,
                chain_ver=view.chain(chain_id).version,
                target_id=head,
                inodes=[inode],
                client_id=f"fsck-{fs.client_id}",
                request_id=next(request_ids),
            )
            await fs.storage.call(
                view.target_address(head), wire.MsgType.REMOVE, _signed(keys, req)
            )
        problem.repaired = True


async def check_lengths(
    fs: Client,
    found: dict[int, tuple[Inode, str]],
    chunks: Chunks,
    report: Report,
    repair: bool,
) -> None:
    ends: dict[int, int] = {}
    for (_target, cid), meta in chunks.items():
        inode, index = ids.split_chunk_id(cid)
        node = found[inode][0] if inode in found else None
        if node is None or node.layout is None or not meta.length:
            continue
        end = index * node.layout.chunk_size + meta.length
        ends[inode] = max(ends.get(inode, 0), end)
    for inode, end in sorted(ends.items()):
        node, path = found[inode]
        if end <= node.length:
            continue
        problem = Problem(
            "length", path, f"recorded length {node.length}, storage holds {end} bytes"
        )
        if repair:
            await fs.setattr(path, length=end)
            problem.repaired = True
        report.problems.append(problem)


async def scrub(
    fs: Client,
    view: RoutingView,
    chunks: Chunks,
    report: Report,
    repair: bool,
    keys: caps.Keys | None = None,
) -> None:
    async def read(target: int, meta: wire.ChunkMeta) -> int:
        io = wire.ReadIO(
            target_id=target, chunk_id=meta.chunk_id, offset=0, length=meta.length
        )
        body, _ = await fs.storage.call(
            view.target_address(target),
            wire.MsgType.READ,
            _signed(keys, wire.ReadReq(ios=[io])),
        )
        assert isinstance(body, wire.ReadReply)
        return body.results[0].code

    corrupt = []
    for (target, _cid), meta in sorted(chunks.items()):
        if view.targets[target].state != "serving":
            continue
        report.replicas_read += 1
        if await read(target, meta) == errors.ChecksumMismatch.code:
            corrupt.append((target, meta))
    for target, meta in corrupt:
        inode, index = ids.split_chunk_id(meta.chunk_id)
        problem = Problem(
            "corrupt",
            f"inode {inode} chunk {index} on target {target}",
            "checksum mismatch",
        )
        if repair:
            deadline = asyncio.get_running_loop().time() + REPAIR_WAIT
            while await read(target, meta) == errors.ChecksumMismatch.code:
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
            else:
                problem.repaired = True
        report.problems.append(problem)


async def fsck(
    fs: Client,
    *,
    repair: bool = False,
    do_scrub: bool = False,
    keys: caps.Keys | None = None,
) -> Report:
    report = Report()
    view = await fs.mgmt.routing()
    found = await walk(fs, report, repair)
    chunks = await list_chunks(fs, view, keys)
    report.chunks = len({cid for _, cid in chunks})
    orphans = await check_orphans(fs, view, chunks, set(found), report)
    if repair and orphans:
        await remove_orphans(fs, view, orphans, report, keys)
    await check_lengths(fs, found, chunks, report, repair)
    if do_scrub:
        await scrub(fs, view, chunks, report, repair, keys)
    return report
