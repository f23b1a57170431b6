"""Mount-point helper of 3FS's `hf3fs_fuse` package."""

from __future__ import annotations

import os
from pathlib import PurePosixPath


def get_mount_point(p: str) -> str:
    """The first two components of the real path (3FS mounts at /<a>/<b>)."""
    parts = PurePosixPath(os.path.realpath(p)).parts
    return os.path.join(*parts[:3])
