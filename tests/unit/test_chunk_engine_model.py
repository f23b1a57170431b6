"""The chunk engine against a model: random writes (appends, overwrites, gaps,
multi-block), truncates (full replaces, as the client truncates), aborted
stages, crashes at every injected point, restarts and reads, on the file store
and its in-memory twin. After every step both stores read exactly what the
model holds, and their digests agree with a fresh checksum of it."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from py3fs import errors, faults, ids
from py3fs.wire import crc32c
from storage_service import chunk_format as fmt
from storage_service.chunk_store import (
    AFTER_APPLY,
    AFTER_STAGE,
    MID_APPLY,
    STAGE_WRITTEN,
    ChunkStore,
    MemChunkStore,
)
from storage_service.file_chunk_store import FileChunkStore

B = fmt.BLOCK_SIZE
CS = 8 * B  # small chunks keep examples fast and still span many blocks
CHUNKS = [ids.chunk_id(900, i) for i in range(3)]
POINTS = [STAGE_WRITTEN, AFTER_STAGE, MID_APPLY, AFTER_APPLY]

offsets = st.one_of(
    st.integers(0, CS - 1),
    st.sampled_from([0, B - 1, B, B + 1, 3 * B, CS - B]),
)
sizes = st.one_of(st.integers(0, 300), st.integers(1, 3 * B + 7))


def _apply(model: bytes, offset: int, data: bytes) -> bytes:
    buf = bytearray(model)
    if len(buf) < offset:
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data
    return bytes(buf)


class ChunkEngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="chunk-model-")
        self.file: ChunkStore = self._open_file()
        self.mem = MemChunkStore()
        self.model: dict[bytes, bytes] = {}
        self.versions: dict[bytes, int] = {}

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _open_file(self) -> FileChunkStore:
        store = FileChunkStore(self.dir)
        self._run(store.load())
        return store

    def teardown(self) -> None:
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def stores(self) -> tuple[ChunkStore, ChunkStore]:
        return (self.file, self.mem)

    def _write(
        self, store: ChunkStore, cid: bytes, offset: int, data: bytes, full: bool
    ) -> fmt.ChunkInfo:
        return self._run(
            store.write(
                cid,
                offset,
                data,
                version=self.versions.get(cid, 0) + 1,
                chunk_size=CS,
                chain_ver=1,
                full_replace=full,
                data_crc=crc32c(data),
            )
        )

    def _seed(self, n: int, seed: int) -> bytes:
        return (seed.to_bytes(4, "little") * (n // 4 + 1))[:n] if n else b""

    @rule(
        cid=st.sampled_from(CHUNKS),
        offset=offsets,
        n=sizes,
        seed=st.integers(0, 2**32 - 1),
    )
    def write(self, cid: bytes, offset: int, n: int, seed: int) -> None:
        n = min(n, CS - offset)
        data = self._seed(n, seed) if seed % 3 else os.urandom(n)
        infos = [self._write(s, cid, offset, data, False) for s in self.stores]
        self.model[cid] = _apply(self.model.get(cid, b""), offset, data)
        self.versions[cid] = self.versions.get(cid, 0) + 1
        assert infos[0] == infos[1]

    @rule(cid=st.sampled_from(CHUNKS), length=st.integers(0, CS))
    def truncate(self, cid: bytes, length: int) -> None:
        """The client truncates by replacing the chunk with its head."""
        head = self.model.get(cid, b"")[:length]
        for s in self.stores:
            self._write(s, cid, 0, head, True)
        self.model[cid] = head
        self.versions[cid] = self.versions.get(cid, 0) + 1

    @rule(cid=st.sampled_from(CHUNKS), offset=offsets, n=sizes)
    def abort_a_stage(self, cid: bytes, offset: int, n: int) -> None:
        n = min(n, CS - offset)
        for s in self.stores:
            staged = self._run(
                s.stage(
                    cid,
                    offset,
                    os.urandom(n),
                    version=self.versions.get(cid, 0) + 1,
                    chunk_size=CS,
                    chain_ver=1,
                )
            )
            self._run(s.abort(staged))

    @rule(
        cid=st.sampled_from(CHUNKS),
        offset=offsets,
        n=sizes,
        point=st.sampled_from(POINTS),
        full=st.booleans(),
    )
    def crash_during_write(
        self, cid: bytes, offset: int, n: int, point: str, full: bool
    ) -> None:
        """Fail at a fault point, then restart: the write is wholly there (the
        commit was marked) or wholly not."""
        if full:
            offset = 0
        n = min(n, CS - offset)
        data = os.urandom(n)
        for s in self.stores:
            with faults.enabled(point, "error"):
                try:
                    self._write(s, cid, offset, data, full)
                except errors.InjectedFault:
                    pass
                else:
                    raise AssertionError(f"{point} did not fire")
        self.restart()
        if point != STAGE_WRITTEN:
            self.model[cid] = (
                data if full else _apply(self.model.get(cid, b""), offset, data)
            )
            self.versions[cid] = self.versions.get(cid, 0) + 1

    @rule()
    def restart(self) -> None:
        self.file = self._open_file()
        self.mem.crash()

    @rule(cid=st.sampled_from(CHUNKS), offset=st.integers(0, CS), n=sizes)
    def read(self, cid: bytes, offset: int, n: int) -> None:
        want = self.model.get(cid)
        for s in self.stores:
            if want is None:
                try:
                    self._run(s.read(cid, offset, n))
                except errors.ChunkNotFound:
                    continue
                raise AssertionError("read of a missing chunk succeeded")
            _, view = self._run(s.read(cid, offset, n))
            assert bytes(view) == want[offset : offset + n]

    @invariant()
    def stores_match_model(self) -> None:
        for cid in CHUNKS:
            want = self.model.get(cid)
            for s in self.stores:
                info = s.get(cid)
                assert s.pending_version(cid) == 0
                if want is None:
                    assert info is None
                    continue
                assert info is not None
                assert (info.version, info.length) == (self.versions[cid], len(want))
                assert info.crc == fmt.content_digest(want)
                _, view = self._run(s.read(cid, 0, CS))
                assert bytes(view) == want
        # The totals heartbeats report, kept up to date as chunks change.
        for s in self.stores:
            stats = self._run(s.stats())
            assert (stats.chunk_count, stats.used_bytes) == (
                len(self.model),
                sum(len(v) for v in self.model.values()),
            )


ChunkEngineMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestChunkEngine = ChunkEngineMachine.TestCase
