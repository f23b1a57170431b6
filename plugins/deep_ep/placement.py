"""EPLB-style expert placement: redundant replicas for hot experts, balanced over GPUs.

Same contract as deepseek-ai/EPLB `rebalance_experts(weight, num_replicas, num_groups,
num_nodes, num_gpus) -> (phy2log, log2phy, logcnt)`, our own implementation:

1. Hierarchical (when the expert groups divide evenly over the nodes): pack whole
   expert groups onto nodes so node loads are even, which keeps group-limited
   routing's traffic inside a node.
2. Within each node, give the node's share of physical slots to its logical
   experts: one each, then one more at a time to the expert with the highest load
   per replica.
3. Pack the node's physical experts (load = logical load / replica count) onto its
   GPUs, the same number per GPU, heaviest first onto the least loaded GPU.
Otherwise (groups do not divide over nodes) it plans as one node with one group.

Physical slot `p` lives on GPU `p // (num_replicas // num_gpus)`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch


def _balanced_packing(loads: list[float], num_packs: int) -> list[list[int]]:
    """Split item indices into `num_packs` packs of equal count, loads balanced
    greedily (heaviest item into the lightest pack that still has room)."""
    per_pack = len(loads) // num_packs
    packs: list[list[int]] = [[] for _ in range(num_packs)]
    heap = [(0.0, p) for p in range(num_packs)]
    for item in sorted(range(len(loads)), key=lambda i: -loads[i]):
        load, p = heapq.heappop(heap)
        packs[p].append(item)
        if len(packs[p]) < per_pack:
            heapq.heappush(heap, (load + loads[item], p))
    return packs


def _replicate(loads: list[float], num_slots: int) -> list[int]:
    """Replica count per item: one each, extras to the highest load per replica."""
    counts = [1] * len(loads)
    heap = [(-load, i) for i, load in enumerate(loads)]
    heapq.heapify(heap)
    for _ in range(num_slots - len(loads)):
        _, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, (-loads[i] / counts[i], i))
    return counts


def _plan_layer(
    load: list[float], num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> list[int]:
    """phy2log for one layer."""
    n = len(load)
    group_size = n // num_groups
    group_load = [
        sum(load[g * group_size : (g + 1) * group_size]) for g in range(num_groups)
    ]
    phy2log: list[int] = []
    for node_groups in _balanced_packing(group_load, num_nodes):
        experts = [
            g * group_size + j for g in sorted(node_groups) for j in range(group_size)
        ]
        counts = _replicate([load[e] for e in experts], num_replicas // num_nodes)
        slots = [e for e, c in zip(experts, counts, strict=True) for _ in range(c)]
        per_replica = {e: load[e] / c for e, c in zip(experts, counts, strict=True)}
        gpus = _balanced_packing([per_replica[e] for e in slots], num_gpus // num_nodes)
        for gpu in gpus:
            phy2log.extend(sorted(slots[i] for i in gpu))
    return phy2log


@dataclass(frozen=True)
class PlacementPlan:
    """Where every physical expert slot lives, for every layer.

    phy2log: [layers, num_replicas] logical expert held by each physical slot.
    log2phy: [layers, num_logical, max_replicas] physical slots of each logical
        expert, padded with -1.
    logcnt: [layers, num_logical] replica count of each logical expert.
    """

    phy2log: torch.Tensor
    log2phy: torch.Tensor
    logcnt: torch.Tensor
    num_gpus: int

    @property
    def slots_per_gpu(self) -> int:
        return self.phy2log.shape[1] // self.num_gpus

    def experts_on_rank(self, rank: int, layer: int) -> list[int]:
        """Logical expert held by each of `rank`'s slots, in slot order."""
        s = self.slots_per_gpu
        return self.phy2log[layer, rank * s : (rank + 1) * s].tolist()

    def gpu_loads(self, weight: torch.Tensor) -> torch.Tensor:
        """[layers, num_gpus] expected load, each replica taking an equal share."""
        share = weight.float() / self.logcnt.float()
        per_slot = share.gather(1, self.phy2log)
        return per_slot.view(weight.shape[0], self.num_gpus, -1).sum(-1)

    def imbalance(self, weight: torch.Tensor) -> torch.Tensor:
        """[layers] max / mean GPU load (1.0 is perfect balance)."""
        loads = self.gpu_loads(weight)
        return loads.max(-1).values / loads.mean(-1)

    def route(self, topk_logical: torch.Tensor, layer: int) -> torch.Tensor:
        """Map logical top-k ids `[tokens, k]` to physical slots, spreading tokens
        round-robin (by token index) over an expert's replicas."""
        cnt = self.logcnt[layer].to(topk_logical.device)[topk_logical]
        token = torch.arange(topk_logical.shape[0], device=topk_logical.device)
        replica = token[:, None] % cnt
        return self.log2phy[layer].to(topk_logical.device)[topk_logical, replica]


def rebalance_experts(
    weight: torch.Tensor,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> PlacementPlan:
    """Plan `num_replicas` physical slots for `weight [layers, num_logical]` loads.

    Raises ValueError unless num_replicas is a multiple of num_gpus, num_gpus of
    num_nodes, num_logical of num_groups, and num_replicas >= num_logical.
    """
    layers, n = weight.shape
    if num_replicas % num_gpus or num_gpus % num_nodes or n % num_groups:
        raise ValueError("replicas/GPUs/nodes/groups must divide evenly")
    if num_replicas < n:
        raise ValueError(f"{num_replicas} slots cannot hold {n} experts")
    if num_groups % num_nodes:
        num_groups, num_nodes = 1, 1
    rows = weight.float().tolist()
    phy2log = torch.tensor(
        [_plan_layer(r, num_replicas, num_groups, num_nodes, num_gpus) for r in rows],
        dtype=torch.long,
    ).view(layers, num_replicas)
    logcnt = torch.zeros((layers, n), dtype=torch.long)
    logcnt.scatter_add_(1, phy2log, torch.ones_like(phy2log))
    log2phy = torch.full((layers, n, int(logcnt.max())), -1, dtype=torch.long)
    for layer in range(layers):
        seen = [0] * n
        for p, e in enumerate(phy2log[layer].tolist()):
            log2phy[layer, e, seen[e]] = p
            seen[e] += 1
    return PlacementPlan(phy2log, log2phy, logcnt, num_gpus)
