"""FP8 (e4m3) block quantization in DeepGEMM's layouts.

Activations: per token, per 128 channels ("1x128"): `x [m, k]` becomes
`x_fp8 [m, k]` and float32 scales `[m, ceil(k / 128)]`.
Weights: per 128x128 block: `w [n, k]` becomes `w_fp8 [n, k]` and float32 scales
`[ceil(n / 128), ceil(k / 128)]`. This is DeepSeek V3's checkpoint format, where the
scales are stored as `<name>.weight_scale_inv`.
In both, `value ~= fp8 * scale` (the scale multiplies on dequantization).
"""

from __future__ import annotations

import torch

BLOCK = 128  # DeepGEMM's scaling granularity along k (and n for weights)
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# Keeps the scale finite for an all-zero block (DeepGEMM's tests use the same floor).
AMAX_FLOOR = 1e-4


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def per_token_cast_to_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations `[m, k]` with one scale per token per 128 channels."""
    m, k = x.shape
    pad = _ceil(k, BLOCK) * BLOCK - k
    xp = torch.nn.functional.pad(x.float(), (0, pad)).view(m, -1, BLOCK)
    amax = xp.abs().amax(dim=2).clamp(min=AMAX_FLOOR)
    q = (xp * (FP8_MAX / amax)[..., None]).to(FP8).view(m, -1)[:, :k]
    return q.contiguous(), amax / FP8_MAX


def per_block_cast_to_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize weights `[n, k]` with one scale per 128x128 block."""
    n, k = w.shape
    nb, kb = _ceil(n, BLOCK), _ceil(k, BLOCK)
    wp = torch.zeros((nb * BLOCK, kb * BLOCK), dtype=torch.float32, device=w.device)
    wp[:n, :k] = w.float()
    blocks = wp.view(nb, BLOCK, kb, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=AMAX_FLOOR)
    q = (blocks * (FP8_MAX / amax)[:, None, :, None]).to(FP8)
    return q.view(nb * BLOCK, kb * BLOCK)[:n, :k].contiguous(), amax / FP8_MAX


def dequant_per_token(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 `[m, k]` from 1x128-scaled FP8 activations."""
    k = x.shape[1]
    return x.float() * scales.float().repeat_interleave(BLOCK, dim=1)[:, :k]


def dequant_per_block(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 `[n, k]` from 128x128-scaled FP8 weights."""
    n, k = w.shape
    s = scales.float().repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)
    return w.float() * s[:n, :k]
