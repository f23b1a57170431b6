"""The real `fio` against the mount (issue 4, acceptance 1): sequential 1 MiB
write and read, 4 KiB random write and read, 4 jobs each, every block checked
with crc32c. Sizes are small to keep the run short; the bandwidth seen is
printed (run with -s) and lands in the test's JSON for benchmarks to read."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("fio") is None, reason="fio is not installed (apt-get install fio)"
)

JOBS = """
[global]
directory={directory}
ioengine=psync
# pyfuse3 has no fallocate; fio would only warn, but skip the attempt.
fallocate=none
numjobs=4
group_reporting=1
verify=crc32c
verify_fatal=1
verify_state_save=0

[seq-write]
rw=write
bs=1M
size=32M
filename_format=seq.$jobnum

[seq-read]
stonewall
rw=read
bs=1M
size=32M
filename_format=seq.$jobnum

[rand-write]
stonewall
rw=randwrite
bs=4k
size=1M
filename_format=rand.$jobnum

[rand-read]
stonewall
rw=randread
bs=4k
size=1M
filename_format=rand.$jobnum
"""


def test_fio_verify(mnt: Path, tmp_path: Path) -> None:
    job = tmp_path / "mount.fio"
    job.write_text(JOBS.format(directory=mnt))
    out = subprocess.run(
        ["fio", "--output-format=json", str(job)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr + out.stdout[-4000:]
    report = json.loads(out.stdout[out.stdout.index("{") :])
    summary = {}
    for job_report in report["jobs"]:
        name = job_report["jobname"]
        assert job_report["error"] == 0, (name, job_report["error"])
        side = "write" if "write" in name else "read"
        stats = job_report[side]
        assert stats["io_bytes"] > 0, name
        summary[name] = {
            "MB/s": round(stats["bw_bytes"] / 1e6, 1),
            "IOPS": round(stats["iops"]),
        }
    assert set(summary) == {"seq-write", "seq-read", "rand-write", "rand-read"}
    print(json.dumps(summary))
    (tmp_path / "fio-summary.json").write_text(json.dumps(summary))
