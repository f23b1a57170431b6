"""PyTorch reference for DeepGEMM's FP8 block-scaled "NT" GEMM.

`D = A @ B.T (+ C)` with `A` FP8 `[m, k]` scaled per token per 128 channels and `B`
FP8 `[n, k]` scaled per 128x128 block (layouts in `plugins.deep_gemm.quant`).
Dequantizes, multiplies in float32 and writes `D` in its own dtype (bf16), which is
what the kernel computes up to accumulation order (it promotes its FP8 tensor-core
partial sums to float32 every 128 channels of k).
"""

from __future__ import annotations

import torch

from plugins.deep_gemm.quant import dequant_per_block, dequant_per_token


def fp8_gemm_nt(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None = None,
    **_kernel_options: object,
) -> None:
    """`d = a @ b.T (+ c)`, written into `d` `[m, n]` in place (DeepGEMM's
    current name). Kernel-only keyword options (e.g. `disable_ue8m0_cast`) are
    accepted and ignored."""
    (x, sx), (w, sw) = a, b
    if x.shape[1] != w.shape[1] or d.shape != (x.shape[0], w.shape[0]):
        raise ValueError(
            f"shapes a {tuple(x.shape)}, b {tuple(w.shape)}, d {tuple(d.shape)}"
        )
    acc = dequant_per_token(x, sx) @ dequant_per_block(w, sw).T
    if c is not None:
        acc = acc + c.float()
    d.copy_(acc.to(d.dtype))


def gemm_fp8_fp8_bf16_nt(
    lhs: tuple[torch.Tensor, torch.Tensor],
    rhs: tuple[torch.Tensor, torch.Tensor],
    out: torch.Tensor,
) -> None:
    """DeepGEMM's original (v1) name for the same GEMM with bf16 `out`."""
    fp8_gemm_nt(lhs, rhs, out)
