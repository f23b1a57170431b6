"""Open files of the FUSE daemon: one client `File` (and meta write session) per
FUSE handle, file lengths, appends, truncation, and unlinked-but-open files.

Lengths: a write is acknowledged once every replica has it, but meta learns the
new length only on flush/fsync/release (as in 3FS). Until then `length_hint`
merges what this daemon's handles wrote, so `stat` and reads here see it.

O_APPEND: each append has meta reserve its range at the end of the file (the
length grows in the same transaction that reads it), then writes there, so
appends never overlap, from this daemon or from any other client.

Write-behind: the kernel sends at most 1 MiB per write. A handle gathers
contiguous writes and sends them, in the background, when they reach a chunk
boundary (one request per chunk, and chunks on different chains in parallel),
with at most WRITE_BEHIND bytes in flight per inode; a send waits for an
earlier one that overlaps it, so writes land in order. Gathered and in-flight
writes are finished before any read, truncate, flush, fsync or release of the
inode, and a non-contiguous write finishes them first. A storage failure on
them is reported by the next write, flush, fsync or close, as on NFS.

Page cache: an open keeps the kernel's cached pages of the file (keep_cache)
when its mtime and length are what this daemon saw at the previous open: no
client closed it after writing in between (close-to-open consistency).

Small reads: a read within one 64 KiB block fetches the whole block and keeps
it in the mount's `BlockCache` (fuse_mount.block_cache), dropped on this
mount's writes and at an open that finds the file changed, as the page cache.
It also hands the block's other pages to the kernel's page cache
(`PageStore`), so later small reads in the block reach no daemon at all.
A store lands later than it is decided (on a thread: it waits for page
locks), so it must never carry older bytes over newer ones:
- no store for an inode while this daemon has it open for writing, or
  truncates it (`_writing`): the kernel's own writes and truncations are
  the only ones that change its pages, and they need a writable handle or a
  SETATTR, each counted before its first await;
- an open for writing and a truncation wait, before they answer, for the
  inode's stores under way (`PageStore.drained`), so none lands after a write
  or truncation it could overtake; every open waits too, so a store of bytes
  fetched before another client's change cannot land after the open that
  dropped the page cache for that change (close-to-open);
- a fetch that an invalidation of the block cache overtook (a write, a
  truncation, an open that found the file changed, a USRBIO length change)
  is not stored; O_DIRECT handles never store; a store never reaches past
  the length the read used (it would extend the kernel's file size).

Unlinked-but-open files: meta keeps the chunks of an unlinked file while it has
write sessions, but read-only opens have none (as in 3FS). Before this daemon
unlinks or renames over a file it has open only for reading, `pin` opens a
write session for it, closed with the last handle, so reads keep working.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
from dataclasses import dataclass, field

import msgspec
import pyfuse3

from client import Client, File
from client.file_io import ReadBudget, ReadWindow, segment_size
from client.meta_client import acting_as
from fuse_mount.attrs import AttrCache
from fuse_mount.block_cache import BLOCK, BlockCache
from fuse_mount.page_store import PageStore, around
from py3fs import faults
from py3fs.buffers import scratch
from py3fs.proto.messages import Inode, OpenReply, OpenReq

logger = logging.getLogger(__name__)
_META_FLAGS = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND
WRITE_BEHIND = 32 * 1024 * 1024  # bytes of acknowledged writes in flight per inode
SLOW_FETCH = "mount.read.after_fetch"  # a fault point (tests/fuse/test_page_store.py)
_SEEN_MAX = 65536  # inodes whose (mtime, length) at open is remembered
# Bytes all handles' read-ahead windows may hold at once (16 MiB each at most;
# past this, more sequential readers read straight from storage).
READ_WINDOWS = 256 * 1024 * 1024


@dataclass
class FileHandle:
    fh: int
    ino: int
    file: File
    append: bool
    # Sequential writes gathered up to a chunk boundary (see `write`).
    pending_at: int = 0
    pending: bytearray = field(default_factory=bytearray)
    # A failed send of writes the kernel was already told succeeded; reported by
    # this handle's next write/fsync/flush/release (like the kernel's errseq).
    error: BaseException | None = None
    # Sends under way: (start, end, task), awaited by flush_pending.
    inflight: list[tuple[int, int, asyncio.Task[None]]] = field(default_factory=list)
    keep_cache: bool = False
    # Opened with O_DIRECT: reads bypass the block cache.
    direct: bool = False
    # Read-ahead of the kernel's large sequential reads (see `read`).
    window: ReadWindow | None = None
    # Being released: its write session is about to end (see `pin`).
    releasing: bool = False
    # Writes accepted since the last Sync reported the length: only then does
    # Close report it again (a Close that reports a length makes the mtime
    # now, and the kernel sends release after close(2) returns, so it would
    # undo a utimensat done right after close, as copytree and cp -p do).
    dirty: bool = False
    # An mtime (ns) set explicitly after this handle's last write (tar and
    # rsync set it before close): recorded with the length instead of now.
    mtime: int = -1

    # The end of the furthest byte this handle accepted (gathered, in flight or
    # sent): the length it reports never drops below it while bytes move from
    # `pending` to a send (a shorter getattr reply would shrink the kernel's
    # file size, and later reads would stop there).
    accepted_end: int = 0

    @property
    def length(self) -> int:
        return max(self.file.length, self.accepted_end)

    @property
    def inflight_bytes(self) -> int:
        return sum(end - start for start, end, _ in self.inflight)

    def gather(self, data: bytes, offset: int) -> None:
        if not self.pending:
            self.pending_at = offset
        self.pending += data
        self.accepted_end = max(self.accepted_end, offset + len(data))

    def truncated(self, length: int) -> None:
        """The file was cut to `length` (its sends already finished)."""
        self.accepted_end = min(self.accepted_end, length)
        self.file.forget_writes_past(length)

    async def _send(
        self,
        data: bytearray,
        start: int,
        before: list[asyncio.Task[None]],
        sync: bool = False,
        stream: bool = False,
    ) -> None:
        if before:
            await asyncio.wait(before)  # their failures are their handles' errors
        try:
            await self.file.pwrite(data, start, sync=sync, stream=stream)
        except Exception as exc:
            self.error = self.error or exc

    def start_send(
        self,
        data: bytearray,
        start: int,
        peers: list[FileHandle],
        sync: bool = False,
        stream: bool = False,
    ) -> None:
        """Send `data` at `start` in the background, after every in-flight send
        of `peers` (this inode's handles) that overlaps it. The send is listed
        in `inflight` at once, so any flush that starts later waits for it."""
        end = start + len(data)
        before = [
            task
            for peer in peers
            for s, e, task in peer.inflight
            if s < end and start < e and not task.done()
        ]
        task = asyncio.ensure_future(self._send(data, start, before, sync, stream))
        self.inflight.append((start, end, task))

    async def send(self, data: bytearray, start: int, peers: list[FileHandle]) -> None:
        """`start_send`, then wait while more than WRITE_BEHIND bytes are in
        flight. These are whole chunks of a sequential writer: sent as a
        stream (wire.WriteReq.stream), which replicas write past their page
        cache, so a write stream costs them no copy into it and leaves no
        dirty pages for the close to wait on."""
        self.start_send(data, start, peers, stream=True)
        while self._reap() and self.inflight_bytes > WRITE_BEHIND:
            await asyncio.shield(self.inflight[0][2])

    def _reap(self) -> bool:
        """Forget finished sends; whether any is still running. (Awaiting a
        finished task does not yield to the loop, so a wait loop must drop them
        itself or it spins.)"""
        self.inflight = [x for x in self.inflight if not x[2].done()]
        return bool(self.inflight)

    async def flush_pending(
        self, peers: list[FileHandle], *, sync: bool = False
    ) -> None:
        """Send what is gathered and wait for every send of this handle; a
        failure stays in `error` (raised by `raise_error`). With `sync` (close,
        fsync) what is gathered goes to disk as it is written, so a file whose
        only write is that one needs no separate flush."""
        if self.pending:
            data, start = self.pending, self.pending_at
            self.pending = bytearray()
            self.pending_at = start + len(data)
            self.start_send(data, start, peers, sync)
        await self.wait_sends()

    async def wait_sends(self) -> None:
        """Wait for every send of this handle under way (not what is gathered)."""
        while self._reap():
            await asyncio.shield(self.inflight[0][2])

    def raise_error(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc


@dataclass
class InodeState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handles: dict[int, FileHandle] = field(default_factory=dict)
    pin: File | None = None


def _writes(flags: int) -> bool:
    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)


class OpenFiles:
    def __init__(
        self,
        client: Client,
        attrs: AttrCache | None = None,
        cache: BlockCache | None = None,
        pages: PageStore | None = None,
    ) -> None:
        self._client = client
        self.cache = cache or BlockCache(0)
        # Stores into the kernel's page cache (None: off, as for tests
        # without a FUSE session).
        self.pages = pages
        # inode -> writable handles open or opening, and truncations under
        # way, on this daemon: no page store for these (see the docstring).
        self._writing: dict[int, int] = {}
        # The mount's attribute cache, kept current with what meta answers to
        # this daemon's opens, syncs and closes.
        self._attrs = attrs or AttrCache(0)
        self._fhs = itertools.count(1)
        self._handles: dict[int, FileHandle] = {}
        self._inodes: dict[int, InodeState] = {}
        # inode -> (mtime, length) at its last open here (see keep_cache)
        self._seen: dict[int, tuple[float, int]] = {}
        self._read_only = 0  # handles without a write session
        self._windows = ReadBudget(READ_WINDOWS)

    def get(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    def is_open(self, ino: int) -> bool:
        return ino in self._inodes

    def handles_of(self, ino: int) -> int:
        state = self._inodes.get(ino)
        return 0 if state is None else len(state.handles)

    def any_read_only(self) -> bool:
        """Whether any handle is open without a write session (only such a
        file needs `pin` before its name goes)."""
        return self._read_only > 0

    def length_hint(self, ino: int) -> int | None:
        """The longest length this daemon's handles know of `ino`, or None."""
        state = self._inodes.get(ino)
        if state is None or not state.handles:
            return None
        return max(h.length for h in state.handles.values())

    def _adopt(self, ino: int, node: Inode) -> None:
        for handle in self._inodes[ino].handles.values():
            handle.file.inode = node

    # ------------------------------------------------------------ open/close

    async def open(
        self, at: int, name: str, flags: int, *, perm: int = 0o644
    ) -> FileHandle:
        """Open `name` in directory inode `at`, or with name "" the inode `at`
        itself, for a FUSE request (O_CREAT creates it with `perm`)."""
        req = OpenReq(at=at, path=name, flags=flags & _META_FLAGS, mode=perm)
        reply = await self._client.open_inode(req)
        writes = _writes(flags)
        if writes:
            # Counted from the reply (the kernel sends no WRITE before this
            # open answers) until the handle's release; undone on failure.
            self._writing_add(reply.inode.inode, 1)
        try:
            return await self._open(req, reply, flags)
        except BaseException:
            if writes:
                self._writing_add(reply.inode.inode, -1)
            raise

    def _writing_add(self, ino: int, n: int) -> None:
        left = self._writing.get(ino, 0) + n
        if left:
            self._writing[ino] = left
        else:
            del self._writing[ino]

    async def _open(self, req: OpenReq, reply: OpenReply, flags: int) -> FileHandle:
        if reply.parent is not None:
            self._attrs.put(reply.parent)
        name = req.path or f"inode {req.at}"
        file = File(self._client, name, flags & _META_FLAGS, reply)
        node = reply.inode
        old_length = 0
        if flags & os.O_TRUNC and _writes(flags):
            # What meta cut, or what our handles wrote and have not sent yet.
            old_length = max(self.length_hint(node.inode) or 0, reply.truncated_from)
        state = self._inodes.setdefault(node.inode, InodeState())
        if old_length > node.length:
            async with state.lock:
                await self._flush_inode(node.inode)
                await self._drop_tail(node, 0, old_length)
        handle = FileHandle(
            next(self._fhs), node.inode, file, bool(flags & os.O_APPEND)
        )
        stamp = (node.mtime, node.length)
        handle.keep_cache = self._seen.get(node.inode) == stamp and not (
            flags & os.O_TRUNC
        )
        handle.direct = bool(flags & os.O_DIRECT)
        if not handle.keep_cache:
            self.cache.invalidate(node.inode)
        self._seen.pop(node.inode, None)
        self._seen[node.inode] = stamp
        if len(self._seen) > _SEEN_MAX:
            del self._seen[next(iter(self._seen))]
        if self.pages is not None:
            # No store decided before this point may land after the reply
            # (the kernel drops the file's pages then unless keep_cache, and
            # a writer's first WRITE may follow it).
            await self.pages.drained(node.inode)
        # A release during the awaits above may have dropped the state: look again.
        state = self._inodes.setdefault(node.inode, state)
        self._handles[handle.fh] = handle
        state.handles[handle.fh] = handle
        if not file.writable:
            self._read_only += 1
        return handle

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.window is not None:
            handle.window.drop()
        if not handle.file.writable:
            self._read_only -= 1
        state = self._inodes.get(handle.ino)
        # The handle stays among the inode's handles until its length is in
        # meta (close), so `length_hint` covers its writes meanwhile.
        handle.releasing = True
        try:
            try:
                await handle.flush_pending(self._peers(handle), sync=True)
                handle.raise_error()
            finally:
                await handle.file.close(report=handle.dirty, mtime=handle.mtime)
                if handle.file.session_id:
                    self._attrs.put(handle.file.inode)
        finally:
            if handle.file.writable:
                self._writing_add(handle.ino, -1)
            if state is not None:
                state.handles.pop(fh, None)
            # Concurrent releases of one inode each get here; one drops the state.
            if (
                state is not None
                and not state.handles
                and self._inodes.get(handle.ino) is state
            ):
                del self._inodes[handle.ino]
                if state.pin is not None:
                    await state.pin.close()

    async def close_all(self) -> None:
        """Unmount: end every session so meta can collect unlinked files."""
        for fh in list(self._handles):
            try:
                await self.release(fh)
            except Exception:  # shutting down: report it, close the rest
                logger.exception("closing handle %d at unmount failed", fh)

    async def pin(self, ino: int) -> None:
        """A name of `ino` is about to be unlinked or replaced: if this daemon
        has it open and holds no write session on it, take one."""
        state = self._inodes.get(ino)
        if state is None or state.pin is not None:
            return
        if any(h.file.writable and not h.releasing for h in state.handles.values()):
            return
        # The daemon's own session, not the caller's: a reader may lack write
        # permission, and the session only delays garbage collection.
        with acting_as(0, 0):
            req = OpenReq(at=ino, flags=os.O_WRONLY)
            reply = await self._client.open_inode(req)
        pin = File(self._client, f"inode {ino}", os.O_WRONLY, reply)
        if reply.inode.inode != ino or ino not in self._inodes:
            await pin.close()
            return
        state.pin = pin

    # ------------------------------------------------------------ data

    def _peers(self, handle: FileHandle) -> list[FileHandle]:
        state = self._inodes.get(handle.ino)
        return list(state.handles.values()) if state else [handle]

    async def _flush_inode(self, ino: int) -> None:
        """Finish every gathered and in-flight write of `ino` (a failure is
        the writing handle's to report)."""
        state = self._inodes.get(ino)
        if state is None:
            return
        handles = list(state.handles.values())
        for handle in handles:
            await handle.flush_pending(handles)

    async def read(self, fh: int, offset: int, size: int) -> bytearray | memoryview:
        handle = self.get(fh)
        # Before the flush: a write arriving after it (while this read waits)
        # changes the generation, so a block fetched without it is not kept.
        gen = self.cache.generation(handle.ino)
        await self._flush_inode(handle.ino)
        length = self.length_hint(handle.ino) or 0
        if offset + size > length:
            # Reading at the end: another client (or mount) may have grown it.
            node = await self._client.stat_inode(handle.ino)
            self._adopt(handle.ino, node)
            length = self.length_hint(handle.ino) or 0
        n = min(size, length - offset)
        if n <= 0:
            return bytearray()
        cache = self.cache
        # Reads fill their whole buffer (holes with zeros) or fail: no need
        # to zero-fill it first (py3fs.buffers).
        if not handle.direct and n > BLOCK:
            got = await self._from_window(handle, offset, n, length, gen)
            if got is not None:
                if cache.enabled:
                    cache.put_range(handle.ino, gen, offset, got, length)
                return got
        if not cache.enabled or handle.direct:
            buf = scratch(n)
            await self._fetch(handle, offset, buf, length)
            return buf
        index = offset // BLOCK
        if (offset + n - 1) // BLOCK != index:
            # A larger read (the kernel's read-ahead, up to 1 MiB): from the
            # cache when it holds every block, else from storage, keeping the
            # whole blocks it brings.
            got = cache.get_range(handle.ino, offset, n)
            if got is None:
                got = scratch(n)
                await self._fetch(handle, offset, got, length)
                cache.put_range(handle.ino, gen, offset, got, length)
            return got
        start = index * BLOCK
        view = cache.get_block(handle.ino, index, offset - start + n)
        fetched = view is None
        if view is None:
            # The whole block: storage reads and verifies all of it anyway.
            block = bytearray(min(BLOCK, length - start))
            await self._fetch(handle, start, block, length)
            if faults.delaying(SLOW_FETCH):
                # A slow fetch, for the test that proves one overtaken by an
                # invalidation is not stored (off the loop, which must go on).
                await asyncio.to_thread(lambda: faults.fault_point(SLOW_FETCH))
            view = memoryview(block)
            cache.put(handle.ino, index, gen, view)
        pages = self.pages
        if (
            pages is not None
            and handle.ino not in self._writing
            and gen == cache.generation(handle.ino)
            # A hit means the kernel lacks this page (evicted, or a store
            # not landed yet: then skip, not to queue one per read).
            and (fetched or not pages.busy(handle.ino))
        ):
            # The rules in the docstring: nothing can write the inode's pages
            # on this mount now, and nothing changed it since `gen`.
            whole = view[: max(0, min(view.nbytes, length - start))]
            pages.store(handle.ino, around(start, whole, offset, n))
        return view[offset - start : offset - start + n]

    async def _from_window(
        self, handle: FileHandle, offset: int, n: int, length: int, gen: int
    ) -> bytearray | memoryview | None:
        """A large read from the handle's read-ahead window, or None when it
        is not part of a sequential stream (then read it from storage)."""
        layout = handle.file.inode.layout
        assert layout is not None
        if handle.window is None:
            handle.window = ReadWindow(
                self._client.files,
                segment_size(layout.chunk_size),
                budget=self._windows,
            )
        return await handle.window.read(
            handle.ino,
            layout,
            offset,
            n,
            length=length,
            session=self._has_session(handle.ino),
            generation=gen,
        )

    def _has_session(self, ino: int) -> bool:
        """Whether any write session (a handle's or a pin) keeps the chunks
        of `ino`."""
        state = self._inodes.get(ino)
        return bool(
            state
            and (state.pin or any(h.file.session_id for h in state.handles.values()))
        )

    async def _fetch(
        self, handle: FileHandle, offset: int, buf: bytearray, length: int
    ) -> None:
        layout = handle.file.inode.layout
        assert layout is not None
        await self._client.files.read(
            handle.ino,
            layout,
            offset,
            buf,
            length=length,
            session=self._has_session(handle.ino),
        )

    def _wrote(self, handle: FileHandle) -> None:
        handle.dirty = True
        state = self._inodes.get(handle.ino)
        for peer in state.handles.values() if state else [handle]:
            peer.mtime = -1  # the write is newer than any explicit mtime

    def mtime_set(self, ino: int, mtime: int) -> None:
        """A setattr gave `ino` this mtime: the length its handles report
        for their earlier writes must not replace it with now."""
        state = self._inodes.get(ino)
        for handle in state.handles.values() if state else []:
            if handle.dirty:
                handle.mtime = mtime

    def defer_mtime(self, ino: int, mtime: int, held: Inode | None) -> Inode | None:
        """Keep an explicit mtime for the Sync or Close that reports the
        length of this daemon's unreported writes to `ino` (see `mtime_set`),
        instead of a SetAttr now: `ino` as it then is (from `held`, the
        mount's cached copy, if any), or None when no handle has such writes."""
        state = self._inodes.get(ino)
        dirty = [
            h
            for h in (state.handles.values() if state else [])
            if h.dirty and h.file.writable and not h.releasing
        ]
        if not dirty:
            return None
        for handle in dirty:
            handle.mtime = mtime
        base = held if held is not None else dirty[0].file.inode
        return msgspec.structs.replace(base, mtime=mtime)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.get(fh)
        self.cache.invalidate(handle.ino)
        self._wrote(handle)
        try:
            if not handle.append:
                return await self._gather(handle, offset, data)
            async with self._inodes[handle.ino].lock:
                await self._flush_inode(handle.ino)
                n = await handle.file.append(data)
                self._adopt(handle.ino, handle.file.inode)
            return n
        finally:
            # Again once the bytes are where a read finds them (gathered, sent
            # or appended): a read that began during the awaits above flushed
            # and fetched without them, so its block must not be kept.
            self.cache.invalidate(handle.ino)

    async def _gather(self, handle: FileHandle, offset: int, data: bytes) -> int:
        layout = handle.file.inode.layout
        assert layout is not None
        handle.raise_error()
        chunk = layout.chunk_size
        if handle.pending and offset != handle.pending_at + len(handle.pending):
            await handle.flush_pending(self._peers(handle))
            handle.raise_error()
        handle.gather(data, offset)
        end = handle.pending_at + len(handle.pending)
        if end // chunk > handle.pending_at // chunk or end % chunk == 0:
            # Send everything up to the last chunk boundary; keep the rest.
            cut = end - end % chunk - handle.pending_at
            if cut == len(handle.pending):
                # The usual case (aligned sequential writes): hand the buffer
                # over instead of copying it twice.
                head, handle.pending = handle.pending, bytearray()
            else:
                head = handle.pending[:cut]
                handle.pending = handle.pending[cut:]
            start, handle.pending_at = handle.pending_at, handle.pending_at + cut
            await handle.send(head, start, self._peers(handle))
        return len(data)

    async def sync(self, fh: int) -> None:
        """Send gathered writes and report this handle's length to meta (flush,
        fsync)."""
        handle = self.get(fh)
        peers = self._peers(handle)
        if not handle.file.writable or not handle.dirty:
            # Nothing written since the last Sync (a second close of a dup'd
            # or inherited fd): its length is in meta, its data on disk, and
            # another Sync would make the mtime now, undoing a utimensat.
            await handle.flush_pending(peers)
            handle.raise_error()
            return
        # Earlier sends first: the flush below must cover them.
        await handle.wait_sends()
        handle.raise_error()
        # What was accepted until now is reported below; a write arriving
        # meanwhile makes the handle dirty again.
        handle.dirty = False
        # The gathered bytes (a small file's only write) go out as a sync
        # write while meta records the length: one round instead of a write,
        # then a flush beside the Sync. The length may so be in meta a moment
        # before its last bytes are acknowledged (as over NFS); a send that
        # fails is reported by this flush/fsync all the same.
        end = handle.pending_at + len(handle.pending) if handle.pending else -1
        sent, synced = await asyncio.gather(
            handle.flush_pending(peers, sync=True),
            handle.file.fsync(length=end, mtime=handle.mtime),
            return_exceptions=True,
        )
        if handle.error is not None or isinstance(synced, BaseException):
            handle.dirty = True  # the length may not be in meta: Close tries
        handle.raise_error()
        for outcome in (sent, synced):
            if isinstance(outcome, BaseException):
                raise outcome
        self._attrs.put(handle.file.inode)

    async def set_length(self, ino: int, length: int, fh: int | None = None) -> Inode:
        """Truncate or extend `ino` to `length` (through handle `fh`: ftruncate,
        allowed by the handle's write session). Bytes past the new end are
        dropped from storage, so extending later reads zeros there."""
        handle = self._handles.get(fh) if fh is not None else None
        session = handle.file.session_id if handle is not None else ""
        state = self._inodes.get(ino) or InodeState()
        self.cache.invalidate(ino)
        # No page store from here to the reply, and none under way: the
        # kernel cuts its pages after the reply, and a store landing after
        # that would bring old bytes back (and the old size).
        self._writing_add(ino, 1)
        try:
            async with state.lock:
                await self._flush_inode(ino)
                if self.pages is not None:
                    await self.pages.drained(ino)
                old = max(
                    self.length_hint(ino) or 0,
                    (await self._client.stat_inode(ino)).length,
                )
                node = await self._client.setattr(
                    "", at=ino, follow=False, length=length, session_id=session
                )
                if length < old:
                    await self._drop_tail(node, length, old)
                if ino in self._inodes:
                    self._adopt(ino, node)
        finally:
            self._writing_add(ino, -1)
        self.cache.invalidate(ino)
        self._attrs.put(node)
        return node

    async def _drop_tail(self, node: Inode, length: int, old_length: int) -> None:
        assert node.layout is not None
        self.cache.invalidate(node.inode)
        await self._client.files.truncate(node.inode, node.layout, length, old_length)
        self.cache.invalidate(node.inode)
        state = self._inodes.get(node.inode)
        if state is not None:
            for handle in state.handles.values():
                handle.truncated(length)
