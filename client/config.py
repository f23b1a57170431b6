"""Client configuration, and reading the cluster file `py3fs cluster up` writes."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from py3fs import config, errors

CLUSTER_ENV = "PY3FS_CLUSTER"
DEFAULT_CLUSTER_FILE = os.path.join(".py3fs", "cluster.toml")


@dataclass(frozen=True)
class ClientConfig:
    mgmt: list[str] = field(default_factory=list)
    # The uid/gid requests claim. Meta only honours them for a token that may
    # act for others (the admin, mounts); for every other token it uses the
    # token's own identity (py3fs.auth).
    uid: int = 0
    gid: int = 0
    # The token presented to meta; "" = look it up (py3fs.auth.find_token:
    # $PY3FS_TOKEN, $PY3FS_TOKEN_FILE, `token_file`, ~/.config/py3fs/token).
    token: str = ""
    # `py3fs cluster up` points this at the admin token it wrote (0600), so the
    # user who started the cluster needs no step; others cannot read it.
    token_file: str = ""
    # Admin tools only: the cluster secret (py3fs.caps), to sign what storage
    # and mgmtd take only from services (chunk listings, decommission). The
    # cluster file names it for the user who ran `cluster up`; a user who
    # cannot read it gets a client without it.
    secret_file: str = ""
    # TLS on the control plane (py3fs.tls): the directory with the cluster's
    # CA (ca.pem); "" = $PY3FS_TLS_DIR, else plain TCP.
    tls_dir: str = ""
    # `py3fs rm` moves into the caller's trash for this many days (0: deletes
    # at once); meta deletes expired entries (py3fs.trash).
    trash_days: float = 7.0
    max_inflight: int = 32
    retry_timeout: float = 60.0
    call_timeout: float = 30.0
    routing_max_age: float = 5.0
    # Write sessions expire this long after the client was last heard from
    # (a crashed writer's file then gets its length from storage).
    session_lease: float = 30.0
    # FUSE mount caching, in seconds (0 turns one off): how long the kernel
    # trusts a name (entry), an inode's attributes, and "no such name"
    # (negative). Changes made through this mount are seen at once; changes
    # by other clients after at most these times (open revalidates size and
    # data: close-to-open, as NFS). 3FS's FUSE defaults (30 s, 30 s, 5 s).
    entry_timeout: float = 30.0
    attr_timeout: float = 30.0
    negative_timeout: float = 5.0
    # The FUSE mount's cache of 64 KiB file blocks for small reads, in MiB
    # (0 turns it off): fuse_mount.block_cache. Same consistency as the
    # kernel's page cache (close-to-open).
    read_cache_mib: int = 512
    # A small read's block also goes to the kernel's page cache
    # (FUSE_NOTIFY_STORE, fuse_mount.page_store): later small reads in it
    # reach no daemon. Needs read_cache_mib.
    store_pages: bool = True


def cluster_file(path: str | None = None) -> str:
    """The cluster file: `path`, else $PY3FS_CLUSTER, else ./.py3fs/cluster.toml."""
    return path or os.environ.get(CLUSTER_ENV) or DEFAULT_CLUSTER_FILE


def load_client_config(path: str | None = None, **overrides: object) -> ClientConfig:
    """Read the [client] section of a cluster file (see `cluster_file`)."""
    path = cluster_file(path)
    if not os.path.exists(path):
        raise errors.InvalidArgument(
            f"no cluster file at {path}; start one with `py3fs cluster up` "
            f"or point --cluster / ${CLUSTER_ENV} at one"
        )
    cfg = config.load(ClientConfig, "client", path, overrides)
    if not cfg.mgmt:
        raise errors.InvalidArgument(f"cluster file {path} names no mgmt address")
    return cfg


def replace(cfg: ClientConfig, **changes: object) -> ClientConfig:
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def with_token(
    cfg: ClientConfig, token: str | None = None, token_file: str | None = None
) -> ClientConfig:
    """`cfg` presenting `token` (or the token in `token_file`) when given: the
    `token=` option of the adapters built from bare mgmt addresses (fsspec,
    SGLang, LMCache), where no cluster file names one."""
    if token_file and not token:
        # Read now: a named file wins over $PY3FS_TOKEN, which the lookup
        # of `ClientConfig.token_file` would put first.
        try:
            token = Path(token_file).expanduser().read_text()
        except OSError as exc:
            raise errors.InvalidArgument(
                f"cannot read token file {token_file}: {exc}"
            ) from None
    if token:
        return replace(cfg, token=token.strip())
    return cfg
