"""The CRAQ replica state machine (chain_replication.replica) driving a chain of
three in-memory chunk stores, as storage_service.write_path does, with updates
that fail part-way: lost on the way down (some replicas applied it), lost on
the way back (an ack never reaches the head), and retries. Invariants: a
version means the same content on every replica that committed it; after a
successful write every replica holds exactly the model."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chain_replication import craq
from chain_replication.replica import ReplicaState
from py3fs import ids
from storage_service import chunk_format as fmt
from storage_service.chunk_store import MemChunkStore

CID = ids.chunk_id(77, 0)
CS = 4 * fmt.BLOCK_SIZE
N = 3


class _Lost(Exception):
    pass


class ChainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stores = [MemChunkStore() for _ in range(N)]
        self.states: list[ReplicaState[int]] = [ReplicaState() for _ in range(N)]
        self.model = b""
        # version -> digest, for every version any replica ever committed
        self.history: dict[int, int] = {}

    def teardown(self) -> None:
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _apply(
        self,
        pos: int,
        offset: int,
        data: bytes,
        version: int,
        full: bool,
        whole: bool,
        lose_at: int | None,
        lose_ack: bool,
    ) -> fmt.ChunkInfo:
        """Target `pos` stages, forwards, commits on the ack (write_path._apply)."""
        store, state = self.stores[pos], self.states[pos]
        if whole and not full:
            # The head sends the whole chunk: its committed data with the update.
            old = bytes((await store.read(CID, 0, CS))[1]) if store.get(CID) else b""
            buf = bytearray(old)
            buf[len(buf) : offset] = bytes(max(0, offset - len(buf)))
            buf[offset : offset + len(data)] = data
            offset, data, full = 0, bytes(buf), True
        staged = await store.stage(
            CID,
            offset,
            data,
            version=version,
            chunk_size=CS,
            chain_ver=1,
            full_replace=full,
        )
        if pos + 1 < N:
            if lose_at == pos + 1:
                await store.abort(staged)
                raise _Lost("forward lost")
            try:
                acked = await self._forward(
                    pos + 1, offset, data, version, full, lose_at, lose_ack
                )
            except BaseException:
                await store.abort(staged)
                raise
            check = state.check_ack(
                version,
                staged.info.crc,
                staged.info.length,
                (acked.version, acked.crc, acked.length),
            )
            if not check.ok:
                await store.abort(staged)
                raise _Diverged(acked.version)
        info = await store.commit(staged)
        self._record(info)
        if lose_ack and pos == N - 1:
            raise _Lost("ack lost")
        return info

    async def _forward(
        self,
        pos: int,
        offset: int,
        data: bytes,
        version: int,
        full: bool,
        lose_at: int | None,
        lose_ack: bool,
    ) -> fmt.ChunkInfo:
        store, state = self.stores[pos], self.states[pos]
        info = store.get(CID)
        action = state.replica_plan(
            info.version if info else 0, version, full, False
        ).action
        if action is craq.Action.ALREADY_DONE:
            assert info is not None
            return info
        if action is craq.Action.MISSING_UPDATE:
            raise _Lost("missing update")
        return await self._apply(
            pos, offset, data, version, full, False, lose_at, lose_ack
        )

    def _record(self, info: fmt.ChunkInfo) -> None:
        seen = self.history.setdefault(info.version, info.crc)
        assert seen == info.crc, f"version {info.version} committed with two contents"

    async def _head_write(
        self, offset: int, data: bytes, lose_at: int | None, lose_ack: bool
    ) -> bool:
        key = (0, CID)
        state, store = self.states[0], self.stores[0]
        for _ in range(3):
            info = store.get(CID)
            plan = state.head_plan(key, info.version if info else 0, True, False)
            try:
                await self._apply(
                    0, offset, data, plan.version, False, plan.whole, lose_at, lose_ack
                )
            except _Diverged as exc:
                state.head_diverged(key, plan.version, exc.ack_ver)
                continue
            except _Lost:
                state.head_failed(key, forwarded=True)
                return False
            state.head_committed(key)
            return True
        return False

    @rule(
        offset=st.integers(0, CS - 1),
        n=st.integers(0, 2 * fmt.BLOCK_SIZE),
        byte=st.integers(0, 255),
        lose_at=st.one_of(st.none(), st.integers(1, N - 1)),
        lose_ack=st.booleans(),
    )
    def write(
        self, offset: int, n: int, byte: int, lose_at: int | None, lose_ack: bool
    ) -> None:
        n = min(n, CS - offset)
        data = bytes([byte]) * n
        ok = self._run(
            self._head_write(offset, data, lose_at, lose_ack and lose_at is None)
        )
        if not ok:
            # The client retries until the chain takes it (no faults this time).
            assert self._run(self._head_write(offset, data, None, False))
        buf = bytearray(self.model)
        buf[len(buf) : offset] = bytes(max(0, offset - len(buf)))
        buf[offset : offset + n] = data
        self.model = bytes(buf)
        for store in self.stores:
            _, view = self._run(store.read(CID, 0, CS))
            assert bytes(view) == self.model

    @invariant()
    def versions_agree(self) -> None:
        infos = [s.get(CID) for s in self.stores]
        if infos[0] is None:
            return
        for info in infos:
            assert info is not None
            assert self.history[info.version] == info.crc


class _Diverged(Exception):
    def __init__(self, ack_ver: int) -> None:
        super().__init__(ack_ver)
        self.ack_ver = ack_ver


ChainMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=20, deadline=None
)
TestChain = ChainMachine.TestCase
