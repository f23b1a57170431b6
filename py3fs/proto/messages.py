"""Control-plane message bodies (mgmtd and meta), and the RPC tables.

The `.proto` files beside this module declare the gRPC services and their methods;
each method carries one of these msgspec structs, encoded as msgpack, in the
`body` of the shared `Request`/`Reply` envelope (`envelope.proto`). `MGMT_RPCS` and
`META_RPCS` map each method to its request and reply types; a test checks they
match the `.proto` services exactly.
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


class NodeInfo(Msg):
    node_id: int
    role: str  # "storage" | "meta" | "mgmtd"
    address: str  # data-plane address for storage, gRPC address otherwise
    up: bool = True
    last_heartbeat: float = 0.0
    pid: int = 0


class TargetInfo(Msg):
    target_id: int
    node_id: int
    state: str = TargetState.SERVING
    used_bytes: int = 0
    free_bytes: int = 0
    total_bytes: int = 0
    chunk_count: int = 0


class ChainInfo(Msg):
    chain_id: int
    version: int
    targets: list[int]  # head first


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


class RegisterNodeReq(Msg):
    node_id: int
    role: str
    address: str
    targets: list[int] = []
    pid: int = 0


class HeartbeatReq(Msg):
    node_id: int
    role: str
    address: str
    targets: list[TargetReport] = []
    pid: int = 0


class HeartbeatReply(Msg):
    routing_version: int


class GetRoutingReq(Msg):
    known_version: int = 0


class CreateChainTableReq(Msg):
    replicas: int
    table_id: int = 1


MGMT_RPCS: Final[dict[str, tuple[type[Msg], type[Msg]]]] = {
    "RegisterNode": (RegisterNodeReq, RoutingInfo),
    "Heartbeat": (HeartbeatReq, HeartbeatReply),
    "GetRouting": (GetRoutingReq, RoutingInfo),
    "CreateChainTable": (CreateChainTableReq, RoutingInfo),
}


# ---------------------------------------------------------------- namespace (meta)


class InodeType(IntEnum):
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


class Layout(Msg):
    """Where a file's chunks live: chunk `i` is on chain `chains[i % len(chains)]`."""

    chunk_size: int
    table_id: int
    table_version: int
    chains: list[int]


class Inode(Msg):
    inode: int
    type: InodeType
    mode: int  # permission bits only (0o7777)
    uid: int
    gid: int
    nlink: int
    length: int = 0
    atime: float = 0.0
    mtime: float = 0.0
    ctime: float = 0.0
    parent: int = 0  # directories: the parent directory, for rename loop checks
    layout: Layout | None = None
    target: str = ""  # symlinks


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
    client_id: str = ""
    request_id: int = 0


class PathReq(MetaReq):
    path: str = ""
    follow: bool = True  # follow a symlink in the last component


class InodeReq(MetaReq):
    inode: int = 0


class MkdirReq(MetaReq):
    path: str = ""
    mode: int = 0o755
    parents: bool = False


class OpenReq(MetaReq):
    """Open or create a file. `flags` are os.O_* bits (O_CREAT, O_EXCL, O_TRUNC,
    O_WRONLY/O_RDWR); a write open starts a write session for `client_id`."""

    path: str = ""
    flags: int = 0
    mode: int = 0o644
    chunk_size: int = 0  # 0: the cluster default
    stripe: int = 0  # 0: every chain of the table


class OpenReply(Msg):
    inode: Inode
    session_id: str = ""


class CloseReq(MetaReq):
    inode: int = 0
    session_id: str = ""
    length: int = -1  # furthest byte written; -1 when nothing was written


class SyncReq(MetaReq):
    inode: int = 0
    length: int = -1


class ListDirReq(MetaReq):
    path: str = ""
    start_after: str = ""
    limit: int = 1000


class ListDirReply(Msg):
    entries: list[DirEntry]
    more: bool = False


class RenameReq(MetaReq):
    src: str = ""
    dst: str = ""


class SymlinkReq(MetaReq):
    path: str = ""
    target: str = ""


class ReadlinkReply(Msg):
    target: str


class LinkReq(MetaReq):
    src: str = ""
    dst: str = ""


class SetAttrReq(MetaReq):
    path: str = ""
    mode: int | None = None
    uid_new: int | None = None
    gid_new: int | None = None
    atime: float | None = None
    mtime: float | None = None
    length: int | None = None


class StatFsReply(Msg):
    inodes: int
    files: int
    directories: int
    used_bytes: int
    free_bytes: int
    total_bytes: int


META_RPCS: Final[dict[str, tuple[type[Msg], type[Msg]]]] = {
    "Stat": (PathReq, Inode),
    "StatInode": (InodeReq, Inode),
    "Mkdir": (MkdirReq, Inode),
    "Open": (OpenReq, OpenReply),
    "Close": (CloseReq, Inode),
    "Sync": (SyncReq, Inode),
    "ListDir": (ListDirReq, ListDirReply),
    "Rename": (RenameReq, Empty),
    "Unlink": (PathReq, Empty),
    "Rmdir": (PathReq, Empty),
    "Symlink": (SymlinkReq, Inode),
    "Readlink": (PathReq, ReadlinkReply),
    "Link": (LinkReq, Inode),
    "SetAttr": (SetAttrReq, Inode),
    "StatFs": (MetaReq, StatFsReply),
}
