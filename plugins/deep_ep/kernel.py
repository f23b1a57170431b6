"""DeepEP's NVLink/RDMA dispatch/combine behind the reference's interface.

Normal mode (`deep_ep.Buffer.get_dispatch_layout`, `dispatch`, `combine`); DeepEP's
handle replaces ours. Low-latency mode (`low_latency_dispatch/combine`, for decode
with a fixed token budget and RDMA) needs NVSHMEM buffers sized at construction and
is not wrapped here.
"""

from __future__ import annotations

from typing import Any

import deep_ep
import torch
import torch.distributed as dist


class DeepEPDispatcher:
    """Intranode (NVLink) DeepEP buffer sized for `hidden_bytes` per token."""

    def __init__(
        self, num_experts: int, group: dist.ProcessGroup, hidden_bytes: int
    ) -> None:
        size = group.size()
        nvl_bytes = max(
            deep_ep.Buffer.get_dispatch_config(size).get_nvl_buffer_size_hint(
                hidden_bytes, size
            ),
            deep_ep.Buffer.get_combine_config(size).get_nvl_buffer_size_hint(
                hidden_bytes, size
            ),
        )
        self.buffer = deep_ep.Buffer(group, nvl_bytes, 0)
        self.num_experts = num_experts

    def dispatch(
        self, x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], Any]:
        per_rank, per_rdma_rank, per_expert, in_rank, _ = (
            self.buffer.get_dispatch_layout(topk_idx, self.num_experts)
        )
        recv_x, recv_idx, recv_w, recv_per_expert, handle, _ = self.buffer.dispatch(
            x,
            topk_idx=topk_idx,
            topk_weights=topk_weights,
            num_tokens_per_rank=per_rank,
            num_tokens_per_rdma_rank=per_rdma_rank,
            is_token_in_rank=in_rank,
            num_tokens_per_expert=per_expert,
        )
        return recv_x, recv_idx, recv_w, recv_per_expert, handle

    def combine(self, x: torch.Tensor, handle: Any) -> torch.Tensor:
        combined, _, _ = self.buffer.combine(x, handle)
        return combined
