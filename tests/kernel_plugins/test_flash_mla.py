"""FlashMLA plugin: reference decode attention, paged cache, py3fs-backed pages."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="plugins need PyTorch")

from kv_cache.page_keys import page_keys  # noqa: E402
from plugins import flash_mla  # noqa: E402
from plugins.flash_mla import paged, reference  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
D, DV = 576, 512
# bf16 output: one bf16 ulp at |out| < 1 is <= 2**-8; atol 1e-2 leaves accumulation
# order room. lse is float32 in both, compared at 1e-4.
OUT_ATOL, LSE_ATOL = 1e-2, 1e-4


def _random_cache(
    b: int, seqlens: list[int], h_kv: int, device: str, gen: torch.Generator
):
    """A shuffled block table over a cache whose unused rows are NaN, as FlashMLA's
    own tests do, so any read past a sequence's length poisons the result."""
    bs = reference.BLOCK_SIZE
    max_blocks = max(-(-s // bs) for s in seqlens) or 1
    num_blocks = b * max_blocks
    k_cache = torch.randn(num_blocks, bs, h_kv, D, generator=gen).to(torch.bfloat16)
    perm = torch.randperm(num_blocks, generator=gen).view(b, max_blocks)
    for i, s in enumerate(seqlens):
        flat = k_cache[perm[i]].view(-1, h_kv, D)
        flat[s:] = float("nan")
        k_cache[perm[i]] = flat.view(max_blocks, bs, h_kv, D)
    lens = torch.tensor(seqlens, dtype=torch.int32)
    return k_cache.to(device), perm.to(torch.int32).to(device), lens.to(device)


def _naive(q, k_cache, block_table, seqlens, causal, scale):
    """Per (sequence, head, query) float32 loops: the definition, spelled out."""
    b, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    out = torch.zeros(b, s_q, h_q, DV)
    lse = torch.full((b, h_q, s_q), math.inf)
    for i in range(b):
        n = int(seqlens[i])
        rows = [k_cache[int(block_table[i, t // 64]), t % 64] for t in range(n)]
        for h in range(h_q):
            kh = h // (h_q // h_kv)
            for t in range(s_q):
                last = n - s_q + t if causal else n - 1
                keys = (
                    torch.stack([r[kh].float() for r in rows[: last + 1]])
                    if last >= 0
                    else None
                )
                if keys is None or len(keys) == 0:
                    continue
                s = keys @ q[i, t, h].float() * scale
                lse[i, h, t] = torch.logsumexp(s, 0)
                out[i, t, h] = torch.softmax(s, 0) @ keys[:, :DV]
    return out, lse


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_naive_per_head(device: str, causal: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    b, s_q, h_q, h_kv = 4, 2, 8, 1
    seqlens = [0, 1, 100, 130]
    k_cache, table, lens = _random_cache(b, seqlens, h_kv, device, gen)
    q = torch.randn(b, s_q, h_q, D, generator=gen).to(torch.bfloat16).to(device)
    meta, splits = reference.get_mla_metadata(lens, s_q * h_q // h_kv, h_kv)
    out, lse = reference.flash_mla_with_kvcache(
        q, k_cache, table, lens, DV, meta, splits, causal=causal
    )
    assert out.shape == (b, s_q, h_q, DV)
    assert out.dtype == torch.bfloat16
    assert lse.shape == (b, h_q, s_q)
    assert lse.dtype == torch.float32
    want_out, want_lse = _naive(
        q.cpu(), k_cache.cpu(), table.cpu(), seqlens, causal, D**-0.5
    )
    err_out = (out.cpu().float() - want_out).abs().max().item()
    finite = torch.isfinite(want_lse)
    err_lse = (lse.cpu()[finite] - want_lse[finite]).abs().max().item()
    print(
        f"flash_mla reference vs naive ({device}, causal={causal}): "
        f"max |out err| {err_out:.2e}, max |lse err| {err_lse:.2e}"
    )
    assert err_out <= OUT_ATOL
    assert err_lse <= LSE_ATOL
    # The empty sequence: out 0 and lse +inf, as the kernel.
    assert torch.isinf(lse[0]).all()
    assert (out[0] == 0).all()
    assert torch.equal(torch.isinf(lse.cpu()), ~finite)


def test_reference_gqa_heads_and_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    k_cache, table, lens = _random_cache(2, [64, 70], 2, "cpu", gen)
    q = torch.randn(2, 1, 4, D, generator=gen).to(torch.bfloat16)
    out, lse = reference.flash_mla_with_kvcache(
        q, k_cache, table, lens, DV, softmax_scale=0.1
    )
    want_out, want_lse = _naive(q, k_cache, table, [64, 70], False, 0.1)
    assert (out.float() - want_out).abs().max() <= OUT_ATOL
    assert (lse - want_lse).abs().max() <= LSE_ATOL


class MemoryPageStore:
    """The `PageStore` protocol over a dict, standing in for KVCacheStore."""

    def __init__(self) -> None:
        self.pages: dict[bytes, bytes] = {}

    async def put(self, keys, buffers) -> None:
        for k, buf in zip(keys, buffers, strict=True):
            self.pages[k] = bytes(buf)

    async def get(self, keys, buffers) -> list[bool]:
        for k, buf in zip(keys, buffers, strict=True):
            if k in self.pages:
                buf[:] = self.pages[k]
        return [k in self.pages for k in keys]

    async def batch_exists(self, keys) -> int:
        n = 0
        while n < len(keys) and keys[n] in self.pages:
            n += 1
        return n


def _decode_all_layers(cache: paged.PagedKVCache, seqs: list[int], q: torch.Tensor):
    # The plugin's choice (FlashMLA's kernel where it is built) on CUDA; the kernel
    # takes CUDA tensors only, so CPU caches use the reference.
    mla = flash_mla if q.is_cuda else reference
    table, lens = cache.block_table(seqs), cache.cache_seqlens(seqs)
    meta, splits = mla.get_mla_metadata(lens, q.shape[1] * q.shape[2], 1)
    return [
        mla.flash_mla_with_kvcache(
            q, cache.layer(layer), table, lens, DV, meta, splits
        )[0]
        for layer in range(cache.num_layers)
    ]


async def _roundtrip(store, device: str) -> None:
    """Attention over pages loaded from `store` equals attention over the same KV
    appended straight into memory; the tail (< 64 tokens) is appended after load."""
    gen = torch.Generator().manual_seed(2)
    layers, lengths = 3, [200, 64, 10]
    tokens = [torch.randint(0, 50_000, (n,), generator=gen).tolist() for n in lengths]
    latents = [
        torch.randn(layers, n, D, generator=gen).to(torch.bfloat16) for n in lengths
    ]
    q = torch.randn(len(lengths), 1, 16, D, generator=gen).to(torch.bfloat16).to(device)

    mem = paged.PagedKVCache(16, layers, device=device)
    seqs = [mem.new_sequence() for _ in lengths]
    for s, lat in zip(seqs, latents, strict=True):
        mem.append(s, lat.to(device))
    assert mem.gather(seqs[0]).cpu().equal(latents[0])
    put = [
        await paged.save_prefix(mem, store, s, page_keys(t))
        for s, t in zip(seqs, tokens, strict=True)
    ]
    assert put == [3, 1, 0]

    loaded = paged.PagedKVCache(16, layers, device=device)
    seqs2 = [loaded.new_sequence() for _ in lengths]
    # Occupy a block first so the loaded sequences land on other physical blocks.
    loaded.append(
        loaded.new_sequence(),
        torch.zeros(layers, 1, D, dtype=torch.bfloat16, device=device),
    )
    for s, t, lat in zip(seqs2, tokens, latents, strict=True):
        hit = await paged.load_prefix(loaded, store, s, page_keys(t))
        loaded.append(s, lat[:, hit:].to(device))
    assert loaded.blocks(seqs2[0]) != mem.blocks(seqs[0])

    want, got = _decode_all_layers(mem, seqs, q), _decode_all_layers(loaded, seqs2, q)
    err = max(
        (a.float() - b.float()).abs().max().item()
        for a, b in zip(want, got, strict=True)
    )
    print(f"paged decode from store vs in-memory ({device}): max |err| {err:.2e}")
    assert err <= OUT_ATOL


@pytest.mark.parametrize("device", DEVICES)
async def test_paged_cache_from_page_store_matches_memory(device: str) -> None:
    await _roundtrip(MemoryPageStore(), device)


def test_page_layout_numbers() -> None:
    assert paged.page_nbytes(61) == 61 * 64 * 576 * 2 == 4_497_408
    cache = paged.PagedKVCache(4, 61)
    assert cache.layer(0).shape == (4, 64, 1, 576)
    assert cache.layer(0).stride(-1) == 1


def test_cache_full_raises() -> None:
    cache = paged.PagedKVCache(1, 1)
    s = cache.new_sequence()
    cache.append(s, torch.zeros(1, 64, D, dtype=torch.bfloat16))
    with pytest.raises(MemoryError):
        cache.append(s, torch.zeros(1, 1, D, dtype=torch.bfloat16))
    cache.free_sequence(s)
    cache.append(cache.new_sequence(), torch.zeros(1, 64, D, dtype=torch.bfloat16))


@CUDA
@pytest.mark.skipif(flash_mla.BACKEND != "flash_mla", reason="FlashMLA not installed")
def test_flash_mla_kernel_matches_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    seqlens = [1, 64, 300, 1000]
    k_cache, table, lens = _random_cache(4, seqlens, 1, "cuda", gen)
    q = torch.randn(4, 1, 128, D, generator=gen).to(torch.bfloat16).cuda()
    meta, splits = flash_mla.get_mla_metadata(lens, 128, 1)
    out, lse = flash_mla.flash_mla_with_kvcache(
        q, k_cache, table, lens, DV, meta, splits
    )
    want_out, want_lse = reference.flash_mla_with_kvcache(q, k_cache, table, lens, DV)
    err = (out.float() - want_out.float()).abs().max().item()
    print(f"FlashMLA kernel vs reference: max |out err| {err:.2e}")
    assert err <= OUT_ATOL
    assert (lse - want_lse).abs().max().item() <= 1e-3
