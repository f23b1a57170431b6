"""DeepGEMM FP8 block-scaled GEMM fed with weights from py3fs checkpoints.

`fp8_gemm_nt` / `gemm_fp8_fp8_bf16_nt` come from DeepGEMM when it is installed and
CUDA is available (`BACKEND == "deep_gemm"`), else from the PyTorch reference.
Quantizers live in `plugins.deep_gemm.quant`; `plugins.deep_gemm.weights` loads FP8
weights and their 128x128 scales into `Fp8Linear`.
"""

from __future__ import annotations

from plugins import kernel_available

if kernel_available("deep_gemm"):
    from plugins.deep_gemm.kernel import fp8_gemm_nt, gemm_fp8_fp8_bf16_nt

    BACKEND = "deep_gemm"
else:
    from plugins.deep_gemm.reference import fp8_gemm_nt, gemm_fp8_fp8_bf16_nt

    BACKEND = "reference"

__all__ = ["BACKEND", "fp8_gemm_nt", "gemm_fp8_fp8_bf16_nt"]
