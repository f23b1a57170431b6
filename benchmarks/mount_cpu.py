"""CPU the FUSE mount daemon spends per operation, measured from outside.

    python benchmarks/mount_cpu.py --pid PID --mount DIR [--pid PID2 --mount DIR2]
        [--kind meta|read] [--ops 3000] [--jobs 1] [--rounds 3]

Each `--mount` is a py3fs mount and each `--pid` its daemon (`--pid-file` of
`python -m fuse_mount`), in the same order. `meta` runs mkdir + stat + rmdir
of a fresh directory per iteration; `read` runs random 4 KiB O_DIRECT preads
of a 64 MiB file (written first if missing), so every read reaches the
daemon. `--jobs` processes run at once, each in its own directory. With two
mounts (say, old and new code over one cluster) the runs alternate, `--rounds`
times, so both see the same load. Prints, per run, iterations/s and the
daemon's CPU microseconds per iteration: all its threads' run time from
/proc/PID/task/*/schedstat (nanoseconds, unlike utime/stime's 10 ms ticks).
On a shared host the CPU figures are steadier than the rates.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import random
import time

READ_FILE = "mount_cpu_64m"
FILE_SIZE = 64 << 20
BS = 4096


def cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
            total += int(fh.read().split()[0])
    return total


def meta_job(mount: str, job: int, ops: int) -> None:
    base = os.path.join(mount, f"mount_cpu_{os.getpid()}_{job}")
    os.makedirs(base, exist_ok=True)
    for i in range(ops):
        path = f"{base}/d{i}"
        os.mkdir(path)
        os.stat(path)
        os.rmdir(path)
    os.rmdir(base)


def read_job(mount: str, job: int, ops: int) -> None:
    fd = os.open(os.path.join(mount, READ_FILE), os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BS)  # O_DIRECT wants an aligned buffer
    rng = random.Random(job)
    try:
        for _ in range(ops):
            os.preadv(fd, [buf], rng.randrange(FILE_SIZE // BS) * BS)
    finally:
        os.close(fd)


def prepare(mount: str) -> None:
    path = os.path.join(mount, READ_FILE)
    if not os.path.exists(path) or os.path.getsize(path) != FILE_SIZE:
        with open(path, "wb") as fh:
            fh.write(os.urandom(FILE_SIZE))


def run(pid: int, mount: str, kind: str, ops: int, jobs: int) -> tuple[float, float]:
    """(iterations/s, daemon CPU µs per iteration) of one run."""
    target = meta_job if kind == "meta" else read_job
    target(mount, -1, 50)  # warm: connections, capabilities, caches
    procs = [
        multiprocessing.Process(target=target, args=(mount, j, ops))
        for j in range(jobs)
    ]
    c0, t0 = cpu_ns(pid), time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a {kind} job failed on {mount}")
    c1, t1 = cpu_ns(pid), time.perf_counter()
    n = ops * jobs
    return n / (t1 - t0), (c1 - c0) / 1e3 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pid", type=int, action="append", required=True)
    parser.add_argument("--mount", action="append", required=True)
    parser.add_argument("--kind", choices=["meta", "read"], default="meta")
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if len(args.pid) != len(args.mount):
        parser.error("give one --pid per --mount")
    if args.kind == "read":
        for mount in args.mount:
            prepare(mount)
    results: dict[str, list[float]] = {m: [] for m in args.mount}
    for r in range(args.rounds):
        for pid, mount in zip(args.pid, args.mount, strict=True):
            rate, us = run(pid, mount, args.kind, args.ops, args.jobs)
            results[mount].append(us)
            print(
                f"round {r + 1} {mount}: {args.kind} x{args.jobs} "
                f"{rate:,.0f}/s, daemon CPU {us:.1f} us per iteration",
                flush=True,
            )
    for mount, values in results.items():
        mean = sum(values) / len(values)
        print(f"{mount}: mean daemon CPU {mean:.1f} us per iteration")


if __name__ == "__main__":
    main()
