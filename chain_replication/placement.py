"""Chain placement: group storage targets into CRAQ chains. Pure, no I/O.

Every chain holds `replicas` targets on distinct nodes and every target belongs to
at most one chain (a CRAQ target is one replica of one chain). Positions are
balanced across nodes, heads above all, because the head serializes every write
of its chain: piling heads on one node would make it the write bottleneck. Each
chain picks the rotation of its nodes that least loads the head, then the other
positions (rotations, not all permutations, keep this linear in `replicas`).
"""

from __future__ import annotations

from py3fs import errors


def make_chains(
    targets_by_node: dict[int, list[int]], replicas: int
) -> list[list[int]]:
    """Chains (lists of target ids, head first) built from `targets_by_node`.

    Greedy: each chain takes one target from each of the `replicas` nodes with the
    most targets left, which yields the largest possible number of chains (with N
    nodes of T targets each and `replicas` dividing N*T, all N*T/replicas of them).
    Targets that cannot complete a chain stay unused. Deterministic for a given
    input. Raises InvalidArgument if `replicas` < 1 or exceeds the number of nodes
    that have targets.
    """
    nodes = sorted(n for n, targets in targets_by_node.items() if targets)
    if replicas < 1:
        raise errors.InvalidArgument(f"replicas must be >= 1, got {replicas}")
    if replicas > len(nodes):
        raise errors.InvalidArgument(
            f"{replicas} replicas need {replicas} storage nodes with targets, "
            f"have {len(nodes)}"
        )
    remaining = {n: sorted(targets_by_node[n], reverse=True) for n in nodes}
    # position_counts[p][node]: chains in which `node` sits at position p (0 = head)
    position_counts = [dict.fromkeys(nodes, 0) for _ in range(replicas)]
    chains: list[list[int]] = []
    while True:
        eligible = [n for n in nodes if remaining[n]]
        if len(eligible) < replicas:
            return chains
        chosen = sorted(
            sorted(eligible, key=lambda n: (-len(remaining[n]), n))[:replicas]
        )
        order = min(
            (chosen[i:] + chosen[:i] for i in range(replicas)),
            key=lambda rotation: (
                position_counts[0][rotation[0]],
                sum(
                    counts[n]
                    for counts, n in zip(position_counts, rotation, strict=True)
                ),
            ),
        )
        for counts, node in zip(position_counts, order, strict=True):
            counts[node] += 1
        chains.append([remaining[n].pop() for n in order])
