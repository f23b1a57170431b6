"""chain_replication.placement: chains on distinct nodes, targets used once, heads
spread."""

from __future__ import annotations

from collections import Counter

import pytest

from chain_replication.placement import make_chains
from py3fs import errors


def cluster(nodes: int, targets: int) -> dict[int, list[int]]:
    return {
        n: [n * 100 + i for i in range(1, targets + 1)] for n in range(1, nodes + 1)
    }


def node_of(targets_by_node: dict[int, list[int]]) -> dict[int, int]:
    return {t: n for n, ts in targets_by_node.items() for t in ts}


def check(
    targets_by_node: dict[int, list[int]], chains: list[list[int]], r: int
) -> None:
    owner = node_of(targets_by_node)
    used = [t for chain in chains for t in chain]
    assert len(used) == len(set(used)), "a target is in two chains"
    for chain in chains:
        assert len(chain) == r
        assert len({owner[t] for t in chain}) == r, f"{chain} repeats a node"


@pytest.mark.parametrize(
    ("nodes", "targets", "replicas", "expected"),
    [(3, 4, 3, 4), (3, 4, 1, 12), (4, 3, 3, 4), (5, 2, 2, 5), (6, 6, 3, 12)],
)
def test_uniform_clusters_use_every_target(
    nodes: int, targets: int, replicas: int, expected: int
) -> None:
    tbn = cluster(nodes, targets)
    chains = make_chains(tbn, replicas)
    check(tbn, chains, replicas)
    assert len(chains) == expected


@pytest.mark.parametrize(("nodes", "targets", "replicas"), [(3, 4, 3), (6, 6, 3)])
def test_positions_are_balanced(nodes: int, targets: int, replicas: int) -> None:
    tbn = cluster(nodes, targets)
    owner = node_of(tbn)
    chains = make_chains(tbn, replicas)
    for position in range(replicas):
        per_node = Counter(owner[chain[position]] for chain in chains)
        counts = [per_node.get(n, 0) for n in tbn]
        assert max(counts) - min(counts) <= 1, (position, counts)


def test_uneven_nodes_leave_no_completable_chain_unbuilt() -> None:
    tbn = {1: [1, 2, 3, 4, 5, 6], 2: [7, 8], 3: [9, 10]}
    chains = make_chains(tbn, 2)
    check(tbn, chains, 2)
    # every chain needs a target off node 1, which has only four
    assert len(chains) == 4


def test_deterministic() -> None:
    assert make_chains(cluster(4, 5), 3) == make_chains(cluster(4, 5), 3)


def test_nodes_without_targets_do_not_count() -> None:
    with pytest.raises(errors.InvalidArgument):
        make_chains({1: [1], 2: [2], 3: []}, 3)


@pytest.mark.parametrize("replicas", [0, -1, 4])
def test_bad_replica_counts(replicas: int) -> None:
    with pytest.raises(errors.InvalidArgument):
        make_chains(cluster(3, 2), replicas)
