"""EPLB-style placement: redundant experts and hierarchical balancing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="plugins need PyTorch")

from plugins.deep_ep.placement import rebalance_experts  # noqa: E402
from plugins.deep_ep.shards import load_rank_experts, state_dict_loader  # noqa: E402

# 64 logical experts in 8 groups over 2 nodes x 4 GPUs, 16 redundant slots (25%):
# DeepSeek V3's shape (256 experts, 8 groups, 32 redundant) scaled down.
LAYERS, EXPERTS, GROUPS, NODES, GPUS, SLOTS = 3, 64, 8, 2, 8, 80
BOUND = 1.2  # max/mean GPU load the plan must reach on the skewed load (naive: ~3.4)


def skewed_load(seed: int) -> torch.Tensor:
    """Zipf-like token counts: expert popularity falls as 1/rank^1.2, shuffled."""
    gen = torch.Generator().manual_seed(seed)
    base = 1000.0 / torch.arange(1, EXPERTS + 1).float() ** 1.2
    return torch.stack(
        [base[torch.randperm(EXPERTS, generator=gen)] for _ in range(LAYERS)]
    )


def test_plan_balances_skewed_load() -> None:
    load = skewed_load(0)
    plan = rebalance_experts(load, SLOTS, GROUPS, NODES, GPUS)
    # Without a plan: expert e on GPU e // 8, no replicas.
    naive = load.view(LAYERS, GPUS, -1).sum(-1)
    naive_ratio = (naive.max(-1).values / naive.mean(-1)).max().item()
    ratio = plan.imbalance(load).max().item()
    print(
        f"EPLB plan on Zipf(1.2) load: max/mean {ratio:.3f} (naive {naive_ratio:.3f})"
    )
    assert ratio < BOUND < naive_ratio

    assert plan.phy2log.shape == (LAYERS, SLOTS)
    assert (plan.logcnt >= 1).all()
    assert (plan.logcnt.sum(-1) == SLOTS).all()
    # The hottest expert of each layer got the most replicas.
    hot = load.argmax(-1)
    assert (
        plan.logcnt.gather(1, hot[:, None]).squeeze(1) == plan.logcnt.max(-1).values
    ).all()
    for layer in range(LAYERS):
        for e in range(EXPERTS):
            slots = [p for p in plan.log2phy[layer, e].tolist() if p >= 0]
            assert len(slots) == plan.logcnt[layer, e]
            assert all(plan.phy2log[layer, p] == e for p in slots)
    # Hierarchical: each group's experts (and their replicas) stay on one node.
    per_node = SLOTS // NODES
    for layer in range(LAYERS):
        for g in range(GROUPS):
            nodes = {
                p // per_node
                for e in range(g * 8, g * 8 + 8)
                for p in plan.log2phy[layer, e].tolist()
                if p >= 0
            }
            assert len(nodes) == 1


def test_global_policy_and_routing() -> None:
    load = skewed_load(1)
    # 8 groups over 3 nodes does not divide: plan as one node.
    plan = rebalance_experts(load, 72, GROUPS, 3, 6)
    assert plan.imbalance(load).max() < 1.2
    topk = torch.randint(0, EXPERTS, (1000, 4))
    phys = plan.route(topk, layer=0)
    assert torch.equal(plan.phy2log[0][phys], topk)
    # Tokens of the hottest expert spread evenly over its replicas.
    hot = int(load[0].argmax())
    hot_phys = plan.route(torch.full((1000, 1), hot), layer=0)
    hits = torch.bincount(hot_phys.flatten(), minlength=72)
    used = hits[hits > 0]
    assert len(used) == plan.logcnt[0, hot]
    assert used.max() - used.min() <= 1
    with pytest.raises(ValueError, match="slots"):
        rebalance_experts(load, 32, 8, 1, 8)


def test_rank_loads_only_its_experts() -> None:
    plan = rebalance_experts(skewed_load(2), SLOTS, GROUPS, NODES, GPUS)
    fmt = "layers.{layer}.experts.{expert}.{proj}.weight"
    state = {
        fmt.format(layer=1, expert=e, proj=p): torch.full((2, 2), float(e))
        for e in range(EXPERTS)
        for p in ("w1", "w2")
    }
    asked: list[str] = []
    base = state_dict_loader(state)

    def load(names):
        asked.extend(names)
        return base(names)

    slots = load_rank_experts(plan, 3, 1, load, fmt=fmt, projs=("w1", "w2"))
    experts = plan.experts_on_rank(3, 1)
    assert len(slots) == SLOTS // GPUS
    assert [int(s["w1"][0, 0]) for s in slots] == experts
    assert len(asked) == 2 * len(set(experts))
