"""Plugins fed from a real py3fs cluster: KV pages, FP8 checkpoints, expert shards."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="plugins need PyTorch")
pytest.importorskip("kv_cache.checkpoint", reason="kv_cache not available")

from test_deep_gemm import REL_ERR, rel_err  # noqa: E402
from test_expert_placement import skewed_load  # noqa: E402
from test_flash_mla import DEVICES, _roundtrip  # noqa: E402

from client import Client  # noqa: E402
from kv_cache.checkpoint import CheckpointManager  # noqa: E402
from kv_cache.store import KVCacheStore  # noqa: E402
from plugins.deep_ep.placement import rebalance_experts  # noqa: E402
from plugins.deep_ep.shards import (  # noqa: E402
    expert_names,
    load_rank_experts_from_checkpoint,
)
from plugins.deep_gemm import reference  # noqa: E402
from plugins.deep_gemm.weights import Fp8Linear, load_fp8_linears  # noqa: E402
from plugins.flash_mla import paged  # noqa: E402


@pytest.mark.parametrize("device", DEVICES)
async def test_decode_over_pages_loaded_from_py3fs(fs: Client, device: str) -> None:
    """Pages put into a KVCacheStore and read back into a fresh paged cache give
    the same decode attention as the KV kept in memory (3 layers, 200/64/10
    tokens, 16 heads)."""
    store = await KVCacheStore(fs, f"mla-{device}", paged.page_nbytes(3)).open()
    await _roundtrip(store, device)
    assert store.metrics["hits"] == 4


async def test_fp8_linear_from_py3fs_checkpoint(fs: Client) -> None:
    gen = torch.Generator().manual_seed(3)
    weights = {
        f"model.layers.{i}.mlp.down_proj": torch.randn(256, 384, generator=gen)
        for i in range(2)
    }
    state = {}
    for name, w in weights.items():
        state.update(Fp8Linear.quantize(w).state_dict(name))
    state["model.embed.weight"] = torch.randn(16, 8).to(torch.bfloat16)
    ckpt = CheckpointManager(fs, "/ckpt-fp8", keep_last=1)
    path = await ckpt.save(1, state)

    layers = await load_fp8_linears(fs, path)
    assert sorted(layers) == sorted(weights)
    x = torch.randn(16, 384, generator=gen).to(torch.bfloat16)
    for name, layer in layers.items():
        # FP8 bytes and block scales come back bit for bit.
        assert layer.weight.view(torch.uint8).equal(
            state[f"{name}.weight"].view(torch.uint8)
        )
        assert layer.scale.equal(state[f"{name}.weight_scale_inv"])
        y = layer(x, gemm=reference.fp8_gemm_nt)
        err = rel_err(y, x.float() @ weights[name].T)
        print(f"{name} from py3fs checkpoint: rel err vs float32 {err:.4f}")
        assert err < REL_ERR


async def test_expert_shards_per_rank_from_py3fs_checkpoint(fs: Client) -> None:
    plan = rebalance_experts(skewed_load(4), 80, 8, 2, 8)
    fmt = "model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
    state = {
        n: torch.full((4, 4), float(layer * 100 + e)).to(torch.bfloat16)
        for layer in (1, 2)
        for e in range(64)
        for n in expert_names(layer, e, fmt, ("w1",))
    }
    path = await CheckpointManager(fs, "/ckpt-experts", keep_last=1).save(7, state)
    for rank in (0, 5):
        slots = await load_rank_experts_from_checkpoint(
            fs, path, plan, rank, [1, 2], fmt, ("w1",)
        )
        for layer in (1, 2):
            got = [int(s["w1"][0, 0]) for s in slots[layer]]
            assert got == [layer * 100 + e for e in plan.experts_on_rank(rank, layer)]
