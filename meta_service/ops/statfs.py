"""statfs: namespace counts from the counters, capacity from storage's reports."""

from __future__ import annotations

from meta_service import inodes
from meta_service.ops.context import OpContext
from py3fs.kv.base import Transaction
from py3fs.proto.messages import MetaReq, StatFsReply


def stat_fs(tr: Transaction, ctx: OpContext, req: MetaReq) -> StatFsReply:
    used = free = total = 0
    view = ctx.routing()
    if view is not None:
        # Raw target bytes: every replica counts, since chains may differ in
        # their replication factor. Free and total belong to the filesystem, so
        # targets that share one count it once.
        seen: set[str] = set()
        for t in view.targets.values():
            used += t.used_bytes
            if t.device and t.device in seen:
                continue
            seen.add(t.device)
            free += t.free_bytes
            total += t.total_bytes
    return StatFsReply(
        inodes=inodes.read_counter(tr, inodes.INODES),
        files=inodes.read_counter(tr, inodes.FILES),
        directories=inodes.read_counter(tr, inodes.DIRECTORIES),
        used_bytes=used,
        free_bytes=free,
        total_bytes=total,
    )
