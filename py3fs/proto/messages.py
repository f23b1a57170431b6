"""Control-plane message bodies (mgmtd and meta), and the RPC tables.

Meta's RPCs are declared in `py3fs.proto.services` (served over `py3fs.msgrpc`).
mgmtd's gRPC service is declared in `mgmt.proto`; each method carries one of
these msgspec structs, encoded as msgpack, in the `body` of the shared
`Request`/`Reply` envelope (`envelope.proto`). `MGMT_RPCS` maps each method to
its request and reply types; a test checks it matches the `.proto` service.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

import msgspec


class Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Empty(Msg):
    pass


# ---------------------------------------------------------------- routing (mgmtd)


class TargetState:
    """Public target states, as in 3FS."""

    SERVING = "serving"
    SYNCING = "syncing"
    WAITING = "waiting"
    LASTSRV = "lastsrv"
    OFFLINE = "offline"


class LocalState:
    """What a storage node says about its own target in heartbeats (3FS's local
    state). `uptodate` only after a completed resync or while serving; a target of
    a node that is down counts as `offline`."""

    UPTODATE = "uptodate"
    ONLINE = "online"
    OFFLINE = "offline"


class NodeInfo(Msg):
    node_id: int
    role: str  # "storage" | "meta" | "mgmtd"
    address: str  # data-plane address for storage, gRPC address otherwise
    up: bool = True
    last_heartbeat: float = 0.0
    pid: int = 0
    http: str = ""  # host:port of its /metrics and /healthz ("" if none)
    # `py3fs admin decommission`: its targets are being (or were) drained into
    # replacements on other nodes; it is placed in no new chain.
    decommissioned: bool = False


class TargetInfo(Msg):
    target_id: int
    node_id: int
    state: str = TargetState.SERVING
    used_bytes: int = 0
    free_bytes: int = 0
    total_bytes: int = 0
    chunk_count: int = 0
    # The filesystem the target lives on ("host:st_dev"): targets sharing a
    # disk share its free and total bytes, which statfs must count once.
    device: str = ""


class ChainInfo(Msg):
    chain_id: int
    version: int
    targets: list[int]  # head first
    # While a decommission drains it: how many targets it keeps once the drained
    # ones leave (0: not draining).
    replicas: int = 0


class ChainTable(Msg):
    table_id: int
    version: int
    chains: list[int]


class RoutingInfo(Msg):
    version: int = 0
    nodes: list[NodeInfo] = []
    targets: list[TargetInfo] = []
    chains: list[ChainInfo] = []
    tables: list[ChainTable] = []


class TargetReport(Msg):
    target_id: int
    used_bytes: int = 0
    free_bytes: int = 0
    total_bytes: int = 0
    chunk_count: int = 0
    device: str = ""
    local_state: str = ""  # a LocalState; "" (an old sender) counts as online


class RegisterNodeReq(Msg):
    node_id: int
    role: str
    address: str
    targets: list[int] = []
    pid: int = 0
    http: str = ""
    auth: bytes = b""  # node signature (py3fs.caps): only cluster services


class HeartbeatReq(Msg):
    node_id: int
    role: str
    address: str
    targets: list[TargetReport] = []
    pid: int = 0
    auth: bytes = b""  # node signature (py3fs.caps)


class HeartbeatReply(Msg):
    routing_version: int
    # mgmtd's failure timeout in seconds: a storage node that has not heard back
    # from mgmtd for half of it stops serving (its lease ran out).
    heartbeat_timeout: float = 0.0


class GetRoutingReq(Msg):
    pass


class CreateChainTableReq(Msg):
    replicas: int
    table_id: int = 1
    auth: bytes = b""  # node signature (py3fs.caps): the cluster's admin tools


class DecommissionReq(Msg):
    node_id: int
    auth: bytes = b""  # node signature (py3fs.caps): the cluster's admin tools


MGMT_RPCS: Final[dict[str, tuple[type[Msg], type[Msg]]]] = {
    "RegisterNode": (RegisterNodeReq, RoutingInfo),
    "Heartbeat": (HeartbeatReq, HeartbeatReply),
    "GetRouting": (GetRoutingReq, RoutingInfo),
    "CreateChainTable": (CreateChainTableReq, RoutingInfo),
    "Decommission": (DecommissionReq, RoutingInfo),
}


# ---------------------------------------------------------------- namespace (meta)


class InodeType(IntEnum):
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    # Special files (mknod): an inode with attributes and, for devices, an
    # rdev; no data in py3fs (the kernel serves FIFOs and sockets itself).
    FIFO = 4
    SOCKET = 5
    CHAR_DEVICE = 6
    BLOCK_DEVICE = 7


class Layout(Msg):
    """Where a file's chunks live: chunk `i` is on chain `chains[i % len(chains)]`."""

    chunk_size: int
    table_id: int
    table_version: int
    chains: list[int]


class DirLayout(Msg):
    """A directory's layout for what is created under it (`py3fs admin
    set-layout`): new files take their chunk size, stripe and chain table from
    it, new subdirectories copy it. 0 in a field: the cluster default."""

    chunk_size: int = 0
    stripe: int = 0  # chains per file; 0: every chain of the table
    table_id: int = 0


class Inode(Msg):
    inode: int
    type: InodeType
    mode: int  # permission bits only (0o7777)
    uid: int
    gid: int
    nlink: int  # directories: 2 + subdirectories
    length: int = 0
    # Integer nanoseconds since the epoch, as stat(2) reports them.
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    parent: int = 0  # directories: the parent directory, for rename loop checks
    layout: Layout | None = None
    target: str = ""  # symlinks
    rdev: int = 0  # devices
    dir_layout: DirLayout | None = None  # directories: inherited by new entries


class Changed(Msg):
    """What a namespace change (unlink, rmdir, rename) left behind, for the
    caller's caches: the new attributes of the directories whose entries
    changed (mtime, ctime, nlink) and of the inodes it touched (a file that
    lost a name), and the ids of the inodes it deleted."""

    dirs: list[Inode] = []
    nodes: list[Inode] = []
    gone: list[int] = []


class DirEntry(Msg):
    name: str
    inode: int
    type: InodeType


class MetaReq(Msg):
    """Fields every namespace request carries: who is asking, and for mutations an
    idempotency key. A mutation with `request_id` != 0 is applied once per
    (client_id, request_id): meta stores its reply in the same transaction, and a
    retry (after a lost reply or a meta crash) gets the stored reply."""

    uid: int = 0
    gid: int = 0
    groups: list[int] = []  # supplementary groups
    client_id: str = ""
    request_id: int = 0
    # Who the client is (py3fs.auth): meta derives uid/gid/groups from it and
    # keeps the claimed ones only for users that may act for others.
    token: str = ""


# Requests name their objects 3FS's `PathAt` way: `at` is an inode and `path`
# is relative to it: one name for the kernel's (parent inode, name), "" for
# the inode `at` itself, or several components for the library client. An
# absolute `path` (the library client's) starts at the root, whatever `at`
# is; a relative one needs an `at`. The mount never sends absolute paths.


class PathReq(MetaReq):
    path: str = ""
    follow: bool = True  # follow a symlink in the last component
    at: int = 0


class InodeReq(MetaReq):
    inode: int = 0


class MkdirReq(MetaReq):
    path: str = ""
    at: int = 0
    mode: int = 0o755
    parents: bool = False


class OpenReq(MetaReq):
    """Open or create a file. `flags` are os.O_* bits (O_CREAT, O_EXCL, O_TRUNC,
    O_WRONLY/O_RDWR); a write open starts a write session for `client_id`."""

    path: str = ""
    at: int = 0
    flags: int = 0
    mode: int = 0o644
    chunk_size: int = 0  # 0: the cluster default
    stripe: int = 0  # 0: every chain of the table
    # > 0: the write session expires `lease` seconds after the client last
    # renewed (RenewReq), and meta then recovers the file's length from
    # storage. 0: the session lasts until closed.
    lease: float = 0.0


class CapReq(MetaReq):
    """A data-plane capability (py3fs.caps) for `inode`: read, or read and
    write; meta checks the caller's permission on the inode first. It covers
    chunk indexes [first_chunk, end_chunk), by default (end 0) all of them: a
    holder may ask for a narrower one to hand to a worker."""

    inode: int = 0
    write: bool = False
    first_chunk: int = 0
    end_chunk: int = 0


class CapReply(Msg):
    cap: bytes
    ttl: float  # seconds it stays valid


class WhoAmIReply(Msg):
    """The identity meta derived from the caller's token (py3fs.auth)."""

    uid: int
    gid: int
    groups: list[int] = []


class TrashDirReply(Msg):
    path: str  # the caller's trash directory (py3fs.trash), made if missing


class RenewReq(MetaReq):
    """The client (client_id) is alive: its leased write sessions last
    another `ttl` seconds."""

    ttl: float = 0.0


class AppendReq(MetaReq):
    """Reserve `size` bytes at the end of file `inode` for an O_APPEND write
    through write session `session_id`: the file's length grows by `size` at
    once, so appends from any number of clients never overlap."""

    inode: int = 0
    session_id: str = ""
    size: int = 0


class AppendReply(Msg):
    offset: int  # where the reserved range starts
    inode: Inode


class OpenReply(Msg):
    inode: Inode
    session_id: str = ""
    # O_TRUNC cut the file from this length: the opener drops those bytes from
    # storage, so a later write into the chunk does not bring old data back.
    truncated_from: int = 0
    # The data-plane capability for the file (py3fs.caps): read, plus write
    # for a write open; b"" for a directory or a cluster without a secret.
    # Handed out with the open so the first read or write needs no Capability
    # call of its own.
    cap: bytes = b""
    cap_ttl: float = 0.0  # seconds it stays valid
    # When the open created the file: the directory's new attributes (its
    # mtime and ctime changed), so the caller's cache needs no stat of it.
    parent: Inode | None = None


class CloseReq(MetaReq):
    inode: int = 0
    session_id: str = ""
    length: int = -1  # furthest byte written; -1 when nothing was written
    # The mtime to record with `length` instead of now: the caller set it
    # (utimensat) after its last write, as tar and rsync do before close.
    mtime: int = -1


class SyncReq(MetaReq):
    inode: int = 0
    length: int = -1
    mtime: int = -1  # as CloseReq.mtime


class ListDirReq(MetaReq):
    path: str = ""
    at: int = 0
    start_after: str = ""
    limit: int = 1000
    dots: bool = False  # the first page starts with "." and ".."
    stat: bool = False  # also return each entry's inode (readdirplus, ls -l)


class ListDirReply(Msg):
    entries: list[DirEntry]
    more: bool = False
    # With `stat`: the inode of each entry, in order (None: removed meanwhile,
    # which a read in one transaction never sees, or a dangling dentry).
    inodes: list[Inode | None] = []


class RenameReq(MetaReq):
    src: str = ""
    dst: str = ""
    src_at: int = 0
    dst_at: int = 0
    noreplace: bool = False  # RENAME_NOREPLACE: AlreadyExists instead of replacing


class SymlinkReq(MetaReq):
    path: str = ""
    target: str = ""
    at: int = 0


class MknodReq(MetaReq):
    """A FIFO, socket, or character/block device (`rdev`) named `path`."""

    path: str = ""
    at: int = 0
    type: InodeType = InodeType.FIFO
    mode: int = 0o644
    rdev: int = 0


class ReadlinkReply(Msg):
    target: str


class LinkReq(MetaReq):
    src: str = ""
    dst: str = ""
    src_at: int = 0
    dst_at: int = 0


class SetAttrReq(MetaReq):
    path: str = ""
    at: int = 0
    follow: bool = True  # False: change a symlink itself (FUSE setattr, lutimes)
    mode: int | None = None
    uid_new: int | None = None
    gid_new: int | None = None
    atime: int | None = None  # nanoseconds
    mtime: int | None = None  # nanoseconds
    dir_layout: DirLayout | None = None  # directories only (owner or root)
    length: int | None = None
    # A truncate through an open write handle (ftruncate): the session stands
    # for the permission checked at open, as in POSIX.
    session_id: str = ""


class StatFsReply(Msg):
    inodes: int
    files: int
    directories: int
    used_bytes: int
    free_bytes: int
    total_bytes: int


# ---------------------------------------------------------------- KVCache (meta)
# The page index of a KVCache store lives beside the namespace and changes in the
# same transactions as the page files (see meta_service/ops/kvcache.py).


class KvStoreReq(MetaReq):
    """Open a store, creating it (and its directories) when missing. Zero
    fields keep an existing store's settings."""

    store: str = ""
    path: str = ""  # directory of the store; "" means /kvcache/<store>
    page_bytes: int = 0
    capacity_bytes: int = 0
    chunk_size: int = 0  # layout of page files; 0: the cluster default
    stripe: int = 0


class KvStoreInfo(Msg):
    store: str
    path: str
    dir_inode: int
    pages_inode: int
    staging_inode: int
    page_bytes: int = 0
    capacity_bytes: int = 0
    chunk_size: int = 0
    stripe: int = 0


class KvStoreStats(Msg):
    pages: int
    used_bytes: int
    capacity_bytes: int
    page_bytes: int


class KvStageReq(MetaReq):
    store: str = ""
    count: int = 0


class KvStageReply(Msg):
    files: list[Inode]  # fresh empty files in the store's staging directory


class KvPageNew(Msg):
    key: bytes
    inode: int  # a staging file from KvPageStage, already written
    length: int


class KvPutReq(MetaReq):
    store: str = ""
    pages: list[KvPageNew] = []


class KvPutReply(Msg):
    added: list[bool]  # False: the key was already there; the staging file is dropped


class KvLookupReq(MetaReq):
    store: str = ""
    keys: list[bytes] = []
    prefix: bool = False  # stop at the first missing key
    touch: bool = False  # update the access time (LRU)
    lease_ttl: float = 0.0  # > 0: lease found pages for this long
    holder: str = ""
    ttl: float = 0.0  # > 0: pages idle longer than this count as missing


class KvPageLoc(Msg):
    index: int  # position in the request's keys
    inode: int
    length: int
    layout: Layout | None = None


class KvLookupReply(Msg):
    pages: list[KvPageLoc]
    prefix_len: int  # leading keys found


class KvKeysReq(MetaReq):
    store: str = ""
    keys: list[bytes] = []
    ttl: float = 0.0  # lease: seconds; <= 0 releases `holder`'s lease
    holder: str = ""


class KvCountReply(Msg):
    count: int


class KvEvictReq(MetaReq):
    """Remove least recently used unleased pages while the store holds more than
    `target_bytes` (-1: no size goal) or they were idle longer than `ttl` (0:
    none), at most `limit` per call; also staging files older than
    `staging_ttl` (0: none)."""

    store: str = ""
    target_bytes: int = -1
    ttl: float = 0.0
    staging_ttl: float = 0.0
    limit: int = 32


class KvEvictReply(Msg):
    evicted: int
    evicted_bytes: int
    staging_removed: int = 0
    more: bool = False  # stopped at `limit` with work left


class KvListReq(MetaReq):
    store: str = ""
    start_after: bytes = b""
    limit: int = 1000


class KvEntry(Msg):
    key: bytes
    inode: int
    length: int
    atime: float
    leased_until: float = 0.0


class KvListReply(Msg):
    entries: list[KvEntry]
    more: bool = False
