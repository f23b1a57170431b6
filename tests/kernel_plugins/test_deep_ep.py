"""Expert-parallel dispatch/combine: 2 gloo processes on CPU (NCCL where CUDA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="plugins need PyTorch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from plugins.deep_ep import AllToAllDispatcher, expert_forward  # noqa: E402
from plugins.deep_ep.placement import rebalance_experts  # noqa: E402
from plugins.deep_ep.shards import load_rank_experts, safetensors_loader  # noqa: E402

WORLD, HIDDEN, TOPK, LOGICAL, SLOTS = 2, 32, 3, 6, 8
FMT = "layers.{layer}.experts.{expert}.{proj}.weight"
# Float32 experts; the only difference from the local product is summation order.
ATOL = 1e-5


def _tokens(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-specific tokens (ranks send different counts) with top-k routing."""
    gen = torch.Generator().manual_seed(100 + rank)
    t = 5 + 4 * rank
    x = torch.randn(t, HIDDEN, generator=gen)
    topk = torch.stack(
        [torch.randperm(LOGICAL, generator=gen)[:TOPK] for _ in range(t)]
    )
    w = torch.softmax(torch.randn(t, TOPK, generator=gen), -1)
    return x, topk, w


def _worker(rank: int, init: str, ckpt: str, out_dir: str, backend: str) -> None:
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=WORLD)
    try:
        device = (
            torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        )
        load = torch.tensor([[50.0, 10, 5, 5, 3, 1]])
        plan = rebalance_experts(load, SLOTS, 1, 1, WORLD)
        # This rank's experts, read from the checkpoint by name (only its own).
        slots = load_rank_experts(
            plan, rank, 0, safetensors_loader(ckpt), fmt=FMT, projs=("w",)
        )
        weights = [s["w"].to(device) for s in slots]

        x, topk, w = (t.to(device) for t in _tokens(rank))
        x[:, 0] = rank * 1000 + torch.arange(len(x), device=device)  # origin tag
        phys = plan.route(topk, layer=0)
        disp = AllToAllDispatcher(SLOTS)
        recv_x, recv_idx, recv_w, per_expert, handle = disp.dispatch(x, phys, w)
        assert sum(per_expert) == int((recv_idx >= 0).sum())

        # Identity experts with weights summing to 1: every token comes home intact.
        ident = disp.combine(
            expert_forward(recv_x, recv_idx, recv_w, lambda e, r: r), handle
        )
        torch.testing.assert_close(ident, x, atol=ATOL, rtol=1e-6)

        # Real experts: y = sum_k w_k * x @ W_{e_k}^T, against the local product.
        y = expert_forward(recv_x, recv_idx, recv_w, lambda e, r: r @ weights[e].T)
        got = disp.combine(y, handle)
        state = safetensors_loader(ckpt)(
            [FMT.format(layer=0, expert=e, proj="w") for e in range(LOGICAL)]
        )
        full = torch.stack(
            [state[FMT.format(layer=0, expert=e, proj="w")] for e in range(LOGICAL)]
        ).to(device)
        want = torch.einsum("tk,tkoh,th->to", w, full[topk], x)
        err = (got - want).abs().max().item()
        Path(out_dir, f"rank{rank}").write_text(f"{len(x)} {len(recv_x)} {err}")
        assert err <= ATOL * 100, err
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, backend: str) -> list[str]:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(5)
    ckpt = str(tmp_path / "experts.safetensors")
    save_file(
        {
            FMT.format(layer=0, expert=e, proj="w"): torch.randn(
                HIDDEN, HIDDEN, generator=gen
            )
            / HIDDEN**0.5
            for e in range(LOGICAL)
        },
        ckpt,
    )
    init = f"file://{tmp_path / 'rendezvous'}"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(
        _worker, args=(init, ckpt, str(tmp_path), backend), nprocs=WORLD, join=True
    )
    return [(tmp_path / f"rank{r}").read_text() for r in range(WORLD)]


def test_dispatch_combine_gloo_returns_every_token(tmp_path: Path) -> None:
    results = _run(tmp_path, "gloo")
    for r, line in enumerate(results):
        sent, received, err = line.split()
        print(
            f"rank {r}: {sent} tokens sent, {received} received, "
            f"max |err| {float(err):.2e}"
        )


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < WORLD,
    reason="needs 2 CUDA GPUs",
)
def test_dispatch_combine_nccl(tmp_path: Path) -> None:
    _run(tmp_path, "nccl")
