"""Users and tokens: who a client is, derived by meta from the token it presents.

A user is a name with a uid, a gid and supplementary groups, stored in the KV
store under `keys.user_key(name)`; its token is stored only as a SHA-256 under
`keys.token_key(digest)`, so a KV dump does not hand out identities. A client
sends its token with every namespace request; meta replaces the uid/gid/groups
the request claims with the token's, unless the user may act for others (the
cluster admin, and mount daemons: 3FS's FUSE model, where the daemon passes on
the kernel's caller).

Authentication is on once the KV store holds a user: `py3fs cluster up`
creates the `admin` user (uid 0, acts for others) and writes its token to a
0600 file next to the cluster file, so the local quickstart needs no step.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path

import msgspec

from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.base import Database, Transaction

ADMIN = "admin"
TOKEN_ENV = "PY3FS_TOKEN"
TOKEN_FILE_ENV = "PY3FS_TOKEN_FILE"
# Where a user keeps their own token when neither variable is set.
USER_TOKEN_FILE = Path("~/.config/py3fs/token")


class User(msgspec.Struct, frozen=True):
    name: str
    uid: int
    gid: int
    groups: list[int] = []
    # May this user's requests name another uid/gid (the admin, mounts)?
    act_for_others: bool = False
    token_sha256: str = ""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "p3t_" + secrets.token_urlsafe(32)


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(User)


def _put(tx: Transaction, user: User, token: str) -> None:
    old = tx.get(keys.user_key(user.name))
    if old is not None:
        tx.clear(keys.token_key(_dec.decode(old).token_sha256))
    user = msgspec.structs.replace(user, token_sha256=digest(token))
    tx.set(keys.user_key(user.name), _enc.encode(user))
    tx.set(keys.token_key(user.token_sha256), user.name.encode())


def add_user(
    db: Database,
    name: str,
    uid: int,
    gid: int,
    groups: list[int] | None = None,
    *,
    act_for_others: bool = False,
    token: str | None = None,
    replace: bool = False,
) -> str:
    """Create user `name`; returns its token (shown once, stored hashed)."""
    if not name or "/" in name:
        raise errors.InvalidArgument(f"bad user name {name!r}")
    token = token or new_token()
    user = User(name, uid, gid, sorted(set(groups or [])), act_for_others)

    def fn(tx: Transaction) -> None:
        if tx.get(keys.user_key(name)) is not None and not replace:
            raise errors.AlreadyExists(f"user {name} exists")
        _put(tx, user, token)

    db.run(fn)
    return token


def rotate(db: Database, name: str) -> str:
    """A new token for `name`; the old one stops working at once (meta caches
    identities for at most `Authenticator.ttl` seconds)."""
    token = new_token()

    def fn(tx: Transaction) -> None:
        raw = tx.get(keys.user_key(name))
        if raw is None:
            raise errors.NotFound(f"no user {name}")
        _put(tx, _dec.decode(raw), token)

    db.run(fn)
    return token


def remove_user(db: Database, name: str) -> None:
    def fn(tx: Transaction) -> None:
        raw = tx.get(keys.user_key(name))
        if raw is None:
            raise errors.NotFound(f"no user {name}")
        tx.clear(keys.token_key(_dec.decode(raw).token_sha256))
        tx.clear(keys.user_key(name))

    db.run(fn)


def list_users(db: Database) -> list[User]:
    begin, end = keys.user_range()
    rows = db.run(lambda tx: tx.get_range(begin, end), read_only=True)
    return [_dec.decode(v) for _, v in rows]


class Authenticator:
    """Token -> User for meta, cached for `ttl` seconds so a request costs no
    KV read; removal and rotation take effect within `ttl`."""

    def __init__(self, db: Database, ttl: float = 2.0) -> None:
        self._db = db
        self.ttl = ttl
        self._cache: dict[str, tuple[float, User | None]] = {}
        self._enabled: tuple[float, bool] = (0.0, False)

    def _lookup(self, tx: Transaction, token: str) -> User | None:
        name = tx.get(keys.token_key(digest(token)))
        if name is None:
            return None
        raw = tx.get(keys.user_key(name.decode()))
        return None if raw is None else _dec.decode(raw)

    def enabled(self) -> bool:
        now = time.monotonic()
        at, on = self._enabled
        if now - at > self.ttl:
            begin, end = keys.user_range()
            on = bool(
                self._db.run(lambda tx: tx.get_range(begin, end, 1), read_only=True)
            )
            self._enabled = (now, on)
        return on

    def user(self, token: str) -> User | None:
        """The user holding `token`, or None if authentication is off."""
        if not self.enabled():
            return None
        if not token:
            raise errors.Unauthenticated(
                "no token: set $PY3FS_TOKEN or a token file (py3fs admin user add)"
            )
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is None or now - hit[0] > self.ttl:
            if len(self._cache) > 10_000:
                self._cache.clear()
            user = self._db.run(lambda tx: self._lookup(tx, token), read_only=True)
            hit = (now, user)
            self._cache[token] = hit
        if hit[1] is None:
            raise errors.Unauthenticated("unknown or revoked token")
        return hit[1]


def find_token(token_file: str = "") -> str:
    """The token this process presents: $PY3FS_TOKEN, else the file named by
    $PY3FS_TOKEN_FILE, else `token_file` (the cluster's admin token file, if this
    user can read it), else ~/.config/py3fs/token; "" if none."""
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return token
    candidates = [os.environ.get(TOKEN_FILE_ENV, ""), token_file]
    candidates.append(str(USER_TOKEN_FILE.expanduser()))
    for path in candidates:
        if not path:
            continue
        try:
            return Path(path).read_text().strip()
        except OSError:
            continue
    return ""


def write_token_file(path: Path, token: str) -> None:
    """Write `token` readable only by its owner (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
