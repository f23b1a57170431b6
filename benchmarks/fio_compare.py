"""One fio job file three ways: fio on the py3fs FUSE mount, `py3fs bench`
(USRBIO, no kernel in the data path) and fio on a local directory.

    python benchmarks/fio_compare.py JOBFILE [--cluster FILE] [--mount DIR]
                                             [--local DIR]

`directory=` in the job file is a py3fs path; for fio it is placed under the
mount (or the local directory). A column whose tool or mount is missing is
skipped with a note. Prints bandwidth (MB/s) and IOPS per job and direction,
and the ratios USRBIO/FUSE and USRBIO/local (the goal: sequential read through
USRBIO at least 2x the FUSE figure), then the settings every column ran with.

Every column runs at the same depth (`--iodepth`, default: the job file's
global iodepth, else 1) and without a client page cache: USRBIO keeps that many
ios in flight per job; fio opens with O_DIRECT (direct=1) and uses
ioengine=psync at depth 1, libaio above it (buffered libaio would complete each
io in the submitting call, so only O_DIRECT keeps several in flight). Server
page caches are not dropped here; benchmarks/peers.py runs cold-cache reads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

PY3FS_ONLY = ("chunk_size",)
# Set by this script on every side, so a job file cannot make them differ.
FORCED = ("ioengine", "iodepth", "direct", "fallocate")


def job_iodepth(text: str) -> int:
    m = re.search(r"^\s*iodepth\s*=\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else 1


def fio_engine(iodepth: int) -> str:
    return "psync" if iodepth == 1 else "libaio"


def _rewrite(text: str, forced: list[str], drop: tuple[str, ...]) -> str:
    out = []
    for line in text.splitlines():
        if line.split("=", 1)[0].strip() in drop:
            continue
        out.append(line)
        if re.fullmatch(r"\s*\[global\]\s*", line):
            out.extend(forced)
    if not any(re.fullmatch(r"\s*\[global\]\s*", line) for line in out):
        out = ["[global]", *forced, *out]
    return "\n".join(out) + "\n"


def usrbio_job_text(text: str, iodepth: int) -> str:
    """The job file for `py3fs bench`: the same depth as fio's."""
    return _rewrite(text, [f"iodepth={iodepth}"], ("iodepth",))


def fio_job_text(text: str, root: str, iodepth: int = 1) -> str:
    """The job file for fio: paths under `root`, py3fs-only keys dropped, and
    the engine, depth and O_DIRECT forced as the module docstring says."""
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ("directory", "filename"):
            value = line.split("=", 1)[1].strip()
            line = f"{key}={root.rstrip('/')}/{value.lstrip('/')}"
        out.append(line)
    forced = [
        # fio preallocates with fallocate, which a FUSE mount may refuse.
        "fallocate=none",
        f"ioengine={fio_engine(iodepth)}",
        f"iodepth={iodepth}",
        "direct=1",
    ]
    return _rewrite("\n".join(out), forced, PY3FS_ONLY + FORCED)


def _dirs(text: str, root: str) -> None:
    for m in re.finditer(r"^\s*directory\s*=\s*(\S+)", text, re.M):
        os.makedirs(os.path.join(root, m.group(1).lstrip("/")), exist_ok=True)


def run_fio(text: str, root: str, iodepth: int) -> dict[str, Any]:
    _dirs(text, root)
    with tempfile.NamedTemporaryFile("w", suffix=".fio", delete=False) as f:
        f.write(fio_job_text(text, root, iodepth))
    try:
        out = subprocess.run(
            ["fio", "--output-format=json", f.name],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout[out.stdout.index("{") :])  # type: ignore[no-any-return]


def run_usrbio(text: str, cluster: str | None, iodepth: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".fio", delete=False) as f:
        f.write(usrbio_job_text(text, iodepth))
    cmd = [sys.executable, "-m", "py3fs", "bench", f.name, "--output-format=json"]
    if cluster:
        cmd += ["--cluster", cluster]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def figures(report: dict[str, Any]) -> dict[tuple[str, str], tuple[float, float]]:
    """(job, read|write) -> (MB/s, IOPS), summed over a job's instances."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for job in report["jobs"]:
        for side in ("read", "write"):
            st = job[side]
            if not st["io_bytes"]:
                continue
            bw, iops = out.get((job["jobname"], side), (0.0, 0.0))
            out[(job["jobname"], side)] = (
                bw + st["bw_bytes"] / 1e6,
                iops + st["iops"],
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jobfile")
    ap.add_argument("--cluster", default=os.environ.get("PY3FS_CLUSTER"))
    ap.add_argument("--mount", help="a py3fs FUSE mount of the same cluster")
    ap.add_argument("--local", help="a local directory (default: a temp dir)")
    ap.add_argument(
        "--iodepth",
        type=int,
        help="ios in flight per job on every side (default: the job file's)",
    )
    args = ap.parse_args()
    with open(args.jobfile) as f:
        text = f.read()
    depth = args.iodepth or job_iodepth(text)
    notes = []
    cols: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    have_fio = shutil.which("fio") is not None
    if not have_fio:
        notes.append("fio is not installed: FUSE and local columns skipped")
    if have_fio and args.mount and os.path.ismount(args.mount):
        cols["fuse"] = figures(run_fio(text, args.mount, depth))
    elif have_fio:
        notes.append("no --mount given (or not mounted): FUSE column skipped")
    cols["usrbio"] = figures(run_usrbio(text, args.cluster, depth))
    if have_fio:
        with tempfile.TemporaryDirectory(dir=args.local) as local:
            cols["local"] = figures(run_fio(text, local, depth))
    names = list(cols)
    head = f"{'job':<14}{'dir':<6}" + "".join(f"{n + ' MB/s':>14}" for n in names)
    head += "".join(f"{n + ' IOPS':>14}" for n in names)
    ratios = [(a, b) for a, b in (("usrbio", "fuse"), ("usrbio", "local")) if b in cols]
    head += "".join(f"{a + '/' + b:>16}" for a, b in ratios)
    print(head)
    for key in cols["usrbio"]:
        row = f"{key[0]:<14}{key[1]:<6}"
        row += "".join(f"{cols[n].get(key, (0, 0))[0]:>14.1f}" for n in names)
        row += "".join(f"{cols[n].get(key, (0, 0))[1]:>14.0f}" for n in names)
        for a, b in ratios:
            den = cols[b].get(key, (0, 0))[0]
            row += f"{cols[a][key][0] / den:>15.2f}x" if den else f"{'-':>16}"
        print(row)
    print(
        f"settings: iodepth={depth} per job on every side; fio ioengine="
        f"{fio_engine(depth)} direct=1 fallocate=none; usrbio iodepth={depth}"
        " (no client page cache on any side)"
    )
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
