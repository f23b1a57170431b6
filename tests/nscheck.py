"""Whole-namespace consistency checks for crash tests, read straight from the KV
store (not through meta, so a meta bug cannot hide its own damage):

- no dangling dentry: every entry names an existing inode of the entry's type;
- no orphan inode: every inode but the root is named by a dentry, unless it is
  an unlinked file waiting for GC (nlink 0, queued or still open);
- a file's nlink equals the number of entries naming it, and a directory's
  `parent` is the directory holding its entry;
- the statfs counters equal the live inodes they count;
- no orphan chunk: once GC has drained, every chunk on storage belongs to an
  inode that exists.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import msgspec
from harness import list_chunks

from client import Client
from meta_service.dentries import DentryValue
from py3fs import ids
from py3fs.kv import keys
from py3fs.kv.base import Transaction, decode_counter, strinc
from py3fs.kv.registry import open_database
from py3fs.proto.messages import Inode, InodeType


@dataclass
class Namespace:
    inodes: dict[int, Inode]
    dentries: dict[tuple[int, str], DentryValue]
    gc_queued: set[int]
    open_sessions: set[int]
    counters: dict[str, int]


def _scan(tr: Transaction, prefix: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    begin, end = prefix, strinc(prefix)
    while True:
        batch = tr.get_range(begin, end, limit=10_000)
        out += batch
        if len(batch) < 10_000:
            return out
        begin = batch[-1][0] + b"\0"


def read_namespace(kv_url: str) -> Namespace:
    """One consistent snapshot of the namespace records."""
    inode_dec = msgspec.msgpack.Decoder(Inode)
    dent_dec = msgspec.msgpack.Decoder(DentryValue)
    db = open_database(kv_url)
    try:

        def fn(tr: Transaction) -> Namespace:
            nodes = {}
            for _, raw in _scan(tr, keys.INODE):
                node = inode_dec.decode(raw)
                nodes[node.inode] = node
            dents = {}
            for key, raw in _scan(tr, keys.DENTRY):
                raw_parent = key[len(keys.DENTRY) : len(keys.DENTRY) + 8]
                parent = int.from_bytes(raw_parent, "little")
                dents[(parent, keys.dentry_name(key))] = dent_dec.decode(raw)
            gcq = {keys.gc_inode(k) for k, _ in _scan(tr, keys.GC_QUEUE)}
            sess = {
                int.from_bytes(k[len(keys.SESSION) : len(keys.SESSION) + 8], "little")
                for k, _ in _scan(tr, keys.SESSION)
            }
            counters = {
                name: decode_counter(tr.get(keys.counter_key(name)))
                for name in ("inodes", "files", "directories")
            }
            return Namespace(nodes, dents, gcq, sess, counters)

        return db.run(fn, read_only=True)
    finally:
        db.close()


def check_namespace(kv_url: str) -> Namespace:
    """Raise AssertionError naming every inconsistency found; returns the
    snapshot it checked."""
    ns = read_namespace(kv_url)
    problems: list[str] = []
    links: Counter[int] = Counter()
    for (parent, name), d in ns.dentries.items():
        node = ns.inodes.get(d.inode)
        if node is None:
            problems.append(f"dangling dentry {parent}/{name!r} -> inode {d.inode}")
            continue
        links[d.inode] += 1
        if node.type != d.type:
            problems.append(
                f"dentry {parent}/{name!r} says {d.type}, inode {node.type}"
            )
        if node.type == InodeType.DIRECTORY and node.parent != parent:
            problems.append(
                f"directory {d.inode} ({name!r}) is in {parent} but says parent "
                f"{node.parent}"
            )
        if parent not in ns.inodes:
            problems.append(f"dentry {name!r} in missing directory {parent}")
    live: Counter[InodeType] = Counter()
    for ino, node in ns.inodes.items():
        if ino == ids.ROOT_INODE:
            live[node.type] += 1
            continue
        n = links[ino]
        if n == 0:
            waiting = node.type == InodeType.FILE and node.nlink == 0
            if not (waiting and (ino in ns.gc_queued or ino in ns.open_sessions)):
                problems.append(f"orphan inode {ino} ({node.type}, nlink {node.nlink})")
            continue
        live[node.type] += 1
        if node.type == InodeType.FILE and node.nlink != n:
            problems.append(f"file {ino} has nlink {node.nlink} but {n} entries")
    expect = {
        "inodes": sum(live.values()),
        "files": live[InodeType.FILE],
        "directories": live[InodeType.DIRECTORY],
    }
    if ns.counters != expect:
        problems.append(f"counters {ns.counters} != live inodes {expect}")
    assert not problems, "namespace damaged:\n  " + "\n  ".join(problems)
    return ns


async def wait_gc_drained(kv_url: str, timeout: float = 30.0) -> None:
    """Wait until meta's GC queue is empty (every removed file's chunks gone)."""
    deadline = time.monotonic() + timeout
    while (left := await asyncio.to_thread(read_namespace, kv_url)).gc_queued:
        if time.monotonic() > deadline:
            raise AssertionError(f"GC queue not drained: {sorted(left.gc_queued)}")
        await asyncio.sleep(0.2)


async def check_no_orphan_chunks(fs: Client, kv_url: str) -> int:
    """After GC drained, every chunk on every target belongs to an existing
    inode; returns the number of chunks seen."""
    await wait_gc_drained(kv_url)
    ns = await asyncio.to_thread(read_namespace, kv_url)
    view = await fs.routing.refresh(await fs.routing.get())
    seen = 0
    orphans = []
    for t in view.targets:
        for meta in await list_chunks(fs, view, t):
            seen += 1
            inode, index = ids.split_chunk_id(meta.chunk_id)
            if inode not in ns.inodes:
                orphans.append(f"target {t}: chunk {index} of missing inode {inode}")
    assert not orphans, "orphan chunks:\n  " + "\n  ".join(orphans[:20])
    return seen
