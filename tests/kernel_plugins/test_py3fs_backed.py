"""Plugins fed from a real py3fs cluster: KV pages, FP8 checkpoints, expert shards."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="plugins need PyTorch")
pytest.importorskip("kv_cache.checkpoint", reason="kv_cache not available")

from test_deep_gemm import CALC_DIFF, REL_ERR, calc_diff, rel_err  # noqa: E402
from test_expert_placement import skewed_load  # noqa: E402
from test_flash_mla import DEVICES, _roundtrip  # noqa: E402

from client import Client  # noqa: E402
from kv_cache.checkpoint import CheckpointManager  # noqa: E402
from kv_cache.page_keys import page_keys  # noqa: E402
from kv_cache.store import KVCacheStore  # noqa: E402
from plugins import deep_gemm, flash_mla  # noqa: E402
from plugins.deep_ep.placement import rebalance_experts  # noqa: E402
from plugins.deep_ep.shards import (  # noqa: E402
    expert_names,
    load_rank_experts_from_checkpoint,
)
from plugins.deep_gemm import reference  # noqa: E402
from plugins.deep_gemm.weights import Fp8Linear, load_fp8_linears  # noqa: E402
from plugins.flash_mla import paged  # noqa: E402
from plugins.flash_mla import reference as mla_reference  # noqa: E402


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


# ---------------------------------------------------------------- real kernels
# These run where FlashMLA / DeepGEMM are built (scripts/gpu_kernels.sh on the GPU
# machine) and skip elsewhere; the pages and weights always come from the cluster.

FLASH_MLA = pytest.mark.skipif(
    flash_mla.BACKEND != "flash_mla", reason="FlashMLA not installed (or no GPU)"
)
DEEP_GEMM = pytest.mark.skipif(
    deep_gemm.BACKEND != "deep_gemm", reason="DeepGEMM not installed (or no GPU)"
)


@FLASH_MLA
async def test_flash_mla_kernel_on_py3fs_pages_matches_reference(fs: Client) -> None:
    """Pages written to a KVCacheStore and loaded into a CUDA paged cache feed
    FlashMLA's kernel (128 heads, DeepSeek's shapes); its output is within 1e-2
    of the PyTorch reference over the same cache, layer by layer."""
    gen = torch.Generator().manual_seed(5)
    layers, lengths = 4, [1000, 64, 640, 129]
    store = await KVCacheStore(fs, "mla-kernel", paged.page_nbytes(layers)).open()
    tokens = [torch.randint(0, 50_000, (n,), generator=gen).tolist() for n in lengths]
    latents = [
        torch.randn(layers, n, paged.LATENT_DIM, generator=gen).to(torch.bfloat16)
        for n in lengths
    ]
    src = paged.PagedKVCache(64, layers)
    for t, lat in zip(tokens, latents, strict=True):
        s = src.new_sequence()
        src.append(s, lat)
        await paged.save_prefix(src, store, s, page_keys(t))

    cache = paged.PagedKVCache(64, layers, device="cuda")
    seqs = [cache.new_sequence() for _ in lengths]
    for s, t, lat in zip(seqs, tokens, latents, strict=True):
        hit = await paged.load_prefix(cache, store, s, page_keys(t))
        assert hit == len(t) // 64 * 64
        cache.append(s, lat[:, hit:].cuda())
        assert cache.gather(s).cpu().equal(lat)  # bit-exact through py3fs

    q = torch.randn(len(lengths), 1, 128, paged.LATENT_DIM, generator=gen)
    q = q.to(torch.bfloat16).cuda()
    table, lens = cache.block_table(seqs), cache.cache_seqlens(seqs)
    meta, splits = flash_mla.get_mla_metadata(lens, 128, 1)
    worst = 0.0
    for layer in range(layers):
        k = cache.layer(layer)
        out, lse = flash_mla.flash_mla_with_kvcache(
            q, k, table, lens, 512, meta, splits
        )
        want, want_lse = mla_reference.flash_mla_with_kvcache(q, k, table, lens, 512)
        worst = max(worst, (out.float() - want.float()).abs().max().item())
        assert (lse - want_lse).abs().max().item() <= 1e-3
    print(f"FlashMLA on py3fs pages vs reference: max |out err| {worst:.2e}")
    assert worst <= 1e-2


@DEEP_GEMM
async def test_deep_gemm_kernel_on_py3fs_checkpoint(fs: Client) -> None:
    """An FP8 block-scaled checkpoint saved to py3fs, loaded onto the GPU, feeds
    DeepGEMM's GEMM: within 5e-2 relative error of the float32 product and
    DeepGEMM's own calc_diff bound against the reference GEMM."""
    gen = torch.Generator().manual_seed(13)
    m, n, k = 256, 4096, 7168  # DeepSeek V3's hidden size as k
    w = torch.randn(n, k, generator=gen)
    state = Fp8Linear.quantize(w).state_dict("model.layers.3.mlp.gate_proj")
    path = await CheckpointManager(fs, "/ckpt-deepgemm", keep_last=1).save(1, state)
    layers = await load_fp8_linears(fs, path, device="cuda")
    layer = layers["model.layers.3.mlp.gate_proj"]
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    got = layer(x)
    err = rel_err(got, x.float() @ w.cuda().T)
    diff = calc_diff(got, layer(x, gemm=reference.fp8_gemm_nt))
    print(
        f"DeepGEMM on py3fs checkpoint: rel err vs float32 {err:.4f}, "
        f"calc_diff vs reference {diff:.2e}"
    )
    assert err < REL_ERR
    assert diff < CALC_DIFF
