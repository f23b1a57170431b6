"""Supplementary groups of the process behind a FUSE request.

FUSE requests carry the caller's uid, gid and pid only; meta needs the
supplementary groups too (a user whose secondary group owns a directory may
use it), so they are read from /proc.
"""

from __future__ import annotations

import time

_GROUPS_TTL = 1.0
_groups: dict[int, tuple[float, tuple[int, ...]]] = {}


def groups_of(pid: int, uid: int) -> tuple[int, ...]:
    """The supplementary groups of process `pid` (FUSE requests carry only
    uid and gid), cached for a second per pid. Root needs none."""
    if uid == 0 or pid == 0:
        return ()
    now = time.monotonic()
    hit = _groups.get(pid)
    if hit is not None and hit[0] > now:
        return hit[1]
    found: tuple[int, ...] = ()
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Groups:"):
                    found = tuple(int(g) for g in line.split()[1:])
                    break
    except OSError:
        pass  # the process is gone: its request is moot
    if len(_groups) > 4096:
        _groups.clear()
    _groups[pid] = (now + _GROUPS_TTL, found)
    return found
