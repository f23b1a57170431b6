"""One fio job file three ways: fio on the py3fs FUSE mount, `py3fs bench`
(USRBIO, no kernel in the data path) and fio on a local directory.

    python benchmarks/fio_compare.py JOBFILE [--cluster FILE] [--mount DIR]
                                             [--local DIR]

`directory=` in the job file is a py3fs path; for fio it is placed under the
mount (or the local directory). A column whose tool or mount is missing is
skipped with a note. Prints bandwidth (MB/s) and IOPS per job and direction,
and the ratios USRBIO/FUSE and USRBIO/local (the goal: sequential read through
USRBIO at least 2x the FUSE figure).
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


def fio_job_text(text: str, root: str) -> str:
    """The job file for fio: paths under `root`, py3fs-only keys dropped."""
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in PY3FS_ONLY:
            continue
        if key in ("directory", "filename"):
            value = line.split("=", 1)[1].strip()
            line = f"{key}={root.rstrip('/')}/{value.lstrip('/')}"
        out.append(line)
        if re.fullmatch(r"\s*\[global\]\s*", line):
            # fio preallocates with fallocate, which a FUSE mount may refuse.
            out.append("fallocate=none")
            out.append("ioengine=psync")
    return "\n".join(out) + "\n"


def _dirs(text: str, root: str) -> None:
    for m in re.finditer(r"^\s*directory\s*=\s*(\S+)", text, re.M):
        os.makedirs(os.path.join(root, m.group(1).lstrip("/")), exist_ok=True)


def run_fio(text: str, root: str, mount: bool) -> dict[str, Any]:
    _dirs(text, root)
    with tempfile.NamedTemporaryFile("w", suffix=".fio", delete=False) as f:
        f.write(fio_job_text(text, root))
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


def run_usrbio(jobfile: str, cluster: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "py3fs", "bench", jobfile, "--output-format=json"]
    if cluster:
        cmd += ["--cluster", cluster]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
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
    args = ap.parse_args()
    with open(args.jobfile) as f:
        text = f.read()
    notes = []
    cols: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    have_fio = shutil.which("fio") is not None
    if not have_fio:
        notes.append("fio is not installed: FUSE and local columns skipped")
    if have_fio and args.mount and os.path.ismount(args.mount):
        cols["fuse"] = figures(run_fio(text, args.mount, True))
    elif have_fio:
        notes.append("no --mount given (or not mounted): FUSE column skipped")
    cols["usrbio"] = figures(run_usrbio(args.jobfile, args.cluster))
    if have_fio:
        with tempfile.TemporaryDirectory(dir=args.local) as local:
            cols["local"] = figures(run_fio(text, local, False))
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
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
