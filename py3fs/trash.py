"""The trash: `py3fs rm` moves what it removes here; it is restored with
`py3fs trash restore` or deleted for good on expiry (meta) or `trash empty`.

Layout: `/.trash` (root, 01777), one directory per uid (`/.trash/<uid>`,
0700, owned by that uid), and in it one directory per removal named
`<expiry unix seconds>-<random>`, holding the removed file or tree under its
own name and `.origin`, a file with the path it was removed from. The
client's operations on it are in client/trash.py; meta's in meta_service/trash.py.
"""

from __future__ import annotations

from typing import NamedTuple

TRASH = "/.trash"
ORIGIN = ".origin"
DEFAULT_DAYS = 7.0


class Entry(NamedTuple):
    id: str  # the removal's directory name
    origin: str  # where it was removed from
    expires: float  # unix seconds
    name: str  # the removed item's name inside the entry


def expiry_of(entry_id: str) -> float | None:
    head, _, _ = entry_id.partition("-")
    return float(head) if head.isdigit() else None
