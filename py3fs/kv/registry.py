"""Open a KV database by URL; backends are imported lazily, by scheme.

sqlite:///abs/path/meta.db   embedded, no setup (default)
etcd://h1:2379,h2:2379       etcd cluster
fdb:///path/to/fdb.cluster   FoundationDB
"""

from __future__ import annotations

import importlib
import importlib.util
from urllib.parse import urlsplit

from py3fs import errors
from py3fs.kv.base import Database

KNOWN_BACKENDS: dict[str, tuple[str, str, str]] = {
    # scheme: (module, class, install hint)
    "sqlite": ("py3fs.kv.sqlite", "SqliteDatabase", "part of the standard library"),
    "etcd": ("py3fs.kv.etcd", "EtcdDatabase", "apt-get install etcd-server"),
    "fdb": ("py3fs.kv.fdb", "FdbDatabase", "pip install foundationdb (needs libfdb_c)"),
}


def _has(module_name: str) -> bool:
    return importlib.util.find_spec(module_name) is not None


def open_database(url: str) -> Database:
    """Open the database named by `url`. Raises InvalidArgument for an unknown
    scheme and KVUnavailable (with an install hint) when a backend cannot load."""
    parts = urlsplit(url)
    if parts.scheme not in KNOWN_BACKENDS:
        raise errors.InvalidArgument(
            f"unknown KV backend {parts.scheme!r} in {url!r}; "
            f"known: {', '.join(sorted(KNOWN_BACKENDS))}"
        )
    module_name, cls_name, hint = KNOWN_BACKENDS[parts.scheme]
    if importlib.util.find_spec(module_name) is None:
        # Our own module is missing: no package the user installs would help.
        raise errors.KVUnavailable(
            f"KV backend {parts.scheme!r} is not included in this py3fs "
            f"(no module {module_name}); available: "
            f"{', '.join(s for s, m in sorted(KNOWN_BACKENDS.items()) if _has(m[0]))}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.KVUnavailable(
            f"KV backend {parts.scheme!r} unavailable ({exc}); {hint}"
        ) from None
    cls = getattr(module, cls_name)
    if parts.scheme == "sqlite":
        path = parts.path
        if not path:
            raise errors.InvalidArgument(f"sqlite URL needs a path: {url!r}")
        return cls(path)  # type: ignore[no-any-return]
    return cls(parts.netloc or parts.path)  # type: ignore[no-any-return]
