"""deploy/ end to end: build the image (debootstrap + docker import, no registry),
run deploy/docker-compose.yml (3 etcd, 2 mgmtd, 2 meta, 3 storage, a FUSE client,
each its own container), write through the client container's mount and through
the library while a storage container and a meta container are `docker kill`ed,
and check that every acknowledged write reads back, also after `down` / `up`.

Needs root, docker (dockerd is started here when none runs, and stopped again),
docker-compose and debootstrap: scripts/bootstrap.sh installs them. Skipped, with
the reason, where they cannot work. Slow (the first image build debootstraps a
Debian root: minutes), so marked `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from py3fs.etcd_local import free_ports

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
WORKLOAD = Path(__file__).with_name("workload.py")
PROJECT = "py3fsci"
IMAGE = "py3fs:ci"
CLUSTER = "/etc/py3fs/cluster.toml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "docker, debootstrap and FUSE in containers need root"
    for tool in ("docker", "docker-compose", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap.sh installs it)"
    return None


def _docker_up() -> bool:
    return (
        subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode
        == 0
    )


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A docker daemon: the running one, or one started here (stopped after)."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    started: subprocess.Popen[bytes] | None = None
    if not _docker_up():
        if shutil.which("dockerd") is None:
            pytest.skip("no docker daemon and no dockerd to start")
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        with log.open("wb") as out:
            started = subprocess.Popen(
                ["dockerd"], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while not _docker_up():
            if started.poll() is not None or time.monotonic() > deadline:
                started.kill()
                pytest.skip(f"dockerd does not start here: {log.read_text()[-500:]}")
            time.sleep(0.5)
    try:
        yield
    finally:
        if started is not None:
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()


def compose(*args: str, check: bool = True, timeout: float = 600) -> str:
    env = {
        **os.environ,
        "PY3FS_IMAGE": IMAGE,
        "PY3FS_STATUS_PORT": str(free_ports(1)[0]),
        "PY3FS_STATUS_PORT2": str(free_ports(1)[0]),
    }
    proc = subprocess.run(
        ["docker-compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker-compose {args} failed:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def container(service: str) -> str:
    return compose("ps", "-q", service).strip()


def in_client(*cmd: str, check: bool = True, timeout: float = 300) -> str:
    return compose("exec", "-T", "client", *cmd, check=check, timeout=timeout)


def wait_ready(timeout: float = 300) -> None:
    """Until the chain table is there, all targets serve and the mount is up."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = compose(
            "exec",
            "-T",
            "client",
            "sh",
            "-c",
            f"grep -q ' /mnt/py3fs ' /proc/mounts && "
            f"py3fs admin list-chains --json --cluster {CLUSTER}",
            check=False,
        )
        try:
            chains = json.loads(out)
        except ValueError:
            last = out[-300:]
        else:
            states = {t["state"] for c in chains for t in c["targets"]}
            if chains and states == {"serving"}:
                return
            last = str(states)
        time.sleep(2)
    logs = compose("logs", "--tail", "20", check=False)
    raise AssertionError(f"cluster not ready: {last}\n{logs[-4000:]}")


@pytest.fixture(scope="module")
def cluster(docker: None) -> Iterator[None]:
    subprocess.run(
        [str(REPO / "deploy" / "build-image.sh"), IMAGE],
        check=True,
        timeout=2400,
        cwd=REPO,
    )
    compose("down", "-v", check=False)
    try:
        compose("up", "-d")
        wait_ready()
        yield
    finally:
        compose("down", "-v", check=False)


def verify(acked: list[str], tmp_path: Path) -> dict[str, object]:
    listing = tmp_path / "acked.jsonl"
    listing.write_text("\n".join(acked) + "\n")
    client = container("client")
    for src, dst in ((listing, "/tmp/acked.jsonl"), (WORKLOAD, "/tmp/workload.py")):
        subprocess.run(["docker", "cp", str(src), f"{client}:{dst}"], check=True)
    try:
        out = in_client("python", "/tmp/workload.py", "verify", "/tmp/acked.jsonl")
    except AssertionError as exc:
        logs = compose("logs", "--tail", "80", "client", check=False)
        raise AssertionError(f"{exc}\nthe client container's log:\n{logs}") from None
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        logs = compose("logs", "--tail", "80", "client", check=False)
        print(f"\nread errors, each read again: {result['errors']}\n{logs}")
    return result


def test_compose_cluster_survives_kills_and_restarts(
    cluster: None, tmp_path: Path
) -> None:
    client = container("client")
    subprocess.run(
        ["docker", "cp", str(WORKLOAD), f"{client}:/tmp/workload.py"], check=True
    )
    writer = subprocess.Popen(
        [
            "docker-compose",
            "-p",
            PROJECT,
            "-f",
            str(COMPOSE_FILE),
            "exec",
            "-T",
            "client",
            "python",
            "/tmp/workload.py",
            "write",
            "40",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PY3FS_IMAGE": IMAGE},
    )
    time.sleep(12)
    victims = [container("storage2"), container("meta1")]
    killed_at = time.time()
    subprocess.run(["docker", "kill", *victims], check=True, capture_output=True)
    out, err = writer.communicate(timeout=600)
    assert writer.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    acked = [json.dumps(x) for x in lines if "sha256" in x]
    after_kill = [x for x in lines if "sha256" in x and x["t"] > killed_at + 5]
    print(
        f"\n{len(acked)} writes acknowledged, "
        f"{sum('failed' in x for x in lines)} failed, "
        f"{len(after_kill)} acknowledged from 5 s after the kills"
    )
    assert len(acked) >= 10
    assert after_kill, "the cluster stopped acknowledging writes after the kills"
    result = verify(acked, tmp_path)
    assert result["bad"] == []
    assert result["ok"] == len(acked)

    # Containers gone, volumes kept: everything comes back, data included.
    compose("down")
    compose("up", "-d")
    wait_ready()
    result = verify(acked, tmp_path)
    assert result["bad"] == []
    assert result["ok"] == len(acked)
