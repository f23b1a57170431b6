"""Runs inside the compose cluster's client container (`python - MODE ...`).

    write SECONDS   write files through the FUSE mount and through the library,
                    alternately, for SECONDS; print one JSON line per write that
                    was acknowledged ({"path", "sha256"}) or failed ({"failed"})
    verify FILE     read every acknowledged write listed in FILE (the JSON lines
                    `write` printed) back through the mount and the library;
                    print {"ok": N, "bad": [paths]}.

Standalone on purpose: it is copied into the container, where only the image's
py3fs is installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

from client import Client

MOUNT = "/mnt/py3fs"
CLUSTER = "/etc/py3fs/cluster.toml"
SIZE = 256 * 1024


async def lib_write(path: str, data: bytes) -> None:
    async with Client.from_cluster(CLUSTER) as fs:
        await fs.write_file(path, data)


async def lib_read(path: str) -> bytes:
    async with Client.from_cluster(CLUSTER) as fs:
        return await fs.read_file(path)


def write(seconds: float) -> None:
    os.makedirs(f"{MOUNT}/work", exist_ok=True)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        data = os.urandom(SIZE)
        name = f"/work/{'mnt' if i % 2 == 0 else 'lib'}-{i:05d}"
        try:
            if i % 2 == 0:
                with open(MOUNT + name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                asyncio.run(asyncio.wait_for(lib_write(name, data), 60))
            digest = hashlib.sha256(data).hexdigest()
            print(json.dumps({"path": name, "sha256": digest, "t": time.time()}))
        except Exception as exc:  # an unacknowledged write: allowed, reported
            print(json.dumps({"failed": name, "error": repr(exc), "t": time.time()}))
        sys.stdout.flush()
        i += 1


def verify(acked_file: str) -> None:
    with open(acked_file) as fh:
        acked = [json.loads(line) for line in fh if line.strip()]
    acked = [a for a in acked if "sha256" in a]
    bad = []
    errors: list[str] = []
    for a in acked:
        for attempt in range(3):
            try:
                with open(MOUNT + a["path"], "rb") as f:
                    via_mount = hashlib.sha256(f.read()).hexdigest()
                break
            except OSError as exc:
                # Reported (the test prints them and the mount's log), then
                # read again: the claim checked is that acknowledged data
                # survives, and a read error is not lost data.
                errors.append(f"{a['path']} (attempt {attempt + 1}): {exc!r}")
                if attempt == 2:
                    raise
                time.sleep(2)
        via_lib = hashlib.sha256(asyncio.run(lib_read(a["path"]))).hexdigest()
        if via_mount != a["sha256"] or via_lib != a["sha256"]:
            bad.append(a["path"])
    print(json.dumps({"ok": len(acked) - len(bad), "bad": bad, "errors": errors}))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(float(sys.argv[2]))
    else:
        verify(sys.argv[2])
