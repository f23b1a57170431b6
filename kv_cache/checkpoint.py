"""Checkpoints of torch state dicts on py3fs: parallel, striped, safetensors.

A checkpoint is a directory of safetensors shards (`model-00001-of-00003.
safetensors`, at most `shard_bytes` each unless one tensor is larger) and
`model.safetensors.index.json` (Hugging Face's shard index), so the
`safetensors` library and HF loaders read it as is. bf16, FP8 (`F8_E4M3`) and
any other tensors are stored bit for bit; FP8 block scales are just tensors of
their own (e.g. `w.scale`). Each tensor's CRC32C is in its file's header and is
checked on load.

`CheckpointManager` commits atomically: shards are written into
`<dir>/.tmp-<step>-<uuid>/`, then one rename (one meta transaction) makes it
`<dir>/step-<n>/`; a save killed midway leaves only a hidden `.tmp-` directory,
which `remove_incomplete` deletes. It keeps the last N steps and saves in the
background (`save_async` snapshots the tensors first, so training may change
them at once).

File I/O: each shard is cut into chunk-sized windows written concurrently
(tensors inside a window are copied together; a window inside one tensor is
sent straight from the tensor's memory); loads read every tensor straight into
its freshly allocated storage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from client import Client
from kv_cache import safetensors_format as fmt
from kv_cache.buffers import byte_view
from py3fs import errors
from py3fs.faults import fault_point

logger = logging.getLogger(__name__)
GiB = 1 << 30
INDEX = "model.safetensors.index.json"
STEP_RE = re.compile(r"^step-(\d+)$")
StateDict = dict[str, Any]
Names = Iterable[str] | Callable[[str], bool] | None


def snapshot(state_dict: StateDict) -> StateDict:
    """Contiguous CPU copies of every tensor: what a background save writes
    while training goes on changing the originals."""
    return {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()
    }


def _tensor_bytes(t: Any) -> memoryview:
    if t.numel() == 0:
        return memoryview(b"")
    return byte_view(t.contiguous())


def _shards(state_dict: StateDict, shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in state_dict.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def _windows(parts: list[memoryview], io_bytes: int) -> Iterator[tuple[int, Any]]:
    """(offset, bytes) windows of `io_bytes` over the concatenation of `parts`,
    aligned to file offset 0 so each window is one chunk of the file."""
    offset = 0
    pending: list[memoryview] = []
    room = io_bytes
    start = 0
    for part in parts:
        pos = 0
        while pos < part.nbytes:
            take = min(room, part.nbytes - pos)
            pending.append(part[pos : pos + take])
            pos += take
            room -= take
            offset += take
            if room == 0:
                yield start, pending[0] if len(pending) == 1 else b"".join(pending)
                pending, room, start = [], io_bytes, offset
    if pending:
        yield start, pending[0] if len(pending) == 1 else b"".join(pending)


async def _bounded(n: int, jobs: Iterable[Awaitable[object]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(job: Awaitable[object]) -> None:
        async with sem:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


async def save_state_dict(
    client: Client,
    directory: str,
    state_dict: StateDict,
    *,
    shard_bytes: int = GiB,
    metadata: dict[str, str] | None = None,
    concurrency: int = 16,
    chunk_size: int = 0,
) -> list[str]:
    """Write `state_dict` (CPU or not: tensors are read as they are; snapshot
    first if they may change) as safetensors shards plus the index into the
    existing `directory`. Not atomic by itself (see CheckpointManager).
    Returns the shard file names."""
    shards = _shards(state_dict, shard_bytes)
    count = len(shards)
    names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    weight_map: dict[str, str] = {}
    total = 0
    for fname, shard in zip(names, shards, strict=True):
        for n in shard:
            weight_map[n] = fname
            total += state_dict[n].numel() * state_dict[n].element_size()

    async def write(fname: str, shard: list[str]) -> None:
        tensors = {n: _as_entry(state_dict[n]) for n in shard}
        plan = await asyncio.to_thread(fmt.plan, tensors, metadata)
        parts = [memoryview(plan.header)] + [tensors[t.name][2] for t in plan.tensors]
        async with await client.open(
            f"{directory}/{fname}", "xb", chunk_size=chunk_size
        ) as f:
            io = f.inode.layout.chunk_size if f.inode.layout else 4 << 20
            await _bounded(
                concurrency, (f.pwrite(buf, off) for off, buf in _windows(parts, io))
            )

    await asyncio.gather(*(write(f, s) for f, s in zip(names, shards, strict=True)))
    fault_point("checkpoint.save.shards_written")
    index = {
        "metadata": {"total_size": total, **(metadata or {})},
        "weight_map": weight_map,
    }
    await client.write_file(
        f"{directory}/{INDEX}", json.dumps(index, indent=1).encode()
    )
    return names


def _as_entry(t: Any) -> tuple[Any, tuple[int, ...], memoryview]:
    return t.dtype, tuple(t.shape), _tensor_bytes(t)


def _wanted(names: Names) -> Callable[[str], bool]:
    if names is None:
        return lambda _: True
    if callable(names):
        return names
    chosen = set(names)
    return chosen.__contains__


async def read_index(client: Client, directory: str) -> dict[str, str]:
    """Tensor name -> shard file of the checkpoint in `directory`."""
    raw = await client.read_file(f"{directory}/{INDEX}")
    return dict(json.loads(raw)["weight_map"])


async def load_state_dict(
    client: Client,
    directory: str,
    *,
    names: Names = None,
    verify: bool = True,
    concurrency: int = 16,
) -> StateDict:
    """The tensors of the checkpoint in `directory` (all, or those `names`
    lists or accepts), as CPU tensors. Raises ChecksumMismatch when a tensor's
    CRC32C differs from its header's (with `verify`)."""
    import torch

    wanted = _wanted(names)
    files = sorted(
        {f for n, f in (await read_index(client, directory)).items() if wanted(n)}
    )
    out: StateDict = {}

    async def load(fname: str) -> None:
        async with await client.open(f"{directory}/{fname}") as f:
            n = fmt.header_length(await f.pread(8, 0))
            plan = fmt.parse(await f.pread(n, 8))
            jobs = []
            for info in plan.tensors:
                if not wanted(info.name):
                    continue
                dtype = getattr(torch, fmt.TORCH_DTYPES[info.dtype])
                t = torch.empty(info.shape, dtype=dtype)
                out[info.name] = t
                view = _tensor_bytes(t)
                if view.nbytes != info.nbytes:
                    raise errors.InvalidArgument(f"{fname}: {info.name} has a bad size")
                jobs.append(
                    _read_tensor(f, view, plan.data_start + info.begin, info, verify)
                )
            await _bounded(concurrency, jobs)

    await asyncio.gather(*(load(f) for f in files))
    return out


async def _read_tensor(
    f: Any, view: memoryview, offset: int, info: fmt.TensorInfo, verify: bool
) -> None:
    if view.nbytes and await f.preadinto(view, offset) != view.nbytes:
        raise errors.InvalidArgument(f"{f.path}: {info.name} is truncated")
    if verify and info.crc is not None:
        crc = await asyncio.to_thread(fmt.checksum, view)
        if crc != info.crc:
            raise errors.ChecksumMismatch(
                f"{f.path}: tensor {info.name} crc32c {crc:08x} != {info.crc:08x}"
            )


class SaveHandle:
    """A background save: `await handle` (or `await handle.result()`) gives
    the committed checkpoint's path or raises its error; `done()` polls."""

    def __init__(self, task: asyncio.Task[str]) -> None:
        self._task = task

    def done(self) -> bool:
        return self._task.done()

    async def result(self) -> str:
        return await asyncio.shield(self._task)

    def __await__(self) -> Any:
        return self.result().__await__()


class CheckpointManager:
    """Atomic, retained, optionally background checkpoints under `directory`."""

    def __init__(
        self,
        client: Client,
        directory: str,
        *,
        keep_last: int | None = 3,
        shard_bytes: int = GiB,
        concurrency: int = 16,
        chunk_size: int = 0,
    ) -> None:
        self.client = client
        self.directory = directory.rstrip("/") or "/"
        self.keep_last = keep_last
        self.shard_bytes = shard_bytes
        self.concurrency = concurrency
        self.chunk_size = chunk_size
        self._pending: set[asyncio.Task[str]] = set()
        self._last: asyncio.Task[str] | None = None
        self._active: set[str] = set()

    def step_path(self, step: int) -> str:
        return f"{self.directory}/step-{step}"

    async def save(
        self, step: int, state_dict: StateDict, metadata: dict[str, str] | None = None
    ) -> str:
        """Write and commit step `step`; returns its path. AlreadyExists if that
        step is already committed. Applies retention afterwards."""
        tmp_name = f".tmp-{step}-{uuid.uuid4().hex[:12]}"
        tmp = f"{self.directory}/{tmp_name}"
        self._active.add(tmp_name)
        try:
            await self.client.mkdir(tmp, parents=True)
            fault_point("checkpoint.save.dir_made")
            meta = {"step": str(step), **(metadata or {})}
            await save_state_dict(
                self.client,
                tmp,
                state_dict,
                shard_bytes=self.shard_bytes,
                metadata=meta,
                concurrency=self.concurrency,
                chunk_size=self.chunk_size,
            )
            fault_point("checkpoint.save.index_written")
            try:
                await self.client.rename(tmp, self.step_path(step))
            except errors.NotEmpty:
                raise errors.AlreadyExists(f"checkpoint step {step} exists") from None
        finally:
            self._active.discard(tmp_name)
        logger.info("checkpoint %s committed", self.step_path(step))
        fault_point("checkpoint.save.committed")
        await self.apply_retention()
        return self.step_path(step)

    def save_async(
        self, step: int, state_dict: StateDict, metadata: dict[str, str] | None = None
    ) -> SaveHandle:
        """Snapshot `state_dict` now (on the caller's thread), then save it in
        the background, after any earlier background save. Call from the
        event loop; `wait()` or `aclose()` waits for every pending save."""
        snap = snapshot(state_dict)
        previous = self._last

        async def run() -> str:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            return await self.save(step, snap, metadata)

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        self._last = task
        return SaveHandle(task)

    async def wait(self) -> None:
        """Wait for every background save; raises the first failure."""
        tasks = list(self._pending)
        if tasks:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r

    async def aclose(self) -> None:
        await self.wait()

    async def __aenter__(self) -> CheckpointManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def steps(self) -> list[int]:
        """Committed steps, ascending."""
        try:
            entries = await self.client.listdir(self.directory)
        except errors.NotFound:
            return []
        return sorted(int(m.group(1)) for e in entries if (m := STEP_RE.match(e.name)))

    async def latest(self) -> int | None:
        steps = await self.steps()
        return steps[-1] if steps else None

    async def load(
        self, step: int | None = None, *, names: Names = None, verify: bool = True
    ) -> StateDict:
        """Load step `step` (default: the latest). NotFound when there is none."""
        if step is None:
            step = await self.latest()
            if step is None:
                raise errors.NotFound(f"no checkpoint in {self.directory}")
        return await load_state_dict(
            self.client,
            self.step_path(step),
            names=names,
            verify=verify,
            concurrency=self.concurrency,
        )

    async def apply_retention(self) -> list[int]:
        """Remove all but the last `keep_last` steps; returns those removed. Each
        disappears at once (renamed to a hidden name) before its files go."""
        if not self.keep_last:
            return []
        steps = await self.steps()
        doomed = steps[: -self.keep_last] if len(steps) > self.keep_last else []
        for step in doomed:
            hidden = f"{self.directory}/.del-{step}-{uuid.uuid4().hex[:12]}"
            try:
                await self.client.rename(self.step_path(step), hidden)
            except errors.NotFound:
                continue  # another manager removed it
            fault_point("checkpoint.retention.hidden")
            await self.client.remove(hidden, recursive=True)
        return doomed

    async def remove_incomplete(self) -> int:
        """Delete leftovers of saves and removals that died midway (hidden
        `.tmp-`/`.del-` directories not in use by this manager)."""
        try:
            entries = await self.client.listdir(self.directory)
        except errors.NotFound:
            return 0
        n = 0
        for e in entries:
            if e.name.startswith((".tmp-", ".del-")) and e.name not in self._active:
                await self.client.remove(f"{self.directory}/{e.name}", recursive=True)
                n += 1
        return n
