"""FP8 linear layers whose weights come from a state dict or a py3fs checkpoint.

Naming follows DeepSeek V3 checkpoints: `<name>.weight` holds float8_e4m3fn `[n, k]`
and `<name>.weight_scale_inv` holds float32 `[ceil(n/128), ceil(k/128)]`, the factor
that multiplies on dequantization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from plugins.deep_gemm.quant import FP8, per_block_cast_to_fp8, per_token_cast_to_fp8

if TYPE_CHECKING:
    from client import Client

SCALE_SUFFIX = ".weight_scale_inv"
GemmFn = Callable[..., None]


@dataclass(frozen=True)
class Fp8Linear:
    """`y = x @ W.T` with W kept in FP8 and activations quantized per call."""

    weight: torch.Tensor  # float8_e4m3fn [n, k]
    scale: torch.Tensor  # float32 [ceil(n/128), ceil(k/128)]

    def __post_init__(self) -> None:
        n, k = self.weight.shape
        want = (-(-n // 128), -(-k // 128))
        if self.weight.dtype != FP8 or tuple(self.scale.shape) != want:
            raise ValueError(
                f"weight {self.weight.dtype} {tuple(self.weight.shape)} with scale "
                f"{tuple(self.scale.shape)}: want {FP8} and scale {want}"
            )

    @classmethod
    def quantize(cls, w: torch.Tensor) -> Fp8Linear:
        return cls(*per_block_cast_to_fp8(w))

    def to(self, device: torch.device | str) -> Fp8Linear:
        return Fp8Linear(self.weight.to(device), self.scale.to(device).float())

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": self.weight, f"{name}{SCALE_SUFFIX}": self.scale}

    def __call__(self, x: torch.Tensor, gemm: GemmFn | None = None) -> torch.Tensor:
        """bf16 `[m, n]` for activations `[m, k]`; `gemm` defaults to the plugin's."""
        if gemm is None:
            from plugins.deep_gemm import fp8_gemm_nt

            gemm = fp8_gemm_nt
        out = torch.empty(
            (x.shape[0], self.weight.shape[0]), dtype=torch.bfloat16, device=x.device
        )
        gemm(per_token_cast_to_fp8(x), (self.weight, self.scale), out)
        return out


def linear_from_state_dict(state: Mapping[str, torch.Tensor], name: str) -> Fp8Linear:
    """The FP8 layer `name` from a loaded state dict (KeyError when absent)."""
    return Fp8Linear(state[f"{name}.weight"], state[f"{name}{SCALE_SUFFIX}"])


def linear_names(tensor_names: Iterable[str]) -> list[str]:
    """Names of the FP8 layers among tensor names, sorted."""
    return sorted(
        k.removesuffix(SCALE_SUFFIX) for k in tensor_names if k.endswith(SCALE_SUFFIX)
    )


async def load_fp8_linears(
    client: Client,
    directory: str,
    names: Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Fp8Linear]:
    """FP8 layers from the py3fs checkpoint in `directory` (a
    `kv_cache.checkpoint` directory, e.g. `CheckpointManager.step_path(n)`).

    Reads only `<name>.weight` and `<name>.weight_scale_inv` of the named layers
    (all FP8 layers when `names` is None), with the checkpoint's CRC32C check, and
    moves them to `device`. Raises KeyError for a name the checkpoint lacks and
    `py3fs.errors.ChecksumMismatch` for a corrupt tensor.
    """
    from kv_cache.checkpoint import load_state_dict, read_index

    if names is None:
        names = linear_names(await read_index(client, directory))
    wanted = [f"{n}{s}" for n in names for s in (".weight", SCALE_SUFFIX)]
    state = await load_state_dict(client, directory, names=wanted)
    layers = {n: linear_from_state_dict(state, n) for n in names}
    return {n: lin.to(device) for n, lin in layers.items()} if device else layers
