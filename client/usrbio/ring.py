"""I/O rings in shared memory: the protocol between a program and the agent.

A ring is one /dev/shm file: a 64-byte header, `entries` submission entries (SQEs)
and `entries` completion entries (CQEs). The program is the only producer of SQEs
and consumer of CQEs; the agent the reverse, so every index has a single writer and
no lock is needed. Counters grow without wrapping; slot = counter % entries.
Stores of aligned 8-byte counters are single moves on x86-64 and the
program writes an entry before publishing the counter that covers it (TSO keeps
that order for the reader).

Wake-ups go through two FIFOs beside the shm file (`.sub`: program → agent on
submit, `.cmp`: agent → program after posting completions). A byte in a FIFO
persists until drained, so a wake-up posted before the other side sleeps is never
lost; pure Python cannot share POSIX semaphores, which is what 3FS uses here.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import struct
import time
import uuid
from dataclasses import dataclass

MAGIC = 0x33465352  # "3FSR"
_HEADER = struct.Struct(
    "<IIIIiiI4x"
)  # magic, version, entries, read, depth, tmo, flags
HEADER_SIZE = 64
_SQ_TAIL, _SQ_HEAD, _CQ_TAIL, _CQ_HEAD = 32, 40, 48, 56
_U64 = struct.Struct("<Q")
# iov uuid, buffer offset, inode, file offset, length, tag, pad
SQE = struct.Struct("<16sQQQQI4x")
SQE_SIZE = 64
CQE = struct.Struct("<I4xq")  # tag, result (bytes done or -errno)
CQE_SIZE = 16

FLAG_READ_UNCOMMITTED = 1
FLAG_FORBID_READ_HOLES = 2


def size_for_entries(entries: int) -> int:
    """Bytes of a ring's shm file; 3FS's `IoRing::bytesRequired` on x86-64, which
    leaves room for our smaller entries."""
    return 16 + 32 + 96 * (entries + 1) + 4096


@dataclass(frozen=True)
class RingSpec:
    """What a ring's symlink name encodes:
    `<uuid>.<r|w><io_depth>[.p<h|l>].t<timeout_ms>[.f<flags in binary>]`."""

    id: uuid.UUID
    for_read: bool
    io_depth: int = 0
    timeout_ms: int = 0
    priority: int = 0
    flags: int = 0

    def name(self) -> str:
        parts = [str(self.id), f"{'r' if self.for_read else 'w'}{self.io_depth}"]
        if self.priority:
            parts.append("ph" if self.priority < 0 else "pl")
        parts.append(f"t{self.timeout_ms}")
        if self.flags:
            parts.append(f"f{self.flags:b}")
        return ".".join(parts)


def parse_name(name: str) -> tuple[uuid.UUID, int, RingSpec | None]:
    """Split an `iovs/` symlink name into (id, block size, ring spec or None).
    Raises OSError(EINVAL) when the name is malformed."""
    head, *rest = name.split(".")
    try:
        ident = uuid.UUID(head)
        if not rest:
            return ident, 0, None
        if rest[0].startswith("b") and len(rest) == 1:
            return ident, int(rest[0][1:]), None
        kind = rest[0][0]
        if kind not in "rw":
            raise ValueError(kind)
        spec: dict[str, int] = {"io_depth": int(rest[0][1:])}
        for part in rest[1:]:
            if part in ("ph", "pl"):
                spec["priority"] = -1 if part == "ph" else 1
            elif part[0] == "t":
                spec["timeout_ms"] = int(part[1:])
            elif part[0] == "f":
                spec["flags"] = int(part[1:], 2)
            else:
                raise ValueError(part)
        return ident, 0, RingSpec(ident, kind == "r", **spec)
    except (ValueError, IndexError):
        raise OSError(errno.EINVAL, f"bad usrbio name {name!r}") from None


class Doorbell:
    """A FIFO used as a wake-up: `ring` never blocks, `wait` sleeps until rung."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        if create:
            os.mkfifo(path, 0o600)
        self.path = path
        # O_RDWR keeps the FIFO open with no peer and never blocks on open (Linux).
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: already rung
            os.write(self.fd, b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass

    def wait(self, timeout: float | None) -> None:
        select.select([self.fd], [], [], timeout)
        self.drain()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _RingShm:
    def __init__(self, path: str, size: int | None) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if size else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if size:
                os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.buf = memoryview(self.mm)

    def get(self, off: int) -> int:
        return int(_U64.unpack_from(self.mm, off)[0])

    def put(self, off: int, value: int) -> None:
        _U64.pack_into(self.mm, off, value)

    def close(self) -> None:
        self.buf.release()
        with contextlib.suppress(BufferError):
            self.mm.close()


class RingProducer:
    """The program's side: prepare SQEs, ring the agent, collect CQEs.

    Tags (0..entries-1) name ios in flight; `objs[tag]` holds what the caller
    wants back with the result. Not thread-safe, like 3FS's rings."""

    def __init__(self, spec: RingSpec, entries: int, shm_dir: str = "/dev/shm") -> None:
        if entries <= 0:
            raise OSError(errno.EINVAL, "ring needs at least one entry")
        self.spec = spec
        self.entries = entries
        self.path = os.path.join(shm_dir, f"py3fs-ior-{spec.id}")
        self._shm = _RingShm(self.path, size_for_entries(entries))
        _HEADER.pack_into(
            self._shm.mm,
            0,
            MAGIC,
            1,
            entries,
            int(spec.for_read),
            spec.io_depth,
            spec.timeout_ms,
            spec.flags,
        )
        self.submit_bell = Doorbell(self.path + ".sub", create=True)
        self.done_bell = Doorbell(self.path + ".cmp", create=True)
        self._free = list(range(entries - 1, -1, -1))
        self.objs: list[object] = [None] * entries
        self._sq_tail = 0
        self._cq_head = 0
        self._sq_base = HEADER_SIZE
        self._cq_base = HEADER_SIZE + entries * SQE_SIZE

    @property
    def in_flight(self) -> int:
        return self.entries - len(self._free)

    def prepare(
        self,
        iov_id: bytes,
        buf_off: int,
        length: int,
        inode: int,
        file_off: int,
        obj: object,
    ) -> None:
        """Queue one io; the agent may start it at once. OSError(EAGAIN) when
        `entries` ios are already in flight."""
        if not self._free:
            raise OSError(errno.EAGAIN, "io ring is full")
        tag = self._free.pop()
        self.objs[tag] = obj
        slot = self._sq_base + (self._sq_tail % self.entries) * SQE_SIZE
        SQE.pack_into(self._shm.mm, slot, iov_id, buf_off, inode, file_off, length, tag)
        self._sq_tail += 1
        self._shm.put(_SQ_TAIL, self._sq_tail)

    def submit(self) -> None:
        self.submit_bell.ring()

    def reap(self, limit: int) -> list[tuple[object, int]]:
        """Up to `limit` completions that are in, in completion order."""
        avail = self._shm.get(_CQ_TAIL) - self._cq_head
        out = []
        mm = self._shm.mm
        for _ in range(min(avail, limit)):
            slot = self._cq_base + (self._cq_head % self.entries) * CQE_SIZE
            tag, result = CQE.unpack_from(mm, slot)
            self._cq_head += 1
            out.append((self.objs[tag], result))
            self.objs[tag] = None
            self._free.append(tag)
        if out:
            self._shm.put(_CQ_HEAD, self._cq_head)
        return out

    def wait(
        self, min_results: int, max_results: int, timeout: float | None
    ) -> list[tuple[object, int]]:
        """Block until `min_results` completions are in (or `timeout` seconds
        pass), returning at most max(max_results, min_results, 1) of them."""
        limit = max(max_results, min_results, 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.reap(limit)
        while len(done) < min_results:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self.done_bell.wait(left)
            done += self.reap(limit - len(done))
        return done

    def close(self) -> None:
        self.submit_bell.close()
        self.done_bell.close()
        self._shm.close()
        for path in (self.path, self.path + ".sub", self.path + ".cmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class RingConsumer:
    """The agent's side of a ring made by a program."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._shm = _RingShm(path, None)
        magic, _ver, entries, read, depth, tmo, flags = _HEADER.unpack_from(
            self._shm.mm, 0
        )
        if magic != MAGIC or self._shm.mm.size() < size_for_entries(entries):
            self._shm.close()
            raise OSError(errno.EINVAL, f"{path} is not a py3fs io ring")
        self.entries = int(entries)
        self.for_read = bool(read)
        self.io_depth = int(depth)
        self.timeout_ms = int(tmo)
        self.flags = int(flags)
        self.submit_bell = Doorbell(path + ".sub")
        self.done_bell = Doorbell(path + ".cmp")
        self._sq_head = self._shm.get(_SQ_HEAD)
        self._cq_tail = self._shm.get(_CQ_TAIL)
        self._sq_base = HEADER_SIZE
        self._cq_base = HEADER_SIZE + self.entries * SQE_SIZE

    def pending(self) -> int:
        return self._shm.get(_SQ_TAIL) - self._sq_head

    def take(self, limit: int) -> list[tuple[bytes, int, int, int, int, int]]:
        """Up to `limit` submitted SQEs: (iov id, buf off, inode, file off,
        length, tag)."""
        n = min(self.pending(), limit)
        mm = self._shm.mm
        out = []
        for _ in range(n):
            slot = self._sq_base + (self._sq_head % self.entries) * SQE_SIZE
            out.append(SQE.unpack_from(mm, slot))
            self._sq_head += 1
        if n:
            self._shm.put(_SQ_HEAD, self._sq_head)
        return out

    def post(self, tag: int, result: int) -> None:
        slot = self._cq_base + (self._cq_tail % self.entries) * CQE_SIZE
        CQE.pack_into(self._shm.mm, slot, tag, result)
        self._cq_tail += 1
        self._shm.put(_CQ_TAIL, self._cq_tail)

    def close(self) -> None:
        self.submit_bell.close()
        self.done_bell.close()
        self._shm.close()
