"""Start, watch and stop py3fs service processes (used by the launcher and tests).

A service is `python -m <module> ... --ready-file F`; it is ready once it has
written F (see `py3fs.app`). Output goes to a log file; a process that exits
before it is ready raises with the tail of that log, so failures explain themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ServiceStartError(RuntimeError):
    pass


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ServiceProc:
    """One service process. `args` follow `python -m module`; the ready file and
    the log live in `run_dir`."""

    role: str
    node_id: int
    module: str
    args: list[str]
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    # Prepended to the command, e.g. ["ip", "netns", "exec", NS] to run the
    # service in a network namespace (partition tests); must exec the command
    # so the pid stays the service's.
    prefix: list[str] = field(default_factory=list)
    popen: subprocess.Popen[bytes] | None = None
    address: str = ""
    pid: int = 0

    @property
    def name(self) -> str:
        return f"{self.role}-{self.node_id}"

    @property
    def ready_file(self) -> Path:
        return self.run_dir / f"{self.name}.ready"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    def command(self) -> list[str]:
        """What `spawn` runs: the argv plus the ready-file handshake."""
        return [*self.argv(), "--ready-file", str(self.ready_file)]

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(
                [*self.prefix, *self.command()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                info: dict[str, Any] = json.loads(self.ready_file.read_text())
                self.address = info["address"]
                return info
            if self.popen is not None and self.popen.poll() is not None:
                raise ServiceStartError(
                    f"{self.name} exited with status {self.popen.returncode} before "
                    f"it was ready; log {self.log_file}:\n{log_tail(self.log_file)}"
                )
            time.sleep(0.02)
        raise ServiceStartError(
            f"{self.name} not ready after {timeout:.0f}s; log {self.log_file}:\n"
            f"{log_tail(self.log_file)}"
        )

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.pid and self.running():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return
        if self.popen is not None and sig == signal.SIGKILL:
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if not self.pid or not self.running():
            return
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                break
            time.sleep(0.02)
        else:
            self.kill(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
