"""Acceptance 2: checkpoints saved through py3fs load back bit-exact, read with
the safetensors library, are never visible half-written (even when the saving
process is killed), keep the last N, and save in the background."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import Client
from py3fs import errors
from py3fs.cluster import LocalCluster

torch = pytest.importorskip("torch", reason="checkpoints need torch")
st_torch = pytest.importorskip(
    "safetensors.torch", reason="format check needs safetensors"
)

from kv_cache.checkpoint import INDEX, CheckpointManager  # noqa: E402

PEER = Path(__file__).with_name("checkpoint_peer.py")
MiB = 1 << 20


def small_model(seed: int = 0) -> dict:
    """bf16 and FP8 weights with per-128x128-block scales, like DeepSeek's."""
    g = torch.Generator().manual_seed(seed)
    w8 = torch.randn(256, 384, generator=g)
    return {
        "embed.weight": torch.randn(1000, 256, generator=g).to(torch.bfloat16),
        "layers.0.attn.wq.weight": w8.to(torch.float8_e4m3fn),
        "layers.0.attn.wq.weight.scale": torch.rand(2, 3, generator=g),
        "layers.0.mlp.w1.weight": torch.randn(3 * MiB // 2, generator=g).to(
            torch.bfloat16
        ),  # 3 MiB: crosses a 1 MiB chunk boundary
        "layers.0.mlp.w1.weight.scale": torch.rand(96, generator=g),
        "layers.0.norm.weight": torch.ones(256, dtype=torch.bfloat16),
        "step_counter": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 4),
    }


def bits(t):  # type: ignore[no-untyped-def]
    return t.reshape(-1).view(torch.uint8)


def assert_bit_exact(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert got[k].shape == v.shape, k
        assert torch.equal(bits(got[k]), bits(v)), k


async def test_roundtrip_bit_exact_and_safetensors_readable(
    fs: Client, tmp_path: Path
) -> None:
    sd = small_model()
    mgr = CheckpointManager(fs, "/ckpt/roundtrip", shard_bytes=2 * MiB, chunk_size=MiB)
    path = await mgr.save(1, sd)
    assert path == "/ckpt/roundtrip/step-1"
    names = sorted(e.name for e in await fs.listdir(path))
    shards = [n for n in names if n.endswith(".safetensors")]
    assert len(shards) >= 2
    assert INDEX in names
    assert_bit_exact(await mgr.load(1), sd)
    # The safetensors library reads every shard as written.
    merged = {}
    for name in shards:
        local = tmp_path / name
        local.write_bytes(await fs.read_file(f"{path}/{name}"))
        merged.update(st_torch.load_file(str(local)))
    assert_bit_exact(merged, sd)
    # Loading a subset reads only what is asked for.
    part = await mgr.load(names=lambda n: n.endswith(".scale"))
    assert sorted(part) == [
        "layers.0.attn.wq.weight.scale",
        "layers.0.mlp.w1.weight.scale",
    ]


async def test_corruption_is_detected(fs: Client) -> None:
    sd = {"w": torch.arange(4096, dtype=torch.float32)}
    mgr = CheckpointManager(fs, "/ckpt/corrupt")
    path = await mgr.save(1, sd)
    shard = f"{path}/model-00001-of-00001.safetensors"
    async with await fs.open(shard, "r+b") as f:
        size = f.length
        await f.pwrite(b"\x55", size - 100)  # inside the tensor's data
    with pytest.raises(errors.ChecksumMismatch):
        await mgr.load(1)
    assert (await mgr.load(1, verify=False))["w"].numel() == 4096


async def test_retention_keeps_last_n(fs: Client) -> None:
    mgr = CheckpointManager(fs, "/ckpt/retain", keep_last=2)
    for step in (1, 2, 3, 4):
        await mgr.save(step, {"w": torch.full((16,), float(step))})
    assert await mgr.steps() == [3, 4]
    assert sorted(e.name for e in await fs.listdir("/ckpt/retain")) == [
        "step-3",
        "step-4",
    ]
    assert float((await mgr.load())["w"][0]) == 4.0
    with pytest.raises(errors.AlreadyExists):
        await mgr.save(4, {"w": torch.zeros(1)})
    await mgr.remove_incomplete()


async def test_async_save_snapshots_before_returning(fs: Client) -> None:
    sd = small_model(seed=1)
    want = {k: v.clone() for k, v in sd.items()}
    async with CheckpointManager(fs, "/ckpt/async", keep_last=None) as mgr:
        h1 = mgr.save_async(10, sd)
        # Training goes on at once and changes the weights in place.
        for v in sd.values():
            if v.numel() and v.dtype != torch.float8_e4m3fn:
                v.zero_()
        h2 = mgr.save_async(11, sd)
        assert await h1 == "/ckpt/async/step-10"
        await h2
    assert_bit_exact(await mgr.load(10), want)
    assert float((await mgr.load(11))["embed.weight"].float().abs().sum()) == 0.0
    assert await mgr.steps() == [10, 11]


async def test_killed_save_is_never_visible(
    fs: Client, cluster: LocalCluster, tmp_path: Path
) -> None:
    directory = "/ckpt/killed"
    mgr = CheckpointManager(fs, directory)
    first = {"w": torch.arange(100, dtype=torch.bfloat16)}
    await mgr.save(1, first)
    err = tmp_path / "peer.err"
    with err.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PEER),
            str(cluster.cluster_file),
            directory,
            "2",
            "96",
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        # Kill it once a shard of the new step has data in the hidden directory.
        deadline = time.monotonic() + 60
        while True:
            assert proc.returncode is None, err.read_text()[-2000:]
            assert time.monotonic() < deadline, "save never started"
            tmp = [
                e.name
                for e in await fs.listdir(directory)
                if e.name.startswith(".tmp-2-")
            ]
            if tmp and await fs.listdir(f"{directory}/{tmp[0]}"):
                break
            await asyncio.sleep(0.02)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == -9, "the save finished before it could be killed"
    assert await mgr.steps() == [1]
    assert await mgr.latest() == 1
    assert_bit_exact(await mgr.load(), first)
    assert await mgr.remove_incomplete() == 1
    assert [e.name for e in await fs.listdir(directory)] == ["step-1"]
