"""Namespace ops against a real sqlite store, no processes (meta_service.store)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import msgspec
import pytest

from meta_service import gc, inodes
from meta_service.id_alloc import IdAllocator
from meta_service.ops.context import OpContext
from meta_service.store import MetaStore
from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.sqlite import SqliteDatabase
from py3fs.proto.messages import (
    ChainInfo,
    ChainTable,
    CloseReq,
    DirLayout,
    InodeType,
    LinkReq,
    ListDirReq,
    MetaReq,
    MkdirReq,
    MknodReq,
    NodeInfo,
    OpenReq,
    PathReq,
    RenameReq,
    RoutingInfo,
    SetAttrReq,
    SymlinkReq,
    SyncReq,
    TargetInfo,
)
from py3fs.routing import RoutingView

CREATE = os.O_CREAT | os.O_WRONLY


def make_routing() -> RoutingView:
    nodes = [
        NodeInfo(node_id=n, role="storage", address=f"127.0.0.1:{n}") for n in (1, 2)
    ]
    targets = [
        TargetInfo(target_id=t, node_id=1 + t % 2, used_bytes=10, total_bytes=100)
        for t in range(100, 108)
    ]
    chains = [
        ChainInfo(chain_id=c, version=1, targets=[98 + 2 * c, 99 + 2 * c])
        for c in (1, 2, 3, 4)
    ]
    return RoutingView(
        RoutingInfo(
            version=3,
            nodes=nodes,
            targets=targets,
            chains=chains,
            tables=[ChainTable(table_id=1, version=2, chains=[1, 2, 3, 4])],
        )
    )


@pytest.fixture
def store(tmp_path: Path):
    db = SqliteDatabase(str(tmp_path / "meta.db"))
    view = make_routing()
    s = MetaStore(db, OpContext(routing=lambda: view), IdAllocator(db, batch=100))
    s.ensure_root()
    yield s
    db.close()


def create(store: MetaStore, path: str, **kw):
    reply = store.open(OpenReq(path=path, flags=CREATE, **kw))
    if reply.session_id:
        store.close(CloseReq(inode=reply.inode.inode, session_id=reply.session_id))
    return reply.inode


def names(store: MetaStore, path: str) -> list[str]:
    return [e.name for e in store.list_dir(ListDirReq(path=path)).entries]


def test_root_exists(store: MetaStore) -> None:
    root = store.stat(PathReq(path="/"))
    assert root.inode == 1
    assert root.type == InodeType.DIRECTORY
    assert root.mode == 0o755


def test_nested_mkdir(store: MetaStore) -> None:
    with pytest.raises(errors.NotFound):
        store.mkdir(MkdirReq(path="/a/b/c"))
    leaf = store.mkdir(MkdirReq(path="/a/b/c", parents=True))
    assert store.stat(PathReq(path="/a/b/c")).inode == leaf.inode
    again = store.mkdir(MkdirReq(path="/a/b/c", parents=True))
    assert again.inode == leaf.inode
    with pytest.raises(errors.AlreadyExists):
        store.mkdir(MkdirReq(path="/a/b"))
    b = store.stat(PathReq(path="/a/b"))
    assert leaf.parent == b.inode
    assert names(store, "/a") == ["b"]
    create(store, "/a/f")
    with pytest.raises(errors.AlreadyExists):
        store.mkdir(MkdirReq(path="/a/f", parents=True))
    with pytest.raises(errors.NotADirectory):
        store.mkdir(MkdirReq(path="/a/f/x", parents=True))


def test_create_layout_and_open(store: MetaStore) -> None:
    node = create(store, "/f", chunk_size=1 << 20, stripe=2)
    assert node.type == InodeType.FILE
    assert node.layout is not None
    assert node.layout.chunk_size == 1 << 20
    assert node.layout.table_version == 2
    assert len(node.layout.chains) == 2
    assert set(node.layout.chains) <= {1, 2, 3, 4}
    full = create(store, "/g")
    assert full.layout is not None
    assert sorted(full.layout.chains) == [1, 2, 3, 4]
    assert full.layout.chunk_size == 4 << 20
    with pytest.raises(errors.AlreadyExists):
        store.open(OpenReq(path="/f", flags=CREATE | os.O_EXCL))
    with pytest.raises(errors.NotFound):
        store.open(OpenReq(path="/nope"))
    with pytest.raises(errors.IsADirectory):
        store.open(OpenReq(path="/", flags=os.O_WRONLY))
    assert store.open(OpenReq(path="/f")).session_id == ""


def test_close_length_and_truncate(store: MetaStore) -> None:
    reply = store.open(OpenReq(path="/f", flags=CREATE))
    ino = reply.inode.inode
    assert store.sync(SyncReq(inode=ino, length=100)).length == 100
    store.close(CloseReq(inode=ino, session_id=reply.session_id, length=4096))
    assert store.stat(PathReq(path="/f")).length == 4096
    r2 = store.open(OpenReq(path="/f", flags=os.O_WRONLY))
    store.close(CloseReq(inode=ino, session_id=r2.session_id, length=10))
    assert store.stat(PathReq(path="/f")).length == 4096  # max, never shrinks
    r3 = store.open(OpenReq(path="/f", flags=os.O_WRONLY | os.O_TRUNC))
    assert r3.inode.length == 0
    store.close(CloseReq(inode=ino, session_id=r3.session_id))
    node = store.set_attr(SetAttrReq(path="/f", length=123))
    assert node.length == 123


def test_listdir_1000_files_paged(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/d"))
    want = sorted(f"file{i:04d}" for i in range(1000))
    for name in want:
        create(store, f"/d/{name}")
    got, start, pages = [], "", 0
    while True:
        reply = store.list_dir(ListDirReq(path="/d", start_after=start, limit=100))
        pages += 1
        got += [e.name for e in reply.entries]
        assert all(e.type == InodeType.FILE for e in reply.entries)
        if not reply.more:
            break
        start = reply.entries[-1].name
    assert got == want
    assert pages == 10
    with pytest.raises(errors.NotADirectory):
        store.list_dir(ListDirReq(path="/d/file0000"))


def test_rename_cases(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/x/y/z", parents=True))
    store.mkdir(MkdirReq(path="/other"))
    f = create(store, "/x/f")
    # across directories
    store.rename(RenameReq(src="/x/f", dst="/other/g"))
    assert store.stat(PathReq(path="/other/g")).inode == f.inode
    with pytest.raises(errors.NotFound):
        store.stat(PathReq(path="/x/f"))
    # replace an existing file: the old one loses its last link
    victim = create(store, "/other/h")
    store.rename(RenameReq(src="/other/g", dst="/other/h"))
    assert store.stat(PathReq(path="/other/h")).inode == f.inode
    gone = store.db.run(lambda tr: inodes.load(tr, victim.inode))
    assert gone is not None
    assert gone.nlink == 0
    queued = store.db.run(lambda tr: tr.get_range(*keys.gc_range(2**62)))
    assert [keys.gc_inode(k) for k, _ in queued] == [victim.inode]
    # a directory into its own subtree
    with pytest.raises(errors.InvalidArgument):
        store.rename(RenameReq(src="/x", dst="/x/y/z/w"))
    with pytest.raises(errors.InvalidArgument):
        store.rename(RenameReq(src="/x", dst="/x/w"))
    # type mismatches and non-empty destinations
    with pytest.raises(errors.IsADirectory):
        store.rename(RenameReq(src="/other/h", dst="/x"))
    with pytest.raises(errors.NotADirectory):
        store.rename(RenameReq(src="/x", dst="/other/h"))
    with pytest.raises(errors.NotEmpty):
        store.rename(RenameReq(src="/other", dst="/x"))
    # a directory over an empty directory; its parent pointer follows
    store.mkdir(MkdirReq(path="/empty"))
    moved = store.stat(PathReq(path="/x/y"))
    store.rename(RenameReq(src="/x/y", dst="/empty"))
    after = store.stat(PathReq(path="/empty"))
    assert after.inode == moved.inode
    assert after.parent == 1
    assert names(store, "/empty") == ["z"]
    assert names(store, "/x") == []
    # renaming onto itself is a no-op
    store.rename(RenameReq(src="/other/h", dst="/other/h"))
    assert store.stat(PathReq(path="/other/h")).inode == f.inode


def test_unlink_rmdir(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/d"))
    f = create(store, "/d/f")
    with pytest.raises(errors.NotEmpty) as exc:
        store.rmdir(PathReq(path="/d"))
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(errors.NotADirectory):
        store.rmdir(PathReq(path="/d/f"))
    with pytest.raises(errors.IsADirectory):
        store.unlink(PathReq(path="/d"))
    store.unlink(PathReq(path="/d/f"))
    with pytest.raises(errors.NotFound):
        store.unlink(PathReq(path="/d/f"))
    store.rmdir(PathReq(path="/d"))
    with pytest.raises(errors.NotFound):
        store.stat(PathReq(path="/d"))
    # the unlinked file waits in the GC queue with its layout
    claimed = store.db.run(lambda tr: gc.claim(tr, 2**62, 10, 2**62 + 5))
    assert [n.inode for n in claimed] == [f.inode]
    store.db.run(lambda tr: gc.finish(tr, [f.inode], 2**62 + 5))
    assert store.db.run(lambda tr: inodes.load(tr, f.inode)) is None
    assert store.db.run(lambda tr: tr.get_range(*keys.gc_range(2**63))) == []


def test_unlink_while_open_defers_gc(store: MetaStore) -> None:
    reply = store.open(OpenReq(path="/f", flags=CREATE))
    store.unlink(PathReq(path="/f"))
    assert store.db.run(lambda tr: tr.get_range(*keys.gc_range(2**62))) == []
    store.close(
        CloseReq(inode=reply.inode.inode, session_id=reply.session_id, length=5)
    )
    queued = store.db.run(lambda tr: tr.get_range(*keys.gc_range(2**62)))
    assert [keys.gc_inode(k) for k, _ in queued] == [reply.inode.inode]


def test_symlink_readlink(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/real/sub", parents=True))
    create(store, "/real/sub/f")
    store.symlink(SymlinkReq(path="/abs", target="/real"))
    store.symlink(SymlinkReq(path="/real/rel", target="sub/f"))
    assert store.readlink(PathReq(path="/abs")).target == "/real"
    assert store.stat(PathReq(path="/abs", follow=False)).type == InodeType.SYMLINK
    assert store.stat(PathReq(path="/abs")).type == InodeType.DIRECTORY
    f = store.stat(PathReq(path="/real/sub/f"))
    assert store.stat(PathReq(path="/abs/sub/f")).inode == f.inode
    assert store.stat(PathReq(path="/abs/rel")).inode == f.inode
    assert names(store, "/abs") == ["rel", "sub"]
    with pytest.raises(errors.InvalidArgument):
        store.readlink(PathReq(path="/real"))
    store.symlink(SymlinkReq(path="/loop1", target="/loop2"))
    store.symlink(SymlinkReq(path="/loop2", target="/loop1"))
    with pytest.raises(errors.InvalidArgument) as exc:
        store.stat(PathReq(path="/loop1"))
    assert exc.value.errno == errno.ELOOP
    # unlink removes the link, not its target
    store.unlink(PathReq(path="/abs"))
    assert store.stat(PathReq(path="/real")).type == InodeType.DIRECTORY


def test_hard_links(store: MetaStore) -> None:
    f = create(store, "/f")
    store.mkdir(MkdirReq(path="/d"))
    assert store.link(LinkReq(src="/f", dst="/d/g")).nlink == 2
    assert store.link(LinkReq(src="/f", dst="/h")).nlink == 3
    assert store.stat(PathReq(path="/d/g")).inode == f.inode
    with pytest.raises(errors.AlreadyExists):
        store.link(LinkReq(src="/f", dst="/h"))
    with pytest.raises(errors.OperationNotPermitted) as exc:
        store.link(LinkReq(src="/d", dst="/d2"))
    assert exc.value.errno == errno.EPERM
    store.unlink(PathReq(path="/f"))
    assert store.stat(PathReq(path="/h")).nlink == 2
    # renaming one link onto another of the same inode changes nothing
    store.rename(RenameReq(src="/h", dst="/d/g"))
    assert store.stat(PathReq(path="/h")).nlink == 2
    store.unlink(PathReq(path="/h"))
    store.unlink(PathReq(path="/d/g"))
    queued = store.db.run(lambda tr: tr.get_range(*keys.gc_range(2**62)))
    assert [keys.gc_inode(k) for k, _ in queued] == [f.inode]


@pytest.mark.parametrize(
    ("name", "exc", "code"),
    [
        ("", errors.InvalidArgument, errno.EINVAL),
        ("a\0b", errors.InvalidArgument, errno.EINVAL),
        ("x" * 256, errors.NameTooLong, errno.ENAMETOOLONG),
        ("é" * 128, errors.NameTooLong, errno.ENAMETOOLONG),
    ],
)
def test_invalid_names(store: MetaStore, name: str, exc: type, code: int) -> None:
    path = "/d/" + name if name else "/"
    store.mkdir(MkdirReq(path="/d"))
    for op in (
        lambda: store.mkdir(MkdirReq(path=path)),
        lambda: store.open(OpenReq(path=path, flags=CREATE)),
        lambda: store.symlink(SymlinkReq(path=path, target="/d")),
    ):
        with pytest.raises(exc) as info:
            op()
        assert info.value.errno == code


def test_name_limits_ok(store: MetaStore) -> None:
    with pytest.raises(errors.InvalidArgument):
        store.mkdir(MkdirReq(path="/.."))
    with pytest.raises(errors.InvalidArgument):
        store.rename(RenameReq(src="/", dst="/x"))
    name = "é" * 127  # 254 bytes
    create(store, "/" + name)
    assert names(store, "/") == [name]
    with pytest.raises(errors.InvalidArgument):
        store.mkdir(MkdirReq(path="relative"))  # relative needs an `at`


def test_permissions_non_root(store: MetaStore) -> None:
    alice = {"uid": 1000, "gid": 1000}
    bob = {"uid": 1001, "gid": 1001}
    with pytest.raises(errors.PermissionDenied) as exc:
        store.mkdir(MkdirReq(path="/a", **alice))  # / is 0755 root
    assert exc.value.errno == errno.EACCES
    store.mkdir(MkdirReq(path="/home", mode=0o777))
    store.mkdir(MkdirReq(path="/home/alice", mode=0o700, **alice))
    f = store.open(OpenReq(path="/home/alice/f", flags=CREATE, mode=0o600, **alice))
    assert f.inode.uid == 1000
    # bob cannot search alice's 0700 directory
    with pytest.raises(errors.PermissionDenied):
        store.stat(PathReq(path="/home/alice/f", **bob))
    with pytest.raises(errors.PermissionDenied):
        store.list_dir(ListDirReq(path="/home/alice", **bob))
    store.set_attr(SetAttrReq(path="/home/alice", mode=0o755, **alice))
    assert store.stat(PathReq(path="/home/alice/f", **bob)).inode == f.inode.inode
    with pytest.raises(errors.PermissionDenied):
        store.open(OpenReq(path="/home/alice/f", **bob))  # 0600
    with pytest.raises(errors.PermissionDenied):
        store.unlink(PathReq(path="/home/alice/f", **bob))  # dir 0755
    with pytest.raises(errors.OperationNotPermitted):
        store.set_attr(SetAttrReq(path="/home/alice/f", mode=0o666, **bob))
    with pytest.raises(errors.OperationNotPermitted):
        store.set_attr(SetAttrReq(path="/home/alice/f", uid_new=1001, **alice))
    assert store.open(
        OpenReq(path="/home/alice/f", flags=os.O_RDWR, **alice)
    ).session_id
    # root bypasses the mode bits
    store.unlink(PathReq(path="/home/alice/f"))


def test_idempotent_retries(store: MetaStore) -> None:
    ident = {"client_id": "c1"}
    first = store.mkdir(MkdirReq(path="/d", request_id=1, **ident))
    assert store.mkdir(MkdirReq(path="/d", request_id=1, **ident)) == first
    with pytest.raises(errors.AlreadyExists):
        store.mkdir(MkdirReq(path="/d", request_id=2, **ident))
    create(store, "/d/f")
    store.rename(RenameReq(src="/d/f", dst="/d/g", request_id=3, **ident))
    store.rename(RenameReq(src="/d/f", dst="/d/g", request_id=3, **ident))
    assert names(store, "/d") == ["g"]
    store.unlink(PathReq(path="/d/g", request_id=4, **ident))
    store.unlink(PathReq(path="/d/g", request_id=4, **ident))
    with pytest.raises(errors.NotFound):
        store.unlink(PathReq(path="/d/g", request_id=5, **ident))
    # same request id from another client is another request
    with pytest.raises(errors.AlreadyExists):
        store.mkdir(MkdirReq(path="/d", request_id=1, client_id="c2"))
    opened = store.open(OpenReq(path="/d/h", flags=CREATE, request_id=6, **ident))
    again = store.open(OpenReq(path="/d/h", flags=CREATE, request_id=6, **ident))
    assert again == opened
    assert store.stat_fs(MetaReq()).files == 1


def test_retry_of_an_applied_request_changes_nothing(store: MetaStore) -> None:
    """A retry that would succeed again (the name was made anew meanwhile)
    gets the first reply and leaves the namespace as it is: the second run
    is cancelled with its transaction."""
    ident = {"client_id": "c1"}
    store.mkdir(MkdirReq(path="/d"))
    create(store, "/d/f")
    first = store.unlink(PathReq(path="/d/f", request_id=7, **ident))
    again = create(store, "/d/f")
    assert store.unlink(PathReq(path="/d/f", request_id=7, **ident)) == first
    assert store.stat(PathReq(path="/d/f")).inode == again.inode
    assert store.stat_fs(MetaReq()).files == 1
    # the id of one method is refused for another, before or after its run
    with pytest.raises(errors.InvalidArgument):
        store.rmdir(PathReq(path="/d", request_id=7, **ident))
    with pytest.raises(errors.InvalidArgument):
        store.mkdir(MkdirReq(path="/e", request_id=7, **ident))
    assert names(store, "/") == ["d"]


def test_statfs_counts(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/a/b", parents=True))
    create(store, "/a/f")
    store.symlink(SymlinkReq(path="/s", target="/a"))
    fs = store.stat_fs(MetaReq())
    assert (fs.inodes, fs.files, fs.directories) == (5, 1, 3)
    assert fs.used_bytes == 80
    assert fs.total_bytes == 800
    store.unlink(PathReq(path="/a/f"))
    store.rmdir(PathReq(path="/a/b"))
    store.unlink(PathReq(path="/s"))
    fs = store.stat_fs(MetaReq())
    assert (fs.inodes, fs.files, fs.directories) == (2, 0, 2)


def test_taken_names_are_refused_and_leave_nothing(store: MetaStore) -> None:
    """mkdir, mknod, symlink and link onto a taken name (a file, a directory)
    fail with AlreadyExists; the existing entries, the link count and the
    counters stay as they were."""
    store.mkdir(MkdirReq(path="/d"))
    f = create(store, "/f")
    before = store.stat_fs(MetaReq())
    for path in ("/d", "/f"):
        with pytest.raises(errors.AlreadyExists):
            store.mkdir(MkdirReq(path=path))
        with pytest.raises(errors.AlreadyExists):
            store.mknod(MknodReq(path=path, type=InodeType.FIFO))
        with pytest.raises(errors.AlreadyExists):
            store.symlink(SymlinkReq(path=path, target="/x"))
        with pytest.raises(errors.AlreadyExists):
            store.link(LinkReq(src="/f", dst=path))
    after = store.stat_fs(MetaReq())
    assert (after.inodes, after.files, after.directories) == (
        before.inodes,
        before.files,
        before.directories,
    )
    assert names(store, "/") == ["d", "f"]
    assert store.stat(PathReq(path="/f")) == f
    assert store.stat(PathReq(path="/d")).type == InodeType.DIRECTORY


def test_concurrent_creates_in_one_dir(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/d"))
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(25):
                create(store, f"/d/t{t}-{i}")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    entries = store.list_dir(ListDirReq(path="/d", limit=1000)).entries
    assert len(entries) == 200
    assert len({e.inode for e in entries}) == 200
    assert store.stat_fs(MetaReq()).files == 200


def test_id_allocator_ranges_do_not_overlap(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "ids.db"))
    a, b = IdAllocator(db, batch=10), IdAllocator(db, batch=10)
    got = a.take(3) + b.take(3) + a.take(10) + b.take(1)
    assert len(set(got)) == len(got)
    assert min(got) > 1
    db.close()


class FakeData:
    """Stands in for DataClient: records REMOVE requests, fails while `down`."""

    def __init__(self) -> None:
        self.down = True
        self.sent: list[tuple[str, object]] = []

    async def call(self, address: str, mtype: object, body: object, **kw: object):
        if self.down:
            raise errors.RPCUnavailable(f"cannot connect to {address}")
        self.sent.append((address, body))
        return body, None


async def test_gc_removes_chunks_then_inode(store: MetaStore) -> None:
    f = create(store, "/f", stripe=2)
    store.unlink(PathReq(path="/f"))
    clock = [time.time() + 10]  # after the unlink's due time
    data = FakeData()
    worker = gc.GcWorker(
        store.db,
        store.ctx.routing,
        data,  # type: ignore[arg-type]
        client_id="meta-test",
        retry_interval=30.0,
        clock=lambda: clock[0],
    )
    assert await worker.run_once() == 0  # storage down: postponed
    assert store.db.run(lambda tr: inodes.load(tr, f.inode)) is not None
    assert await worker.run_once() == 0  # not due again before the retry interval
    data.down = False
    clock[0] += 31
    assert await worker.run_once() == 1
    assert f.layout is not None
    assert sorted(b.chain_id for _, b in data.sent) == sorted(f.layout.chains)
    assert all(b.inodes == [f.inode] for _, b in data.sent)
    assert store.db.run(lambda tr: inodes.load(tr, f.inode)) is None
    assert store.db.run(lambda tr: tr.get_range(*keys.gc_range(2**62))) == []


async def test_gc_batches_files_per_chain(store: MetaStore) -> None:
    files = [create(store, f"/f{i}", stripe=2) for i in range(6)]
    for i in range(6):
        store.unlink(PathReq(path=f"/f{i}"))
    data = FakeData()
    data.down = False
    worker = gc.GcWorker(
        store.db,
        store.ctx.routing,
        data,  # type: ignore[arg-type]
        client_id="meta-test",
        clock=lambda: time.time() + 10,
    )
    assert await worker.run_once() == 6
    # One REMOVE per chain, naming every file that uses the chain.
    expected: dict[int, set[int]] = {}
    for f in files:
        assert f.layout is not None
        for chain_id in f.layout.chains:
            expected.setdefault(chain_id, set()).add(f.inode)
    sent = {b.chain_id: set(b.inodes) for _, b in data.sent}
    assert len(data.sent) == len(expected)
    assert sent == expected


async def test_idempotency_records_expire(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/d", client_id="c", request_id=1))
    worker = gc.GcWorker(
        store.db,
        store.ctx.routing,
        FakeData(),  # type: ignore[arg-type]
        client_id="meta-test",
        idempotency_ttl=600.0,
        clock=lambda: time.time() + 3600,
    )
    await worker.run_once()
    assert store.db.run(lambda tr: tr.get_range(*keys.idempotent_range())) == []


def test_statfs_counts_a_shared_filesystem_once(tmp_path: Path) -> None:
    targets = [
        TargetInfo(
            target_id=t,
            node_id=1,
            used_bytes=10,
            free_bytes=60,
            total_bytes=100,
            device="host-a:7" if t < 104 else f"host-b:{t}",
        )
        for t in range(100, 108)
    ]
    view = RoutingView(RoutingInfo(version=1, targets=targets))
    db = SqliteDatabase(str(tmp_path / "meta.db"))
    try:
        s = MetaStore(db, OpContext(routing=lambda: view), IdAllocator(db, batch=100))
        s.ensure_root()
        fs = s.stat_fs(MetaReq())
    finally:
        db.close()
    assert fs.used_bytes == 80  # chunk bytes of every target
    assert (fs.total_bytes, fs.free_bytes) == (500, 300)  # host-a's disk once


# ---------------------------------------------------------------- PathAt and POSIX


def test_path_at_parent_inode(store: MetaStore) -> None:
    d = store.mkdir(MkdirReq(path="/d"))
    sub = store.mkdir(MkdirReq(at=d.inode, path="sub"))
    f = store.open(OpenReq(at=sub.inode, path="f", flags=CREATE))
    assert store.stat(PathReq(path="/d/sub/f")).inode == f.inode.inode
    # "" names `at` itself; ".." climbs from it.
    assert store.stat(PathReq(at=sub.inode, path="")).inode == sub.inode
    assert store.stat(PathReq(at=sub.inode, path="..")).inode == d.inode
    # A file renamed away from under a cached parent is still found by inode.
    store.rename(RenameReq(src_at=sub.inode, src="f", dst_at=d.inode, dst="g"))
    assert store.stat(PathReq(at=d.inode, path="g")).inode == f.inode.inode
    with pytest.raises(errors.NotFound):
        store.stat(PathReq(at=sub.inode, path="f"))
    store.link(LinkReq(src_at=f.inode.inode, src="", dst_at=sub.inode, dst="h"))
    assert store.stat(PathReq(path="/d/sub/h")).nlink == 2


def test_no_path_length_limit_but_name_limit(store: MetaStore) -> None:
    at = 1
    for i in range(40):  # 40 x 200 bytes: far past 4096 from the root
        at = store.mkdir(MkdirReq(at=at, path=f"{i:03d}" + "d" * 197)).inode
    deep = "/" + "/".join(f"{i:03d}" + "d" * 197 for i in range(40))
    assert len(deep) > 8000
    assert store.stat(PathReq(path=deep)).inode == at
    with pytest.raises(errors.NameTooLong):
        store.stat(PathReq(at=at, path="x" * 256))
    with pytest.raises(errors.NameTooLong):
        store.open(OpenReq(at=at, path="x" * 256, flags=CREATE))


def test_parent_times_and_nlink(store: MetaStore) -> None:
    clock = [1_000.0]
    store.ctx.clock = lambda: clock[0]
    d = store.mkdir(MkdirReq(path="/p"))
    assert d.nlink == 2
    assert d.mtime == 1_000 * 10**9  # integer nanoseconds

    def step() -> int:
        clock[0] += 1
        return int(clock[0] * 10**9)

    for op in (
        lambda: store.open(OpenReq(at=d.inode, path="f", flags=CREATE)),
        lambda: store.symlink(SymlinkReq(at=d.inode, path="s", target="f")),
        lambda: store.link(LinkReq(src="/p/f", dst_at=d.inode, dst="l")),
        lambda: store.rename(RenameReq(src="/p/l", dst="/p/m")),
        lambda: store.unlink(PathReq(path="/p/m")),
    ):
        now = step()
        op()
        node = store.stat(PathReq(path="/p"))
        assert (node.mtime, node.ctime) == (now, now)
    store.mkdir(MkdirReq(path="/p/a"))
    store.mkdir(MkdirReq(path="/p/b"))
    assert store.stat(PathReq(path="/p")).nlink == 4
    store.rename(RenameReq(src="/p/a", dst="/a"))  # moves one subdir out
    assert store.stat(PathReq(path="/p")).nlink == 3
    assert store.stat(PathReq(path="/")).nlink == 4  # /p, /a, 2
    store.rmdir(PathReq(path="/p/b"))
    assert store.stat(PathReq(path="/p")).nlink == 2
    store.mkdir(MkdirReq(path="/p/c"))
    store.rename(RenameReq(src="/a", dst="/p/c"))  # replaces an empty dir
    assert store.stat(PathReq(path="/p")).nlink == 3
    assert store.stat(PathReq(path="/")).nlink == 3


def test_listdir_dots_and_stat(store: MetaStore) -> None:
    d = store.mkdir(MkdirReq(path="/ls"))
    f = store.open(OpenReq(path="/ls/f", flags=CREATE))
    reply = store.list_dir(ListDirReq(at=d.inode, dots=True, stat=True))
    assert [e.name for e in reply.entries] == [".", "..", "f"]
    assert [n.inode for n in reply.inodes if n] == [d.inode, 1, f.inode.inode]
    assert [e.name for e in store.list_dir(ListDirReq(path="/ls")).entries] == ["f"]


def test_integer_nanosecond_times(store: MetaStore) -> None:
    store.open(OpenReq(path="/t", flags=CREATE))
    when = 1_234_567_890_123_456_789
    node = store.set_attr(SetAttrReq(path="/t", atime=when, mtime=when + 1))
    assert (node.atime, node.mtime) == (when, when + 1)


def test_supplementary_groups(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/team", mode=0o770, uid=0, gid=0))
    store.set_attr(SetAttrReq(path="/team", gid_new=500))
    alice = {"uid": 1000, "gid": 1000}
    with pytest.raises(errors.PermissionDenied):
        store.open(OpenReq(path="/team/f", flags=CREATE, **alice))
    f = store.open(OpenReq(path="/team/f", flags=CREATE, groups=[20, 500], **alice))
    assert f.inode.uid == 1000
    assert [
        e.name
        for e in store.list_dir(ListDirReq(path="/team", groups=[500], **alice)).entries
    ] == ["f"]


def test_setgid_directory_inheritance(store: MetaStore) -> None:
    store.mkdir(MkdirReq(path="/sg", mode=0o2777))
    store.set_attr(SetAttrReq(path="/sg", gid_new=77))
    alice = {"uid": 1000, "gid": 1000}
    sub = store.mkdir(MkdirReq(path="/sg/sub", mode=0o755, **alice))
    assert sub.gid == 77
    assert sub.mode & 0o2000
    f = store.open(OpenReq(path="/sg/f", flags=CREATE, mode=0o644, **alice))
    assert f.inode.gid == 77
    assert not f.inode.mode & 0o2000


def test_non_owner_may_clear_setuid_setgid_only(store: MetaStore) -> None:
    store.open(OpenReq(path="/su", flags=CREATE, mode=0o6777))
    bob = {"uid": 1001, "gid": 1001}
    node = store.set_attr(SetAttrReq(path="/su", mode=0o0777, **bob))
    assert node.mode == 0o777
    with pytest.raises(errors.OperationNotPermitted):
        store.set_attr(SetAttrReq(path="/su", mode=0o0700, **bob))


def test_truncate_through_write_session(store: MetaStore) -> None:
    alice = {"uid": 1000, "gid": 1000}
    store.mkdir(MkdirReq(path="/home", mode=0o777))
    f = store.open(OpenReq(path="/home/z", flags=CREATE, mode=0o000, **alice))
    with pytest.raises(errors.PermissionDenied):
        store.set_attr(SetAttrReq(path="/home/z", length=10, **alice))
    node = store.set_attr(
        SetAttrReq(path="/home/z", length=10, session_id=f.session_id, **alice)
    )
    assert node.length == 10


@pytest.mark.parametrize(
    "kind", [InodeType.FIFO, InodeType.SOCKET, InodeType.CHAR_DEVICE]
)
def test_mknod(store: MetaStore, kind: InodeType) -> None:
    node = store.mknod(MknodReq(path="/n", type=kind, mode=0o640, rdev=0x0103))
    assert node.type == kind
    assert store.stat(PathReq(path="/n")).rdev == 0x0103
    if kind == InodeType.CHAR_DEVICE:
        with pytest.raises(errors.OperationNotPermitted):
            store.mknod(MknodReq(path="/n2", type=kind, uid=1000, gid=1000))
    store.unlink(PathReq(path="/n"))
    with pytest.raises(errors.NotFound):
        store.stat(PathReq(path="/n"))


def test_directory_layout_is_inherited_and_checked(tmp_path: Path) -> None:
    base = make_routing().info
    # A second table over chains 3 and 4 only, as `create-chain-table` makes.
    view = RoutingView(
        msgspec.structs.replace(
            base,
            tables=[*base.tables, ChainTable(table_id=2, version=1, chains=[3, 4])],
        )
    )
    db = SqliteDatabase(str(tmp_path / "meta.db"))
    store = MetaStore(db, OpContext(routing=lambda: view), IdAllocator(db, batch=100))
    store.ensure_root()
    try:
        store.mkdir(MkdirReq(path="/d"))
        store.set_attr(SetAttrReq(path="/d", uid_new=1000, gid_new=1000))
        create(store, "/d/old")
        lay = DirLayout(chunk_size=65536, stripe=1, table_id=2)
        with pytest.raises(errors.OperationNotPermitted):
            store.set_attr(SetAttrReq(path="/d", uid=1001, dir_layout=lay))
        with pytest.raises(errors.NotADirectory):
            store.set_attr(SetAttrReq(path="/d/old", dir_layout=lay))
        with pytest.raises(errors.InvalidArgument):
            store.set_attr(SetAttrReq(path="/d", dir_layout=DirLayout(table_id=9)))
        assert (
            store.set_attr(SetAttrReq(path="/d", uid=1000, dir_layout=lay)).dir_layout
            == lay
        )
        store.mkdir(MkdirReq(path="/d/sub"))
        for path in ("/d/new", "/d/sub/new"):
            node = create(store, path)
            assert node.layout is not None
            assert node.layout.chunk_size == 65536
            assert node.layout.table_id == 2
            assert len(node.layout.chains) == 1
            assert node.layout.chains[0] in (3, 4)
        # What the create asks for wins over the directory's layout.
        node = create(store, "/d/explicit", chunk_size=4096, stripe=2)
        assert node.layout is not None
        assert (node.layout.chunk_size, sorted(node.layout.chains)) == (4096, [3, 4])
        assert store.stat(PathReq(path="/d/sub")).dir_layout == lay
        old = store.stat(PathReq(path="/d/old"))
        assert old.layout is not None
        assert old.layout.table_id == 1
        # All zero clears it.
        assert (
            store.set_attr(SetAttrReq(path="/d", dir_layout=DirLayout())).dir_layout
            is None
        )
        node = create(store, "/d/after")
        assert node.layout is not None
        assert len(node.layout.chains) == 4
    finally:
        db.close()
