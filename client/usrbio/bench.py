"""`py3fs bench`: fio-style job files run through USRBIO (no mount needed).

Supported job options (fio's names and meanings): rw (read, write, randread,
randwrite, rw/readwrite, randrw), rwmixread, bs, size, numjobs, iodepth,
runtime, time_based, filename, directory, verify=crc32c. py3fs adds
chunk_size (of files the job creates). Paths are py3fs paths.

Each job instance is a thread with its own ring(s) of `iodepth` entries and an
iov of `iodepth * bs` bytes; it keeps `iodepth` ios in flight. Latency is
measured from prepare to reap (fio's slat + clat). With verify, written blocks
are remembered by crc32c and checked when read back.
"""

from __future__ import annotations

import configparser
import os
import random
import threading
import time
from dataclasses import dataclass

from client.usrbio.bench_report import DirStats, JobResult
from client.usrbio.local import Usrbio
from py3fs import errors, units, wire

_RW = {
    "read": (1.0, False),
    "write": (0.0, False),
    "randread": (1.0, True),
    "randwrite": (0.0, True),
    "rw": (0.5, False),
    "readwrite": (0.5, False),
    "randrw": (0.5, True),
}


def parse_size(text: str) -> int:
    """fio sizes, in binary units (`4k` = 4096, `kb` = `kib`)."""
    try:
        return units.parse_size(text)
    except ValueError:
        raise errors.InvalidArgument(f"bad size {text!r}") from None


def parse_time(text: str) -> float:
    try:
        return units.parse_duration(text)
    except ValueError:
        raise errors.InvalidArgument(f"bad time {text!r}") from None


@dataclass(frozen=True)
class Job:
    name: str
    rw: str = "read"
    bs: int = 4096
    size: int = 1 << 20
    numjobs: int = 1
    iodepth: int = 1
    runtime: float = 0.0
    time_based: bool = False
    filename: str = ""
    directory: str = "/"
    verify: str = ""
    rwmixread: int = 50
    chunk_size: int = 0
    options: tuple[tuple[str, str], ...] = ()

    def path(self, instance: int) -> str:
        if self.filename:
            return self.filename
        return f"{self.directory.rstrip('/')}/{self.name}.{instance}.0"

    @property
    def read_share(self) -> float:
        share, _ = _RW[self.rw]
        return self.rwmixread / 100 if 0 < share < 1 else share

    @property
    def random(self) -> bool:
        return _RW[self.rw][1]


def parse_jobs(text: str) -> list[Job]:
    """Jobs of a fio job file, [global] options applying to each."""
    cp = configparser.ConfigParser(
        allow_no_value=True, interpolation=None, inline_comment_prefixes=(";", "#")
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    base = dict(cp["global"]) if cp.has_section("global") else {}
    jobs = []
    for name in cp.sections():
        if name == "global":
            continue
        opts = {**base, **dict(cp[name])}
        jobs.append(_job(name, opts))
    if not jobs:
        raise errors.InvalidArgument("job file defines no job")
    return jobs


def _job(name: str, opts: dict[str, str | None]) -> Job:
    fields: dict[str, object] = {"name": name}
    for key, value in opts.items():
        v = value or ""
        if key in ("bs", "size", "chunk_size"):
            fields[key] = parse_size(v)
        elif key in ("numjobs", "iodepth", "rwmixread"):
            fields[key] = int(v)
        elif key == "runtime":
            fields[key] = parse_time(v)
        elif key == "time_based":
            fields[key] = v in ("", "1", "true")
        elif key == "rw" or key == "readwrite":
            if v not in _RW:
                raise errors.InvalidArgument(f"job {name}: unsupported rw={v}")
            fields["rw"] = v
        elif key in ("filename", "directory"):
            fields[key] = v
        elif key == "verify":
            if v not in ("crc32c", "crc32c-intel", "0", ""):
                raise errors.InvalidArgument(f"job {name}: only verify=crc32c")
            fields[key] = "crc32c" if v.startswith("crc32c") else ""
        # Anything else (ioengine, direct, group_reporting...) has no meaning here.
    fields["options"] = tuple((k, v or "") for k, v in opts.items())
    job = Job(**fields)  # type: ignore[arg-type]
    if job.bs <= 0 or job.size < job.bs or job.iodepth <= 0 or job.numjobs <= 0:
        raise errors.InvalidArgument(f"job {name}: bad bs/size/iodepth/numjobs")
    return job


def run_jobs(u: Usrbio, jobs: list[Job]) -> list[JobResult]:
    return [run_job(u, job) for job in jobs]


def run_job(u: Usrbio, job: Job) -> JobResult:
    result = JobResult(job.name, job.numjobs, options=dict(job.options))
    parent = os.path.dirname(job.path(0)) or "/"
    if not u._loop.run(u.client.exists(parent)):
        u._loop.run(u.client.mkdir(parent, parents=True))
    runs = [_Instance(u, job, i) for i in range(job.numjobs)]
    for r in runs:
        r.layout()
    threads = [threading.Thread(target=r.run, name=f"bench-{job.name}") for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runs:
        if r.failure is not None:
            raise r.failure
        result.read.merge(r.read)
        result.write.merge(r.write)
        r.verify_all()
        result.verified += r.verified
        result.verify_errors += r.verify_errors
        r.close()
    return result


class _Instance:
    def __init__(self, u: Usrbio, job: Job, index: int) -> None:
        self.u = u
        self.job = job
        self.path = job.path(index)
        self.blocks = job.size // job.bs
        self.iov = u.iovec(job.iodepth * job.bs)
        # Each slot's content is fixed and distinct, so a block's crc is known.
        for s in range(job.iodepth):
            self.iov.view[s * job.bs : (s + 1) * job.bs] = os.urandom(job.bs)
        self.slot_crc = [
            wire.crc32c(self.iov.view[s * job.bs : (s + 1) * job.bs])
            for s in range(job.iodepth)
        ]
        self.expected: dict[int, int] = {}  # offset -> crc32c written there
        self.read = DirStats()
        self.write = DirStats()
        self.verified = 0
        self.verify_errors = 0
        self.failure: BaseException | None = None
        self.rng = random.Random(index)
        self.fds: list[int] = []

    def _open(self, mode: str) -> int:
        kw = {"chunk_size": self.job.chunk_size} if self.job.chunk_size else {}
        fd = self.u.open(self.path, mode, **kw)
        self.fds.append(fd)
        return fd

    def layout(self) -> None:
        """Create the file (fio lays it out first) when reads need its data,
        remembering crcs for verify; write-only jobs start from an empty file."""
        if self.job.read_share == 0:
            self.wfd = self._open("wb")
            return
        try:
            length = self.u._loop.run(self.u.client.stat(self.path)).length
        except errors.NotFound:
            length = 0
        fresh = length < self.job.size or bool(self.job.verify)
        if fresh:
            wfd = self._open("wb")
            self._drive(
                [(False, b * self.job.bs) for b in range(self.blocks)], {False: wfd}
            )
        self.read = DirStats()
        self.write = DirStats()
        self.rfd = self._open("rb")
        if self.job.read_share < 1:
            self.wfd = self._open("r+b")

    def run(self) -> None:
        try:
            job = self.job
            fds = {}
            if job.read_share > 0:
                fds[True] = self.rfd
            if job.read_share < 1:
                fds[False] = self.wfd
            self._drive(self._plan(), fds, job.runtime if job.time_based else None)
        except BaseException as exc:
            self.failure = exc

    def _plan(self) -> object:
        """The ios: `size / bs` of them, or endless when time based."""
        job = self.job
        n = 0
        while job.time_based or n < self.blocks:
            block = self.rng.randrange(self.blocks) if job.random else n % self.blocks
            read = self.rng.random() < job.read_share
            yield read, block * job.bs
            n += 1

    def _drive(self, ios: object, fds: dict[bool, int], seconds: float | None = None):
        job = self.job
        rings = {d: self.u.ioring(job.iodepth, for_read=d) for d in fds}
        free = list(range(job.iodepth))
        inflight = 0
        it = iter(ios)  # type: ignore[call-overload]
        deadline = None if seconds is None else time.monotonic() + seconds
        start = time.monotonic()
        exhausted = False
        try:
            while True:
                while free and not exhausted:
                    if deadline is not None and time.monotonic() >= deadline:
                        exhausted = True
                        break
                    nxt = next(it, None)
                    if nxt is None:
                        exhausted = True
                        break
                    read, off = nxt
                    slot = free.pop()
                    iov = self.iov[slot * job.bs : (slot + 1) * job.bs]
                    rings[read].prepare(
                        iov, read, fds[read], off, (slot, off, time.perf_counter_ns())
                    )
                    inflight += 1
                for ring in rings.values():
                    ring.submit()
                if not inflight:
                    break
                for read, ring in rings.items():
                    many = len(rings) == 1
                    done = ring.wait(min_results=1 if many else 0, timeout=None)
                    if not done and not many:
                        done = ring.wait(min_results=1, timeout=0.001)
                    for d in done:
                        inflight -= 1
                        free.append(self._complete(read, d.result, d.userdata))
        finally:
            for ring in rings.values():
                ring.close()
        elapsed = time.monotonic() - start
        self.read.runtime_s = self.write.runtime_s = elapsed

    def _complete(self, read: bool, result: int, userdata: object) -> int:
        slot, off, t0 = userdata  # type: ignore[misc]
        st = self.read if read else self.write
        st.lat_ns.append(time.perf_counter_ns() - t0)
        st.ios += 1
        if result < 0:
            st.errors += 1
            return int(slot)
        st.io_bytes += result
        bs = self.job.bs
        if not read:
            self.expected[off] = self.slot_crc[slot]
        elif self.job.verify and off in self.expected:
            got = wire.crc32c(self.iov.view[slot * bs : slot * bs + result])
            self.verified += 1
            self.verify_errors += got != self.expected[off]
        return int(slot)

    def verify_all(self) -> None:
        """After a write job with verify: read every written block back."""
        if not self.job.verify or self.job.read_share > 0 or not self.expected:
            return
        rfd = self._open("rb")
        saved = self.read
        self.read = DirStats()
        self._drive([(True, off) for off in sorted(self.expected)], {True: rfd})
        self.read = saved

    def close(self) -> None:
        for fd in self.fds:
            self.u.close(fd)
        self.u.free_iovec(self.iov)
