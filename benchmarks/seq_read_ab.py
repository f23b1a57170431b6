"""Sequential reads A/B: throughput and CPU per GiB of every process, with the
mount (fio) and USRBIO (`py3fs bench`) of several checkouts taking turns on
one cluster.

    python benchmarks/seq_read_ab.py --tmp DIR [--rounds 3] [--jobs 4]
        [--size 256M] [--what fio,usrbio] CHECKOUT [CHECKOUT ...]

The cluster runs from the first CHECKOUT (each one a py3fs work tree with its
own .venv); fio writes its files through the mount once and USRBIO its own,
then every round, for each CHECKOUT in turn, remounts with that checkout's
code, drops the page caches (needs root) and runs fio's sequential 1 MiB read
(psync, iodepth 1, as benchmarks/peers.py) and the same job through USRBIO
with that checkout's `py3fs bench`. Prints MB/s and CPU seconds per GiB read
(user + system, from /proc) of mgmtd, meta, each storage node, the mount and
the reader (fio or the bench process, which hosts the USRBIO agent; its
figure includes its start-up). Alternating on one cluster within minutes is
what makes the comparison fair on a shared host: rates swing with the load,
CPU per GiB much less. Everything it started is stopped and DIR/seq-ab
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def job(directory: str, rw: str, args: argparse.Namespace, fio: bool) -> str:
    lines = [
        "[global]",
        f"directory={directory}",
        "bs=1M",
        f"size={args.size}",
        f"numjobs={args.jobs}",
        "iodepth=1",
        "ioengine=psync",
        "group_reporting=1",
    ]
    if fio:
        lines += ["fallocate=none", "direct=0"]
        if rw == "write":
            lines.append("end_fsync=1")
    return "\n".join([*lines, "[seq]", f"rw={rw}", ""])


def mb_s(out: str) -> float:
    report = json.loads(out[out.index("{") :])
    return (
        sum(j["read"]["bw_bytes"] + j["write"]["bw_bytes"] for j in report["jobs"])
        / 1e6
    )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.tmp) / "seq-ab"
        self.data = self.work / "cluster"
        self.mnt = self.work / "mnt"
        self.pidf = self.work / "mount.pid"
        self.jobf = self.work / "job.fio"
        self.root = Path(args.checkouts[0])
        self.procs: dict[str, int] = {}

    def py(self, root: Path) -> str:
        return str(root / ".venv" / "bin" / "python")

    def run(self, cmd: list[str], root: Path) -> str:
        done = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
        return done.stdout

    def up(self) -> None:
        self.work.mkdir(parents=True)
        self.mnt.mkdir()
        py = self.py(self.root)
        self.run(
            [py, "-m", "py3fs", "cluster", "up", "--data-dir", str(self.data)],
            self.root,
        )
        status = json.loads(
            self.run(
                [
                    py,
                    "-m",
                    "py3fs",
                    "cluster",
                    "status",
                    "--json",
                    "--data-dir",
                    str(self.data),
                ],
                self.root,
            )
        )
        for row in status:
            if row.get("pid"):
                self.procs[f"{row['role']}{row.get('node_id', '')}"] = int(row["pid"])

    def mount(self, root: Path) -> None:
        self.unmount()
        cmd = [self.py(root), "-m", "py3fs", "mount", str(self.mnt)]
        cmd += ["--cluster", str(self.data / "cluster.toml"), "--daemon"]
        cmd += [
            "--pid-file",
            str(self.pidf),
            "--log-file",
            str(self.work / "mount.log"),
        ]
        self.run(cmd, root)
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            if time.monotonic() > deadline:
                raise RuntimeError("the mount did not come up")
            time.sleep(0.1)
        self.procs["mount"] = int(self.pidf.read_text().split()[0])

    def unmount(self) -> None:
        pid = self.procs.pop("mount", None)
        if pid is not None:
            try:
                os.kill(pid, 15)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)

    def down(self) -> None:
        self.unmount()
        if (self.data / "cluster.toml").exists():
            subprocess.run(
                [
                    self.py(self.root),
                    "-m",
                    "py3fs",
                    "cluster",
                    "down",
                    "--data-dir",
                    str(self.data),
                ],
                cwd=self.root,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self.work, ignore_errors=True)

    def io(self, root: Path, what: str, rw: str) -> float:
        if what == "fio":
            self.jobf.write_text(job(str(self.mnt / "fio"), rw, self.args, fio=True))
            return mb_s(self.run(["fio", "--output-format=json", str(self.jobf)], root))
        self.jobf.write_text(job("/seq-ab-usrbio", rw, self.args, fio=False))
        cmd = [self.py(root), "-m", "py3fs", "bench", str(self.jobf)]
        cmd += ["--output-format=json", "--cluster", str(self.data / "cluster.toml")]
        return mb_s(self.run(cmd, root))

    def read(self, root: Path, what: str) -> dict[str, Any]:
        drop_caches()
        before = {k: cpu_s(p) for k, p in self.procs.items()}
        kids = os.times()
        rate = self.io(root, what, "read")
        after = os.times()
        gib = self.args.jobs * parse_size(self.args.size) / (1 << 30)
        cpu = {k: (cpu_s(p) - before[k]) / gib for k, p in self.procs.items()}
        cpu["reader"] = (
            after.children_user
            + after.children_system
            - kids.children_user
            - kids.children_system
        ) / gib
        return {"checkout": root.name, "what": what, "MB/s": rate, "cpu_s_per_GiB": cpu}


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return (
        int(text[:-1]) * units[text[-1].upper()]
        if text[-1].upper() in units
        else int(text)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkouts", nargs="+")
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--what", default="fio,usrbio")
    args = ap.parse_args()
    what = args.what.split(",")
    bench = Bench(args)
    try:
        bench.up()
        bench.mount(bench.root)
        (bench.mnt / "fio").mkdir()
        for w in what:
            print(f"{w} write {bench.io(bench.root, w, 'write'):.0f} MB/s", flush=True)
        for _ in range(args.rounds):
            for checkout in args.checkouts:
                root = Path(checkout)
                if "fio" in what:
                    bench.mount(root)
                for w in what:
                    r = bench.read(root, w)
                    cpu = " ".join(
                        f"{k}={v:.2f}"
                        for k, v in r["cpu_s_per_GiB"].items()
                        if v >= 0.005
                    )
                    print(
                        f"{r['checkout']:>10} {w:>6} read {r['MB/s']:7.0f} MB/s"
                        f"  CPU s/GiB: {cpu}",
                        flush=True,
                    )
    finally:
        bench.down()


if __name__ == "__main__":
    main()
