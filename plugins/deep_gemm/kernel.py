"""DeepGEMM's CUDA GEMM under both of its names.

DeepGEMM 1.x exported `gemm_fp8_fp8_bf16_nt(lhs, rhs, out)`; 2.x renamed it
`fp8_gemm_nt(a, b, d, c=None, ...)` and converts scale layouts itself. Whichever the
installed version has backs both names here.
"""

from __future__ import annotations

import deep_gemm
import torch

_new = getattr(deep_gemm, "fp8_gemm_nt", None)
_old = getattr(deep_gemm, "gemm_fp8_fp8_bf16_nt", None)


def fp8_gemm_nt(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None = None,
    **kernel_options: object,
) -> None:
    if _new is not None:
        _new(a, b, d, c=c, **kernel_options)
        return
    if c is not None or kernel_options:
        raise NotImplementedError("this DeepGEMM has no accumulate or options")
    assert _old is not None
    _old(a, b, d)


def gemm_fp8_fp8_bf16_nt(
    lhs: tuple[torch.Tensor, torch.Tensor],
    rhs: tuple[torch.Tensor, torch.Tensor],
    out: torch.Tensor,
) -> None:
    fp8_gemm_nt(lhs, rhs, out)
