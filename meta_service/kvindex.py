"""KVCache page index records: store records, page entries, the LRU index and
per-store counters (keys.kv_*), kept in the same transactions as the page files.

Invariant, per store: a page entry for key K exists exactly when the store's
pages directory has an entry named K.hex() for the entry's inode. Every change
of one goes with the matching change of the other in one transaction, so no
crash can leave an orphan page file or a dangling index entry.
"""

from __future__ import annotations

import msgspec

from py3fs import errors
from py3fs.kv import keys
from py3fs.kv.base import Transaction, decode_counter
from py3fs.proto.messages import KvStoreInfo

PAGES = "pages"
BYTES = "bytes"
MAX_KEY_BYTES = 100  # page files are named by the key's hex: 200 of 255 bytes


class PageEntry(msgspec.Struct, frozen=True, array_like=True):
    inode: int
    length: int
    atime: float  # seconds since the epoch, meta's clock
    ctime: float
    # holder -> lease expiry (seconds since the epoch); expired ones are pruned on write
    leases: dict[str, float] = {}

    def leased_until(self, now: float) -> float:
        return max((t for t in self.leases.values() if t > now), default=0.0)


_enc = msgspec.msgpack.Encoder()
_entry_dec = msgspec.msgpack.Decoder(PageEntry)
_store_dec = msgspec.msgpack.Decoder(KvStoreInfo)


def check_key(key: bytes) -> None:
    if not key or len(key) > MAX_KEY_BYTES:
        raise errors.InvalidArgument(
            f"page keys must be 1..{MAX_KEY_BYTES} bytes, got {len(key)}"
        )


def page_name(key: bytes) -> str:
    return key.hex()


def staging_name(inode: int) -> str:
    return f"{inode:016x}"


def load_store(tr: Transaction, store: str) -> KvStoreInfo | None:
    raw = tr.get(keys.kv_store_key(store))
    return None if raw is None else _store_dec.decode(raw)


def get_store(tr: Transaction, store: str) -> KvStoreInfo:
    info = load_store(tr, store)
    if info is None:
        raise errors.NotFound(f"no KVCache store {store!r}")
    return info


def save_store(tr: Transaction, info: KvStoreInfo) -> None:
    tr.set(keys.kv_store_key(info.store), _enc.encode(info))


def load_page(tr: Transaction, store: str, key: bytes) -> PageEntry | None:
    raw = tr.get(keys.kv_page_key(store, key))
    return None if raw is None else _entry_dec.decode(raw)


def decode_page(raw: bytes) -> PageEntry:
    return _entry_dec.decode(raw)


def _ms(t: float) -> int:
    return int(t * 1000)


def put_page(
    tr: Transaction,
    store: str,
    key: bytes,
    entry: PageEntry,
    old: PageEntry | None = None,
) -> None:
    """Write `entry` and move its LRU key from `old`'s access time when it changed."""
    if old is not None and _ms(old.atime) != _ms(entry.atime):
        tr.clear(keys.kv_lru_key(store, _ms(old.atime), key))
    if old is None or _ms(old.atime) != _ms(entry.atime):
        tr.set(keys.kv_lru_key(store, _ms(entry.atime), key), b"")
    tr.set(keys.kv_page_key(store, key), _enc.encode(entry))


def clear_page(tr: Transaction, store: str, key: bytes, entry: PageEntry) -> None:
    tr.clear(keys.kv_lru_key(store, _ms(entry.atime), key))
    tr.clear(keys.kv_page_key(store, key))


def count(tr: Transaction, store: str, pages: int, nbytes: int) -> None:
    tr.add(keys.kv_counter_key(store, PAGES), pages)
    tr.add(keys.kv_counter_key(store, BYTES), nbytes)


def read_count(tr: Transaction, store: str, name: str) -> int:
    return decode_counter(tr.get(keys.kv_counter_key(store, name)))


def with_lease(entry: PageEntry, holder: str, until: float, now: float) -> PageEntry:
    """`entry` with `holder`'s lease set to `until` (removed when `until` <= now)
    and expired leases dropped."""
    leases = {h: t for h, t in entry.leases.items() if t > now and h != holder}
    if until > now:
        leases[holder] = until
    return msgspec.structs.replace(entry, leases=leases)
