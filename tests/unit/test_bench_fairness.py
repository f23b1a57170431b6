"""The benchmark scripts run every side with the same settings (issue 14, item 6):
the same depth and engine for fio and USRBIO, the same durability for the KV
cache and its local file, and ratios that read the same way for rates and times."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from client.usrbio.bench import parse_jobs

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec
    assert spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fio_compare = _load("fio_compare")
peers = _load("peers")


def _fio_opts(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in text.splitlines()
        if "=" in line and line[0] != ";"
    )


@pytest.mark.parametrize("job", ["seq.fio", "rand.fio"])
@pytest.mark.parametrize("depth", [None, 1, 4])
def test_fio_compare_same_depth_both_sides(job: str, depth: int | None) -> None:
    text = (BENCH / "jobs" / job).read_text()
    want = depth or fio_compare.job_iodepth(text)
    fio = _fio_opts(fio_compare.fio_job_text(text, "/mnt/x", want))
    usrbio = parse_jobs(fio_compare.usrbio_job_text(text, want))
    assert int(fio["iodepth"]) == want
    assert all(j.iodepth == want for j in usrbio)
    # Above depth 1, fio must be able to keep that many ios in flight.
    assert fio["ioengine"] == ("psync" if want == 1 else "libaio")
    assert fio["direct"] == "1"
    assert fio["directory"].startswith("/mnt/x/")
    assert "chunk_size" not in fio


def test_job_file_engine_cannot_override_the_forced_one() -> None:
    text = "[global]\nioengine=psync\niodepth=16\ndirect=0\n[a]\nrw=read\n"
    fio = fio_compare.fio_job_text(text, "/m", 16)
    assert fio.count("ioengine=") == 1
    assert "ioengine=libaio" in fio
    assert fio.count("direct=") == 1
    assert "direct=1" in fio


@pytest.mark.parametrize("depth", [1, 8])
@pytest.mark.parametrize(
    ("rw", "bs"), [("write", "1M"), ("read", "1M"), ("randread", "4k")]
)
def test_peers_fio_and_usrbio_jobs_match(depth: int, rw: str, bs: str) -> None:
    s = peers.Settings.make(quick=True, iodepth=depth)
    fio = _fio_opts(peers.job_text("/mnt/d", rw, bs, s, fio=True))
    (usrbio,) = parse_jobs(peers.job_text("/d", rw, bs, s, fio=False))
    assert usrbio.iodepth == int(fio["iodepth"]) == depth
    assert usrbio.numjobs == int(fio["numjobs"])
    assert usrbio.rw == fio["rw"] == rw
    assert usrbio.bs == (1 << 20 if bs == "1M" else 4096)
    assert fio["ioengine"] == ("psync" if depth == 1 else "libaio")
    # Both read the files the write job left: fio's default name is USRBIO's.
    assert usrbio.path(2) == "/d/seq.2.0"


def test_ratio_reads_the_same_for_rates_and_times() -> None:
    assert peers.ratio("create ops/s, 1p", 200.0, 100.0) == 2.0
    assert peers.ratio("fio seq read 1M, MB/s", 50.0, 100.0) == 0.5
    # A time half the peer's is twice as fast.
    assert peers.ratio("tar xf, 300 files, s", 1.0, 2.0) == 2.0
    assert peers.ratio("git clone, s", None, 2.0) is None


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_peers_runs_end_to_end_on_a_local_dir(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(BENCH / "peers.py"), "--quick", "--systems", "local"]
    cmd += ["--only", "meta,tools", "--meta-files", "40", "--json", str(out)]
    cmd += ["--tmp", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    assert r["values"]["create ops/s, 4p"]["local"] > 0
    assert r["values"]["git clone, s"]["local"] > 0
    assert "meta: 40 files" in done.stdout
    assert not r["notes"], r["notes"]
    # Everything it made lived in its own folder, and that folder is gone.
    assert list(tmp_path.iterdir()) == [out]
