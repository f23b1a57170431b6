"""Mounting: checks, mount options, the event loop, signals, daemon mode.

The mount shows in /proc/self/mountinfo as fs type `fuse.hf3fs` with source
`hf3fs` (mount options `subtype=hf3fs`, `fsname=hf3fs`), which is what 3FS's
USRBIO library and the programs written for it look for.

Before mounting, the cluster is asked for its root: a mount of a cluster that
cannot be reached fails at once instead of serving EIO. `--daemon` forks
before mounting; the parent waits on a pipe until the child has mounted (or
failed, with the reason and its log file), so a caller that sees the command
return 0 can use the mount at once. A daemon logs to `--log-file`, by default
`daemon_log_file(mountpoint)`. SIGTERM/SIGINT end the FUSE loop; open files are closed
(ending their write sessions), the agent stopped and the mount removed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable

import pyfuse3
import pyfuse3.asyncio
import uvloop

from client import Client, ClientConfig, load_client_config
from fuse_mount.hooks import load_agent
from fuse_mount.operations import Operations
from py3fs import errors, log

logger = logging.getLogger(__name__)
FS_TYPE = "fuse.hf3fs"
# How long mounting waits for the cluster to answer before giving up, seconds.
PROBE_TIMEOUT = 15.0


class MountError(Exception):
    """A reason the mount cannot start, for a one-line message."""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount."""
    out = []
    with open(mountinfo) as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), fields[sep + 1]))
    return out


def is_mounted(path: str, fs_type: str | None = None) -> bool:
    path = os.path.realpath(path)
    return any(p == path and fs_type in (None, t) for p, t in mounts())


def check(mountpoint: str) -> str:
    """The canonical mount point, or MountError saying why it cannot be used."""
    path = os.path.realpath(mountpoint)
    if not os.path.isdir(path):
        raise MountError(f"{mountpoint} is not a directory")
    if is_mounted(path):
        raise MountError(f"{mountpoint} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise MountError("no /dev/fuse: the kernel has no FUSE (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("cannot open /dev/fuse (mounting needs root here)")
    return path


def daemon_log_file(mountpoint: str) -> str:
    """Where a daemon without --log-file logs: one file per user and mount point."""
    name = os.path.realpath(mountpoint).strip("/").replace("/", "_") or "root"
    return os.path.join(tempfile.gettempdir(), f"py3fs-mount-{os.getuid()}-{name}.log")


async def probe(client: Client, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise unless mgmtd and a meta service answer within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await client.routing.refresh()
            await client.stat("/")
    except TimeoutError:
        raise errors.RPCTimeout(
            f"the cluster did not answer within {timeout:.0f}s"
        ) from None


# Request tasks pyfuse3 keeps waiting for the next request when idle.
IDLE_TASKS = 16

# Kernel read-ahead for the mount, in KiB. The kernel asks for at most 1 MiB per
# READ (FUSE_MAX_PAGES, which libfuse 3 negotiates), but only as much as its
# read-ahead window, which defaults to 128 KiB: 128 KiB requests spend most of
# their time in per-request overhead. 4 MiB keeps four 1 MiB reads in flight.
READ_AHEAD_KB = 4096


def _device_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The "major:minor" of the mount at `path`, without a request to it (our
    own loop, which would answer a stat, is not running yet)."""
    device = None
    with open(mountinfo) as fh:
        for line in fh:
            fields = line.split()
            if _unescape(fields[4]) == path:
                device = fields[2]  # the last one: mounted over any earlier
    return device


def set_read_ahead(path: str, kb: int = READ_AHEAD_KB) -> bool:
    """Widen the mount's read-ahead window (needs root); False if it cannot."""
    device = _device_of(path)
    if device is None:
        return False
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as fh:
            fh.write(str(kb))
    except OSError as exc:
        logger.info("read-ahead of %s left at the default: %s", path, exc)
        return False
    return True


async def widen_read_ahead(path: str, kb: int = READ_AHEAD_KB) -> bool:
    """`set_read_ahead` once the kernel has the FUSE INIT reply: INIT sets the
    window to at most the reply's max_readahead, which libfuse echoes from the
    kernel's 128 KiB default, so a window set before it is cut back to 128 KiB
    (and every READ is 128 KiB). The first request the kernel lets through
    comes after INIT: a stat of the mount, from a thread, since this loop
    answers it."""
    try:
        await asyncio.to_thread(os.stat, path)
    except OSError as exc:
        logger.info("read-ahead of %s left at the default: %s", path, exc)
        return False
    return set_read_ahead(path, kb)


def options(debug: bool = False) -> set[str]:
    opts = {"fsname=hf3fs", "subtype=hf3fs", "default_permissions"}
    if os.geteuid() == 0:
        # Other users' processes may use the mount; default_permissions and
        # meta's per-request uid keep them to what mode bits allow.
        opts.add("allow_other")
    if debug:
        opts.add("debug")
    return opts


async def serve(
    client: Client,
    mountpoint: str,
    *,
    debug: bool = False,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount, serve until a signal or an external unmount, clean up."""
    agent = load_agent(mountpoint)
    ops = Operations(client, agent, mountpoint)
    pyfuse3.init(ops, mountpoint, options(debug))
    read_ahead: asyncio.Task[bool] | None = None
    try:
        await agent.start(client)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        logger.info("mounted py3fs at %s", mountpoint)
        ready()
        read_ahead = asyncio.ensure_future(widen_read_ahead(mountpoint))
        # Idle request tasks kept waiting: with upstream's one, every burst of
        # concurrent requests ends their extra tasks and the next starts new
        # ones (a task and its coroutines per request under steady load).
        await pyfuse3.main(min_tasks=IDLE_TASKS)
    finally:
        if read_ahead is not None and not read_ahead.done():
            read_ahead.cancel()
        try:
            await ops.aclose()
            await agent.aclose()
        finally:
            _watch.stop()
            pyfuse3.close(unmount=True)
            logger.info("unmounted %s", mountpoint)


def run(
    mountpoint: str,
    cluster_file: str | None = None,
    *,
    daemon: bool = False,
    debug: bool = False,
    pid_file: str | None = None,
    log_file: str | None = None,
) -> int:
    """The `py3fs mount` / `python -m fuse_mount` entry point; returns the exit
    status after printing any failure as one line."""
    try:
        path = check(mountpoint)
        config = load_client_config(cluster_file)
    except (MountError, OSError, errors.Py3fsError) as exc:
        print(f"py3fs mount: {exc}", file=sys.stderr)
        return 1
    if not daemon:
        log.setup("fuse", 0, "DEBUG" if debug else "INFO")
        return 0 if _serve(config, path, debug, lambda: None) is None else 1
    return _daemonize(
        path, config, debug, pid_file, log_file or daemon_log_file(mountpoint)
    )


class _FuseWatch:
    """pyfuse3's `wait_readable` / `notify_closing` for asyncio, cheaper and
    race-free.

    Upstream's registers /dev/fuse with the loop for every request and removes
    it again (in uvloop: a poll handle made, started, stopped and closed, two
    epoll_ctl calls): a few percent of the daemon's CPU per FUSE op. Here the
    fd stays registered while requests keep coming: the callback wakes the
    waiting task, which reads the request before the loop polls again. Only
    when the fd is readable and no task waits (every task busy) is it removed,
    since the loop's readiness is level-triggered and would fire on every
    iteration until a task reads; the next wait adds it back. Upstream's
    callback could also resolve a future twice (and its `notify_closing` fail
    one already resolved), raising InvalidStateError in the FUSE loop, most
    often at unmount; here every resolution checks first.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._watched: dict[int, asyncio.AbstractEventLoop] = {}

    async def wait_readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiting = self._waiting.get(fd)
        if waiting is None:
            waiting = self._waiting[fd] = []
        waiting.append(future)
        if self._watched.get(fd) is not loop:
            self._unwatch(fd)
            loop.add_reader(fd, self._readable, fd)
            self._watched[fd] = loop
        try:
            await future
        finally:
            if not future.done():
                future.cancel()
            try:
                waiting.remove(future)
            except ValueError:
                pass  # woken: _readable took it off

    def _readable(self, fd: int) -> None:
        waiting = self._waiting.get(fd)
        if not waiting:
            self._unwatch(fd)
            return
        for future in waiting:
            if not future.done():
                future.set_result(None)
        waiting.clear()

    def _unwatch(self, fd: int) -> None:
        loop = self._watched.pop(fd, None)
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)

    def notify_closing(self, fd: int) -> None:
        self._unwatch(fd)
        for future in self._waiting.pop(fd, ()):
            if not future.done():
                future.set_exception(pyfuse3.asyncio.ClosedResourceError())

    def stop(self) -> None:
        """Stop watching every fd (the session's is about to be closed)."""
        for fd in list(self._watched):
            self._unwatch(fd)


_watch = _FuseWatch()


class _ReadLock:
    """asyncio.Lock for pyfuse3's read lock (the one task at a time that waits
    for and reads the next request), without asyncio.Lock's per-call costs
    (its loop lookup, and a generator over its waiters on every acquire):
    every FUSE request passes through it twice. FIFO; a release hands the lock
    straight to the first live waiter."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        return self._locked

    async def acquire(self) -> bool:
        if not self._locked:
            self._locked = True
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed the lock as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            raise
        return True  # handed over by release(): _locked stayed True

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("Lock is not acquired.")
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _enable_asyncio() -> None:
    """Switch pyfuse3 to asyncio, with `_FuseWatch` waiting for requests."""
    pyfuse3.asyncio.enable()
    pyfuse3.asyncio.wait_readable = _watch.wait_readable  # type: ignore[assignment]
    pyfuse3.asyncio.notify_closing = _watch.notify_closing  # type: ignore[assignment]
    # pyfuse3 makes its read lock with `trio.Lock()`, i.e. this module's Lock.
    pyfuse3.asyncio.Lock = _ReadLock  # type: ignore[misc,assignment]


def _serve(
    config: ClientConfig, path: str, debug: bool, ready: Callable[[], None]
) -> str | None:
    """Mount and serve until unmounted; returns None, or why it failed."""
    _enable_asyncio()

    async def main() -> None:
        # Built inside the loop: gRPC channels bind to the loop they start on.
        async with Client(config) as client:
            try:
                await probe(client)
            except errors.Py3fsError as exc:
                where = ", ".join(config.mgmt)
                msg = f"cannot reach the cluster at {where}: {exc}"
                raise MountError(msg) from None
            await serve(client, path, debug=debug, ready=ready)

    try:
        # uvloop, as the services: every FUSE request is a few socket sends
        # and receives to meta and storage. (`_FuseWatch` tolerates a reader
        # callback firing twice, which upstream's wait_readable does not.)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except MountError as exc:
        logger.error("mount of %s failed: %s", path, exc)
        print(f"py3fs mount: {exc}", file=sys.stderr)
        return str(exc)
    except Exception as exc:
        logger.exception("mount of %s failed", path)
        print(f"py3fs mount: {exc}", file=sys.stderr)
        return str(exc) or type(exc).__name__
    return None


def _daemonize(
    path: str,
    config: ClientConfig,
    debug: bool,
    pid_file: str | None,
    log_file: str,
) -> int:
    rfd, wfd = os.pipe()
    if os.fork():
        os.close(wfd)
        with os.fdopen(rfd, "rb") as pipe:
            answer = pipe.read().decode(errors="replace")
        if answer == "ok":
            return 0
        print(
            f"py3fs mount: {answer or 'the daemon exited before mounting'}",
            file=sys.stderr,
        )
        return 1
    os.close(rfd)
    os.setsid()
    sink = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    log.setup("fuse", 0, "DEBUG" if debug else "INFO")
    if pid_file:
        with open(pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")

    def ready() -> None:
        os.write(wfd, b"ok")
        os.close(wfd)

    failure = _serve(config, path, debug, ready)
    try:
        os.write(wfd, f"{failure or 'mount failed'} (log: {log_file})".encode())
        os.close(wfd)
    except OSError:
        pass  # already reported ready
    if pid_file:
        try:
            os.unlink(pid_file)
        except FileNotFoundError:
            pass
    os._exit(0 if failure is None else 1)
