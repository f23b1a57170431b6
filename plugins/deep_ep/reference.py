"""Expert-parallel dispatch/combine over `torch.distributed.all_to_all_single`.

Mirrors DeepEP's normal (non-low-latency) mode: each token goes once to every rank
that holds at least one of its top-k experts, carrying `topk_idx` rewritten to that
rank's local expert indices (-1 for experts elsewhere) and the matching weights
(0 elsewhere). The receiver runs its experts and reduces them per token (see
`expert_forward`); `combine` sends those rows back and sums them on the token's
origin rank, in the origin's token order. Works on any backend with all-to-all
(gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DispatchHandle:
    """What `combine` needs to send rows back: the origin token of each sent row
    (grouped by destination rank) and the split sizes of both directions."""

    send_tokens: torch.Tensor
    send_splits: list[int]
    recv_splits: list[int]
    num_tokens: int


def _exchange(
    t: torch.Tensor,
    out_rows: int,
    out_splits: list[int],
    in_splits: list[int],
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    out = t.new_empty((out_rows, *t.shape[1:]))
    dist.all_to_all_single(out, t.contiguous(), out_splits, in_splits, group=group)
    return out


class AllToAllDispatcher:
    """Dispatcher over a process group whose rank r holds physical experts
    `[r * experts_per_rank, (r + 1) * experts_per_rank)`."""

    def __init__(
        self, num_experts: int, group: dist.ProcessGroup | None = None
    ) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        if num_experts % self.world:
            raise ValueError(
                f"{num_experts} experts do not split over {self.world} ranks"
            )
        self.num_experts = num_experts
        self.experts_per_rank = num_experts // self.world

    def dispatch(
        self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], DispatchHandle]:
        """Send tokens to their experts' ranks.

        Args: x [T, H]; topk_idx [T, k] int64 global physical expert ids (-1 for
        none); topk_weights [T, k] float32.
        Returns (recv_x [R, H], recv_topk_idx [R, k] local ids or -1,
        recv_topk_weights [R, k], num_recv_tokens_per_expert, handle), as DeepEP.
        A collective: every rank of the group must call it.
        """
        epr = self.experts_per_rank
        dest = torch.where(topk_idx >= 0, topk_idx // epr, -1)
        rows, splits, idx_parts, w_parts = [], [], [], []
        for r in range(self.world):
            hit = dest == r
            tokens = hit.any(dim=1).nonzero().flatten()
            rows.append(tokens)
            splits.append(int(tokens.numel()))
            local = torch.where(hit[tokens], topk_idx[tokens] - r * epr, -1)
            idx_parts.append(local)
            w_parts.append(torch.where(hit[tokens], topk_weights[tokens], 0.0))
        send_tokens = torch.cat(rows)
        # The counts travel on x's device: NCCL has no CPU tensors.
        send_counts = torch.tensor(splits, dtype=torch.long, device=x.device)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        recv_splits = recv_counts.tolist()
        total = sum(recv_splits)

        def ex(t: torch.Tensor) -> torch.Tensor:
            return _exchange(t, total, recv_splits, splits, self.group)

        recv_x = ex(x[send_tokens])
        recv_idx = ex(torch.cat(idx_parts).to(x.device))
        recv_w = ex(torch.cat(w_parts).to(x.device))
        per_expert = torch.bincount(recv_idx[recv_idx >= 0], minlength=epr).tolist()
        handle = DispatchHandle(send_tokens, splits, recv_splits, x.shape[0])
        return recv_x, recv_idx, recv_w, per_expert, handle

    def combine(self, x: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """Return per-token rows `x [R, H]` (in `dispatch`'s receive order) to their
        origin ranks and sum them per token: [T, H] in x's dtype. A collective."""
        back = _exchange(
            x,
            len(handle.send_tokens),
            handle.send_splits,
            handle.recv_splits,
            self.group,
        )
        out = torch.zeros(
            (handle.num_tokens, x.shape[1]), dtype=torch.float32, device=x.device
        )
        out.index_add_(0, handle.send_tokens.to(x.device), back.float())
        return out.to(x.dtype)


def expert_forward(
    recv_x: torch.Tensor,
    recv_topk_idx: torch.Tensor,
    recv_topk_weights: torch.Tensor,
    expert: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run the local experts on received tokens and reduce per token:
    `y[t] = sum_j w[t, j] * expert(idx[t, j], x[t])` over local ids (>= 0).
    `expert(local_id, rows [n, H]) -> [n, H]`. Accumulates in float32."""
    y = torch.zeros(recv_x.shape, dtype=torch.float32, device=recv_x.device)
    for e in recv_topk_idx[recv_topk_idx >= 0].unique().tolist():
        tok, slot = (recv_topk_idx == e).nonzero(as_tuple=True)
        out = expert(e, recv_x[tok]).float()
        y.index_add_(0, tok, out * recv_topk_weights[tok, slot, None].float())
    return y.to(recv_x.dtype)
