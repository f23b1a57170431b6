"""Load the expert weights a rank needs under a placement plan.

Each rank holds `plan.slots_per_gpu` physical slots per layer; a slot is a replica of
one logical expert, so the rank loads only those experts' tensors (each logical
expert once, even when it holds two replicas of it). Tensor names default to
DeepSeek V3's `model.layers.{layer}.mlp.experts.{expert}.{proj}.weight`; FP8 weights
come with their `.weight_scale_inv` block scales when `with_scales` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from plugins.deep_ep.placement import PlacementPlan

if TYPE_CHECKING:
    from client import Client

DEFAULT_FORMAT = "model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
DEFAULT_PROJS = ("gate_proj", "up_proj", "down_proj")
Loader = Callable[[Sequence[str]], Mapping[str, torch.Tensor]]


def expert_names(
    layer: int,
    expert: int,
    fmt: str = DEFAULT_FORMAT,
    projs: Sequence[str] = DEFAULT_PROJS,
    with_scales: bool = False,
) -> list[str]:
    names = [fmt.format(layer=layer, expert=expert, proj=p) for p in projs]
    if with_scales:
        names += [n.removesuffix(".weight") + ".weight_scale_inv" for n in names]
    return names


def load_rank_experts(
    plan: PlacementPlan,
    rank: int,
    layer: int,
    load: Loader,
    fmt: str = DEFAULT_FORMAT,
    projs: Sequence[str] = DEFAULT_PROJS,
    with_scales: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Tensors of each of `rank`'s slots in `layer`, in slot order.

    `load(names)` returns the named tensors (from a checkpoint, a safetensors file,
    a state dict); it is called once with every name the rank needs, so a striped
    checkpoint can fetch them in parallel. Each slot maps `proj` (and
    `proj + "_scale_inv"` with scales) to its tensor; replicas share tensors.
    Raises KeyError when the loader lacks a name.
    """
    experts = plan.experts_on_rank(rank, layer)
    wanted = sorted(set(experts))
    names = {e: expert_names(layer, e, fmt, projs, with_scales) for e in wanted}
    tensors = load([n for e in wanted for n in names[e]])
    keys = list(projs) + ([p + "_scale_inv" for p in projs] if with_scales else [])
    per_expert = {
        e: {k: tensors[n] for k, n in zip(keys, names[e], strict=True)} for e in wanted
    }
    return [per_expert[e] for e in experts]


def state_dict_loader(state: Mapping[str, torch.Tensor]) -> Loader:
    """A loader over tensors already in memory."""
    return lambda names: {n: state[n] for n in names}


def safetensors_loader(path: str) -> Loader:
    """A loader reading only the named tensors of a local safetensors file."""

    def load(names: Sequence[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {n: f.get_tensor(n) for n in names}

    return load


def rank_tensor_names(
    plan: PlacementPlan,
    rank: int,
    layer: int,
    fmt: str = DEFAULT_FORMAT,
    projs: Sequence[str] = DEFAULT_PROJS,
    with_scales: bool = False,
) -> list[str]:
    """Every tensor name `rank` needs for `layer` (each logical expert once)."""
    experts = sorted(set(plan.experts_on_rank(rank, layer)))
    return [n for e in experts for n in expert_names(layer, e, fmt, projs, with_scales)]


async def load_rank_experts_from_checkpoint(
    client: Client,
    directory: str,
    plan: PlacementPlan,
    rank: int,
    layers: Sequence[int],
    fmt: str = DEFAULT_FORMAT,
    projs: Sequence[str] = DEFAULT_PROJS,
    with_scales: bool = False,
) -> dict[int, list[dict[str, torch.Tensor]]]:
    """`load_rank_experts` for several layers from a py3fs checkpoint (a
    `kv_cache.checkpoint` directory): one parallel read of only this rank's
    tensors, CRC-checked. Returns layer -> slots."""
    from kv_cache.checkpoint import load_state_dict

    names = [
        n
        for layer in layers
        for n in rank_tensor_names(plan, rank, layer, fmt, projs, with_scales)
    ]
    state = await load_state_dict(client, directory, names=names)
    load = state_dict_loader(state)
    return {
        layer: load_rank_experts(plan, rank, layer, load, fmt, projs, with_scales)
        for layer in layers
    }
