"""Reads through the mount see every byte written before them, while the writer
still holds the file open (issue 10: `git clone` into the mount once died with
"premature end of pack file": index-pack writes the pack through one fd and
reads it back through others, from several threads, before closing it).

The mount gathers small writes (write-behind) and sends them when a reader
needs them; the length it reports (getattr, and the size a READ is clipped to)
must cover gathered and in-flight bytes at every moment, or the kernel takes a
shorter file size and later reads stop early.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

WRITES = 1500
READERS = 3


def _first_difference(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
        min(len(a), len(b)),
    )


def _tail_readers(path: Path, data: bytes, written: list[int], stop: threading.Event):
    """Threads that pread the last bytes written and fstat, through their own
    fds; each records the first mismatch it sees."""
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            while not stop.is_set() and not errors:
                end = written[0]
                if end == 0:
                    continue
                start = max(0, end - rng.randint(1, 9000))
                got = os.pread(fd, end - start, start)
                if got != data[start:end]:
                    errors.append(
                        f"pread({start}, {end - start}) returned {len(got)} bytes"
                        f" (file written to {end}, first difference at "
                        f"{_first_difference(got, data[start:end])})"
                    )
                size = os.fstat(fd).st_size
                if size < end:
                    errors.append(f"fstat size {size} < {end} bytes written")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for t in threads:
        t.start()
    return threads, errors


def test_tail_reads_while_appending(mnt: Path) -> None:
    """Small sequential writes through one fd while other threads pread the
    tail and fstat through their own fds: no read comes back short or wrong."""
    rng = random.Random(10)
    sizes = [rng.randint(1, 3000) for _ in range(WRITES)]
    data = rng.randbytes(sum(sizes))
    path = mnt / "pack"
    written = [0]
    stop = threading.Event()
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        threads, errors = _tail_readers(path, data, written, stop)
        try:
            pos = 0
            for n in sizes:
                assert os.write(fd, data[pos : pos + n]) == n
                pos += n
                written[0] = pos
                if errors:
                    break
                # The writer reads back too, as index-pack does.
                if rng.random() < 0.05:
                    back = os.pread(fd, min(pos, 500), pos - min(pos, 500))
                    assert back == data[pos - len(back) : pos]
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        assert not errors, errors[:3]
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def _make_repo(repo: Path, files: int = 200, commits: int = 20) -> None:
    env = {**os.environ, "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z"}
    env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"]

    def git(*args: str) -> None:
        subprocess.run(
            ["git", *args], cwd=repo, env=env, check=True, capture_output=True
        )

    repo.mkdir()
    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    rng = random.Random(20)
    for c in range(commits):
        for i in range(files):
            if c == 0 or rng.random() < 0.3:
                lines = [f"{c} {i} {rng.random()}" for _ in range(rng.randint(5, 200))]
                (repo / f"f{i:03d}.txt").write_text("\n".join(lines))
        git("add", "-A")
        git("commit", "-q", "-m", f"commit {c}")


def test_git_clone_into_mount(mnt: Path, tmp_path: Path) -> None:
    """`git clone file://` of a 200-file x 20-commit repository into the mount,
    several times, each clone complete and consistent (`git fsck`)."""
    src = tmp_path / "repo"
    _make_repo(src)
    for i in range(3):
        dest = mnt / f"clone{i}"
        out = subprocess.run(
            ["git", "clone", "-q", f"file://{src}", str(dest)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        fsck = subprocess.run(
            ["git", "-C", str(dest), "fsck", "--full"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert fsck.returncode == 0, fsck.stderr
        assert (dest / "f000.txt").read_bytes() == (src / "f000.txt").read_bytes()
