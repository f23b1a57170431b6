"""Data-plane capabilities and node signatures, both keyed by the cluster secret.

Storage never sees users, so meta hands a client a short-lived *capability*
for a range of an inode's chunks (read, or read+write; by default all of
them) after checking its permissions; storage checks the capability's HMAC,
expiry and chunk range on every client read, write and truncate. Messages
only services may send (chain forwards, repair, resync, REMOVE from meta's
GC) carry a *node signature*: an HMAC over the encoded
body. The secret is one file (0600) every service of the cluster reads
(`--secret-file`); a service started without one checks nothing, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any

import msgspec

from py3fs import errors

MAC_LEN = 16
# Long enough that a handle rarely asks twice, short enough that a revoked
# permission stops working soon; clients renew a minute before expiry.
DEFAULT_TTL = 600.0


class Capability(msgspec.Struct, array_like=True, frozen=True):
    inode: int
    write: bool
    expires_ms: int  # wall clock, ms since the epoch
    # Chunk indexes [first_chunk, end_chunk) it covers; end 0: no end.
    first_chunk: int = 0
    end_chunk: int = 0

    def covers(self, chunk: int) -> bool:
        return self.first_chunk <= chunk and (
            not self.end_chunk or chunk < self.end_chunk
        )


class Keys:
    """The two keys derived from one cluster secret."""

    def __init__(self, secret: bytes) -> None:
        self.cap = hmac.new(secret, b"py3fs capability", hashlib.sha256).digest()
        self.node = hmac.new(secret, b"py3fs node", hashlib.sha256).digest()
        # Capabilities whose signature held, by their bytes: a client sends the
        # same one with every read of a file, and the HMAC is most of a 4 KiB
        # read's check. What they allow is still checked on every use.
        self._opened: dict[bytes, Capability] = {}

    @classmethod
    def load(cls, path: str) -> Keys | None:
        """The keys of the secret in `path`; None for "" (checks off)."""
        if not path:
            return None
        return cls(bytes.fromhex(Path(path).read_text().strip()))

    @classmethod
    def load_if_readable(cls, path: str) -> Keys | None:
        """As `load`, but None when this user cannot read `path` (a cluster
        file names the secret for its admin; other users just lack it)."""
        try:
            return cls.load(path)
        except (OSError, ValueError):
            return None

    # -- capabilities

    def issue(
        self,
        inode: int,
        write: bool,
        ttl: float = DEFAULT_TTL,
        first_chunk: int = 0,
        end_chunk: int = 0,
    ) -> bytes:
        expires_ms = int((time.time() + ttl) * 1000)
        body = msgspec.msgpack.encode(
            Capability(inode, write, expires_ms, first_chunk, end_chunk)
        )
        return body + hmac.new(self.cap, body, hashlib.sha256).digest()[:MAC_LEN]

    def open(self, raw: bytes) -> Capability:
        """The capability in `raw` once its signature holds (PermissionDenied
        otherwise), whatever it covers and even if expired: `allows` decides."""
        if not raw:
            raise errors.PermissionDenied("no capability: ask meta (open) first")
        cap = self._opened.get(raw) if type(raw) is bytes else None
        if cap is not None:
            return cap
        body, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
        want = hmac.new(self.cap, body, hashlib.sha256).digest()[:MAC_LEN]
        if not hmac.compare_digest(mac, want):
            raise errors.PermissionDenied("forged capability")
        try:
            cap = msgspec.msgpack.decode(body, type=Capability)
        except msgspec.DecodeError:
            raise errors.PermissionDenied("malformed capability") from None
        if type(raw) is bytes:
            if len(self._opened) >= 4096:
                self._opened.clear()
            self._opened[raw] = cap
        return cap

    @staticmethod
    def allows(cap: Capability, inode: int, write: bool, chunk: int | None) -> None:
        """PermissionDenied unless opened capability `cap` is for `inode`,
        allows writing when `write` and covers chunk index `chunk` (None: any);
        CapabilityExpired (retryable: ask meta again) past its expiry."""
        if cap.inode != inode:
            raise errors.PermissionDenied(
                f"capability is for inode {cap.inode}, not {inode}"
            )
        if write and not cap.write:
            raise errors.PermissionDenied(f"read-only capability for inode {inode}")
        if chunk is not None and not cap.covers(chunk):
            raise errors.PermissionDenied(
                f"capability for chunks [{cap.first_chunk}, "
                f"{cap.end_chunk or 'end'}) of inode {inode} does not cover {chunk}"
            )
        if cap.expires_ms < time.time() * 1000:
            raise errors.CapabilityExpired(f"capability for inode {inode} expired")

    def check(
        self, raw: bytes, inode: int, write: bool, chunk: int | None = None
    ) -> None:
        """PermissionDenied unless `raw` is a valid, unexpired capability for
        `inode` (and chunk index `chunk`) that allows writing when `write`."""
        if not raw:
            raise errors.PermissionDenied(
                f"no capability for inode {inode}: ask meta (open) first"
            )
        self.allows(self.open(raw), inode, write, chunk)

    # -- node signatures

    def _mac(self, body: Any) -> bytes:
        encoded = msgspec.msgpack.encode(msgspec.structs.replace(body, auth=b""))
        name = type(body).__name__.encode()
        return hmac.new(self.node, name + encoded, hashlib.sha256).digest()[:MAC_LEN]

    def sign(self, body: Any) -> Any:
        """`body` with its `auth` field set to the node signature."""
        return msgspec.structs.replace(body, auth=self._mac(body))

    def verify(self, body: Any) -> None:
        if not hmac.compare_digest(body.auth, self._mac(body)):
            raise errors.PermissionDenied(
                f"{type(body).__name__} is only accepted from cluster services"
            )


def write_secret(path: Path) -> None:
    """Create a cluster secret readable only by its owner, if none exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
