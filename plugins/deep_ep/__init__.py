"""Expert parallelism: EPLB placement, per-rank expert shards, dispatch/combine.

`make_dispatcher` returns DeepEP's dispatcher when `deep_ep` is installed and CUDA is
available (`BACKEND == "deep_ep"`), else the `torch.distributed` all-to-all reference.
Both expose `dispatch(x, topk_idx, topk_weights)` and `combine(x, handle)`.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from plugins import kernel_available
from plugins.deep_ep.placement import PlacementPlan, rebalance_experts
from plugins.deep_ep.reference import AllToAllDispatcher, expert_forward

BACKEND = "deep_ep" if kernel_available("deep_ep") else "reference"


def make_dispatcher(
    num_experts: int, group: dist.ProcessGroup | None = None, hidden_bytes: int = 0
) -> Any:
    """A dispatcher for `num_experts` physical experts split evenly over `group`."""
    if BACKEND == "deep_ep":
        from plugins.deep_ep.kernel import DeepEPDispatcher

        world = group or dist.group.WORLD
        assert world is not None, "init_process_group first"
        return DeepEPDispatcher(num_experts, world, hidden_bytes)
    return AllToAllDispatcher(num_experts, group)


__all__ = [
    "BACKEND",
    "AllToAllDispatcher",
    "PlacementPlan",
    "expert_forward",
    "make_dispatcher",
    "rebalance_experts",
]
