"""PyTorch reference for FlashMLA's paged decode attention.

Mirrors `flash_mla.flash_mla_with_kvcache` for the dense bf16 cache: queries and keys
are the 576-dim MLA latent (512 "NoPE" dims + 64 RoPE dims), values are the first
`head_dim_v` (512) dims of the same cache rows, so one tensor serves as K and V.
Computes in float32 and returns the query dtype, like the kernel's accumulators.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK_SIZE = 64  # FlashMLA's page block size, in tokens
TILE_METADATA_SIZE = 8  # int32 fields per SM part in FlashMLA's scheduler metadata


def get_mla_metadata(
    cache_seqlens: torch.Tensor | None = None,
    num_q_tokens_per_head_k: int | None = None,
    num_heads_k: int | None = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scheduler metadata in FlashMLA's (pre-2025-09) shapes.

    Returns `(tile_scheduler_metadata [1, 8] int32, num_splits [b + 1] int32)`. The
    reference does not split sequences across SMs, so the plan is one split per
    sequence; `flash_mla_with_kvcache` below ignores it. Extra arguments are accepted
    for call compatibility with both FlashMLA interfaces.
    """
    device = cache_seqlens.device if cache_seqlens is not None else None
    b = int(cache_seqlens.numel()) if cache_seqlens is not None else 0
    tile = torch.zeros((1, TILE_METADATA_SIZE), dtype=torch.int32, device=device)
    return tile, torch.arange(b + 1, dtype=torch.int32, device=device)


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: Any = None,
    num_splits: Any = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention over a paged latent cache.

    Args:
        q: [b, s_q, h_q, d] (d = 576 for DeepSeek V3).
        k_cache: [num_blocks, block_size, h_kv, d]; may be a strided view as long as
            the last dim is contiguous.
        block_table: [b, max_blocks_per_seq] int32, logical block -> physical block.
            Entries past a sequence's last block are never read.
        cache_seqlens: [b] int32 tokens cached per sequence.
        head_dim_v: value width; values are `k_cache[..., :head_dim_v]`.
        softmax_scale: default `d ** -0.5`, as FlashMLA.
        causal: with s_q > 1, query t sees keys up to `seqlen - s_q + t` (the
            queries are the last s_q tokens of the sequence).

    Returns `(out [b, s_q, h_q, head_dim_v] q.dtype, lse [b, h_q, s_q] float32)`,
    lse in natural log. A sequence with no visible key yields out 0 and lse +inf,
    matching the kernel.

    Raises NotImplementedError for the FP8 or sparse (indices) cache modes.
    """
    if is_fp8_kvcache or indices is not None:
        raise NotImplementedError("reference covers the dense bf16 cache only")
    b, s_q, h_q, d = q.shape
    _, block_size, h_kv, d_k = k_cache.shape
    if d_k != d or h_q % h_kv:
        raise ValueError(
            f"q {tuple(q.shape)} does not fit k_cache {tuple(k_cache.shape)}"
        )
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    g = h_q // h_kv
    out = torch.zeros((b, s_q, h_q, head_dim_v), dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), float("inf"), dtype=torch.float32, device=q.device)
    lens = cache_seqlens.tolist()
    # One sequence at a time keeps the gathered float32 K at one sequence's size.
    for i, seqlen in enumerate(lens):
        if seqlen == 0:
            continue
        n_blocks = -(-seqlen // block_size)
        blocks = block_table[i, :n_blocks].long()
        kv = k_cache[blocks].reshape(n_blocks * block_size, h_kv, d)[:seqlen]
        kv = kv.float()
        # Query head j reads kv head j // g; grouping q avoids copying K per head.
        qg = q[i].float().reshape(s_q, h_kv, g, d)
        scores = torch.einsum("sngd,lnd->ngsl", qg, kv).reshape(h_q, s_q, seqlen)
        scores = scores * scale
        if causal:
            pos = torch.arange(seqlen, device=q.device)
            last = torch.arange(s_q, device=q.device) + (seqlen - s_q)
            scores = scores.masked_fill(pos[None, :] > last[:, None], float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [h_q, s_q]
        visible = torch.isfinite(row_lse)
        probs = torch.exp(scores - row_lse.masked_fill(~visible, 0)[..., None])
        pg = probs.reshape(h_kv, g, s_q, seqlen)
        o = torch.einsum("ngsl,lnv->sngv", pg, kv[..., :head_dim_v])
        o = o.reshape(s_q, h_q, head_dim_v)
        out[i] = torch.where(visible.T[..., None], o, 0.0)
        lse[i] = row_lse.masked_fill(~visible, float("inf"))
    return out.to(q.dtype), lse
