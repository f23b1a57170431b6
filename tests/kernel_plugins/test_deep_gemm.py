"""DeepGEMM plugin: FP8 block quantization and the block-scaled GEMM reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="plugins need PyTorch")

from plugins import deep_gemm  # noqa: E402
from plugins.deep_gemm import quant, reference  # noqa: E402
from plugins.deep_gemm.weights import (  # noqa: E402
    Fp8Linear,
    linear_from_state_dict,
    linear_names,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
# e4m3 keeps 3 mantissa bits: each element is off by <= 2**-4 relative, and random
# errors average out over k, so the GEMM lands near 3% relative (Frobenius) error.
REL_ERR = 0.05
# DeepGEMM's own acceptance metric and bound (tests/test_fp8.py): 1 - cos-like
# similarity of the FP8 result against the unquantized float32 product.
CALC_DIFF = 1e-3


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum())


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "n", "k"), [(64, 256, 512), (5, 200, 300)])
def test_fp8_gemm_reference_matches_float32(
    device: str, m: int, n: int, k: int
) -> None:
    gen = torch.Generator().manual_seed(m + n + k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(device)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16).to(device)
    a, b = quant.per_token_cast_to_fp8(x), quant.per_block_cast_to_fp8(w)
    assert a[0].dtype == b[0].dtype == torch.float8_e4m3fn
    assert a[1].shape == (m, -(-k // 128))
    assert b[1].shape == (
        -(-n // 128),
        -(-k // 128),
    )
    out = torch.empty(m, n, dtype=torch.bfloat16, device=device)
    reference.gemm_fp8_fp8_bf16_nt(a, b, out)
    want = x.float() @ w.float().T
    err, diff = rel_err(out, want), calc_diff(out, want)
    print(
        f"fp8 gemm reference vs float32 ({device}, {m}x{n}x{k}): "
        f"rel err {err:.4f}, calc_diff {diff:.2e}"
    )
    assert err < REL_ERR
    assert diff < CALC_DIFF
    # Against the dequantized operands only the bf16 output rounding remains.
    exact = quant.dequant_per_token(*a) @ quant.dequant_per_block(*b).T
    assert rel_err(out, exact) < 2**-8


def test_quantization_roundtrip_and_zero_blocks() -> None:
    w = torch.zeros(256, 256)
    w[:128, :128] = torch.linspace(-3, 3, 128 * 128).view(128, 128)
    q, s = quant.per_block_cast_to_fp8(w)
    back = quant.dequant_per_block(q, s)
    assert torch.isfinite(s).all()
    assert (back[128:] == 0).all()
    assert rel_err(back, w) < 2**-4
    # The block's max maps onto the FP8 max exactly.
    assert q[:128, :128].float().abs().max() == quant.FP8_MAX


def test_fp8_linear_from_state_dict_accumulate() -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(384, 256, generator=gen)
    layer = Fp8Linear.quantize(w)
    state = {**layer.state_dict("model.layers.0.mlp.up_proj"), "other": torch.ones(1)}
    assert linear_names(state) == ["model.layers.0.mlp.up_proj"]
    loaded = linear_from_state_dict(state, "model.layers.0.mlp.up_proj")
    x = torch.randn(8, 256, generator=gen).to(torch.bfloat16)
    y = loaded(x, gemm=reference.fp8_gemm_nt)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, x.float() @ w.T) < REL_ERR
    c = torch.ones(8, 384)
    d = torch.empty(8, 384, dtype=torch.bfloat16)
    reference.fp8_gemm_nt(
        quant.per_token_cast_to_fp8(x), (loaded.weight, loaded.scale), d, c=c
    )
    assert rel_err(d.float() - 1, y.float()) < 2**-6
    with pytest.raises(ValueError, match="scale"):
        Fp8Linear(layer.weight, layer.scale[:1])


@CUDA
@pytest.mark.skipif(deep_gemm.BACKEND != "deep_gemm", reason="DeepGEMM not installed")
def test_deep_gemm_kernel_matches_reference() -> None:
    gen = torch.Generator().manual_seed(11)
    m, n, k = 128, 4096, 7168
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    layer = Fp8Linear.quantize(torch.randn(n, k, generator=gen).cuda())
    got = layer(x)
    want = layer(x, gemm=reference.fp8_gemm_nt)
    diff = calc_diff(got, want)
    print(
        f"DeepGEMM kernel vs reference: calc_diff {diff:.2e}, "
        f"rel err {rel_err(got, want):.2e}"
    )
    assert diff < CALC_DIFF
