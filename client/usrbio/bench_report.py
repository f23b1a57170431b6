"""Results of `py3fs bench`: latency statistics and fio-shaped output."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95]
PERCENTILES += [99.99]


@dataclass
class DirStats:
    """One direction (read or write) of one job, summed over its instances."""

    io_bytes: int = 0
    ios: int = 0
    errors: int = 0
    lat_ns: list[int] = field(default_factory=list)
    runtime_s: float = 0.0

    def merge(self, other: DirStats) -> None:
        self.io_bytes += other.io_bytes
        self.ios += other.ios
        self.errors += other.errors
        self.lat_ns += other.lat_ns
        self.runtime_s = max(self.runtime_s, other.runtime_s)

    def percentiles(self) -> dict[str, int]:
        if not self.lat_ns:
            return {f"{p:.6f}": 0 for p in PERCENTILES}
        ordered = sorted(self.lat_ns)
        n = len(ordered)
        return {
            f"{p:.6f}": ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))]
            for p in PERCENTILES
        }

    def to_fio(self) -> dict[str, Any]:
        rt = self.runtime_s or 1e-9
        lat = self.lat_ns or [0]
        clat = {
            "min": min(lat),
            "max": max(lat),
            "mean": statistics.fmean(lat),
            "stddev": statistics.pstdev(lat) if len(lat) > 1 else 0.0,
            "N": len(self.lat_ns),
            "percentile": self.percentiles(),
        }
        return {
            "io_bytes": self.io_bytes,
            "io_kbytes": self.io_bytes // 1024,
            "bw_bytes": int(self.io_bytes / rt),
            "bw": int(self.io_bytes / rt / 1024),  # KiB/s, as fio
            "iops": self.ios / rt,
            "runtime": int(rt * 1000),
            "total_ios": self.ios,
            "short_ios": 0,
            "drop_ios": 0,
            "clat_ns": clat,
            "lat_ns": clat,
        }


@dataclass
class JobResult:
    name: str
    numjobs: int
    read: DirStats = field(default_factory=DirStats)
    write: DirStats = field(default_factory=DirStats)
    verify_errors: int = 0
    verified: int = 0
    options: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> int:
        return int(bool(self.read.errors or self.write.errors or self.verify_errors))

    def to_fio(self) -> dict[str, Any]:
        return {
            "jobname": self.name,
            "groupid": 0,
            "error": self.error,
            "job options": self.options,
            "read": self.read.to_fio(),
            "write": self.write.to_fio(),
            "trim": DirStats().to_fio(),
            "verify": {"verified_ios": self.verified, "errors": self.verify_errors},
            "py3fs": {"engine": "usrbio", "numjobs": self.numjobs},
        }


def to_json(results: list[JobResult]) -> dict[str, Any]:
    return {
        "fio version": "py3fs-bench-1",
        "global options": {},
        "jobs": [r.to_fio() for r in results],
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    raise AssertionError


def _dir_text(label: str, st: DirStats) -> list[str]:
    if not st.ios:
        return []
    rt = st.runtime_s or 1e-9
    bw = st.io_bytes / rt
    iops = st.ios / rt
    iops_s = f"{iops / 1000:.1f}k" if iops >= 10_000 else f"{iops:.0f}"
    lat = st.to_fio()["clat_ns"]
    pct = st.percentiles()
    lines = [
        f"  {label}: IOPS={iops_s}, BW={_size(bw)}/s ({bw / 1e6:.1f}MB/s)"
        f"({_size(st.io_bytes)}/{int(rt * 1000)}msec)",
        f"    clat (usec): min={lat['min'] / 1e3:.0f}, max={lat['max'] / 1e3:.0f},"
        f" avg={lat['mean'] / 1e3:.2f}, stdev={lat['stddev'] / 1e3:.2f}",
        "    clat percentiles (usec):",
    ]
    items = [f"{float(k):5.2f}th=[{v // 1000:>6}]" for k, v in pct.items()]
    for i in range(0, len(items), 4):
        lines.append("     | " + ", ".join(items[i : i + 4]) + ",")
    if st.errors:
        lines.append(f"    io errors: {st.errors}")
    return lines


def to_text(results: list[JobResult]) -> str:
    out = []
    for r in results:
        out.append(
            f"{r.name}: (groupid=0, jobs={r.numjobs}): err={r.error:2d}: "
            f"engine=py3fs-usrbio"
        )
        out += _dir_text("read", r.read)
        out += _dir_text("write", r.write)
        if r.verified or r.verify_errors:
            out.append(f"  verify: {r.verified} blocks, {r.verify_errors} errors")
    return "\n".join(out) + "\n"
