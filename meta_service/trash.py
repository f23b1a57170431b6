"""Meta's side of the trash (py3fs.trash): each user's trash directory is made
by meta (so nobody can plant one for another uid), and expired entries of
every user are deleted for good, as root."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meta_service.store import MetaStore
from py3fs import errors
from py3fs.proto.messages import InodeType, ListDirReq, MetaReq, MkdirReq, PathReq
from py3fs.trash import TRASH, expiry_of

logger = logging.getLogger(__name__)


def user_dir(store: MetaStore, who: MetaReq) -> str:
    """`/.trash/<uid>` of the caller, made 0700 and owned by it if missing
    (and `/.trash`, root's, sticky); refuses one that is not the caller's."""
    try:
        store.mkdir(MkdirReq(path=TRASH, mode=0o1777))
    except errors.AlreadyExists:
        pass
    path = f"{TRASH}/{who.uid}"
    try:
        store.mkdir(
            MkdirReq(path=path, mode=0o700, uid=who.uid, gid=who.gid, groups=who.groups)
        )
    except errors.AlreadyExists:
        pass
    node = store.stat(PathReq(path=path, follow=False))
    if node.uid != who.uid or node.mode & 0o077 or node.type != InodeType.DIRECTORY:
        raise errors.PermissionDenied(
            f"{path} is not a private directory of uid {who.uid}"
        )
    return path


def _names(store: MetaStore, path: str) -> list[tuple[str, InodeType]]:
    out: list[tuple[str, InodeType]] = []
    after = ""
    while True:
        reply = store.list_dir(ListDirReq(path=path, start_after=after, limit=1000))
        out += [(e.name, e.type) for e in reply.entries]
        if not reply.more or not reply.entries:
            return out
        after = reply.entries[-1].name


def _remove_tree(store: MetaStore, path: str) -> None:
    for name, typ in _names(store, path):
        child = f"{path}/{name}"
        if typ == InodeType.DIRECTORY:
            _remove_tree(store, child)
        else:
            store.unlink(PathReq(path=child, follow=False))
    store.rmdir(PathReq(path=path, follow=False))


def expire_once(store: MetaStore, now: float) -> int:
    """Delete every user's entries whose expiry has passed; returns how many."""
    n = 0
    try:
        users = _names(store, TRASH)
    except errors.NotFound:
        return 0  # nobody has removed anything yet
    for uid_dir, typ in users:
        if typ != InodeType.DIRECTORY:
            continue
        base = f"{TRASH}/{uid_dir}"
        for entry, _ in _names(store, base):
            expires = expiry_of(entry)
            if expires is not None and expires <= now:
                _remove_tree(store, f"{base}/{entry}")
                n += 1
    return n


async def expire_loop(
    store: MetaStore, interval: float, clock: Callable[[], float]
) -> None:
    """Every `interval` seconds, empty what expired. Several metas may race on
    an entry; the loser sees NotFound and the next pass goes on."""
    while True:
        await asyncio.sleep(interval)
        try:
            n = await asyncio.to_thread(expire_once, store, clock())
            if n:
                logger.info("trash: deleted %d expired entries", n)
        except errors.Py3fsError as exc:
            logger.info("trash pass: %s", exc)
        except Exception:
            logger.exception("trash pass failed unexpectedly")
