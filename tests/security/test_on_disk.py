"""On disk, only the services' user can read file data, the namespace and the
secrets (issue 11). Before, chunk files were 0644 in 0755 directories and
kv.db was 0644: any local user could read every file's bytes."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

from harness import client_for, running_cluster

from py3fs import ids
from py3fs.cluster import LocalCluster

NOBODY = 65534


async def write_one(cluster: LocalCluster) -> int:
    async with client_for(cluster) as fs:
        await fs.write_file("/f", b"secret bytes" * 1000)
        return (await fs.stat("/f")).inode


def test_chunks_kv_and_secrets_are_private(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "c") as cluster:
        inode = asyncio.run(write_one(cluster))
        name = ids.chunk_file_name(ids.chunk_id(inode, 0))
        # Data and metadata files of the chunk, on each of the 3 replicas.
        chunk_files = list(cluster.data_dir.rglob(name + "*"))
        assert len({p.parent.parent for p in chunk_files}) == 3
        for path in chunk_files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            # Every directory below the storage node's directory is 0700.
            for d in path.parents:
                if d.name.startswith("storage-"):
                    break
                assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        for private in ("kv.db", "cluster.secret", "admin.token"):
            mode = stat.S_IMODE((cluster.data_dir / private).stat().st_mode)
            assert mode == 0o600, private
        # An unprivileged user can open none of them.
        probe = (
            "import sys\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n"
            "        open(p, 'rb').read(1)\n"
            "        sys.exit('read ' + p)\n"
            "    except PermissionError:\n"
            "        pass\n"
        )
        targets = [str(p) for p in chunk_files] + [str(cluster.data_dir / "kv.db")]
        out = subprocess.run(
            ["/usr/bin/python3", "-c", probe, *targets],
            user=NOBODY,
            group=NOBODY,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
