"""A paged MLA latent cache for FlashMLA, filled from tensors or from py3fs pages.

Store page layout (one `KVCacheStore` value): 64 consecutive tokens of one sequence,
all layers, as a C-contiguous bf16 array `[num_layers, 64, 576]` (layer-major, then
token, then latent dim; little-endian). DeepSeek V3's 61 layers make a page
61 x 64 x 576 x 2 B = 4,497,408 B. Only full pages are stored; a page's key chains
the token ids of the whole prefix up to its end, so equal prefixes share pages.

Cache layout (`PagedKVCache.kv`): `[num_blocks, num_layers, 64, 576]`, block-major,
so one store page lands in one contiguous block (a single `get` straight into the
cache on CPU, one host-to-device copy on GPU). FlashMLA takes a layer's cache as
the strided view `kv[:, layer, :, None, :]`, shape `[num_blocks, 64, 1, 576]`,
whose last dim is contiguous; the kernel reads rows through the block stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

BLOCK_SIZE = 64  # tokens per page and per FlashMLA block
LATENT_DIM = 576  # kv_lora_rank 512 + qk_rope_head_dim 64
CACHE_DTYPE = torch.bfloat16


def page_nbytes(num_layers: int) -> int:
    """Bytes of one store page holding `num_layers` layers."""
    return num_layers * BLOCK_SIZE * LATENT_DIM * 2


class PageStore(Protocol):
    """What this module needs from `kv_cache.KVCacheStore`."""

    async def put(
        self, keys: Sequence[bytes], buffers: Sequence[memoryview]
    ) -> Any: ...

    async def get(
        self, keys: Sequence[bytes], buffers: Sequence[memoryview]
    ) -> list[bool]: ...

    async def batch_exists(self, keys: Sequence[bytes]) -> int: ...


class PagedKVCache:
    """Fixed pool of 64-token blocks plus per-sequence block lists.

    Not thread-safe: one owner (the decode loop) appends and frees.
    """

    def __init__(
        self,
        num_blocks: int,
        num_layers: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = CACHE_DTYPE,
    ) -> None:
        self.num_layers = num_layers
        self.kv = torch.zeros(
            (num_blocks, num_layers, BLOCK_SIZE, LATENT_DIM), dtype=dtype, device=device
        )
        # Pop from the end: low block ids go first, which keeps tests readable.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._blocks: dict[int, list[int]] = {}
        self._lens: dict[int, int] = {}
        self._next_seq = 0

    # -- sequences --------------------------------------------------------------
    def new_sequence(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._blocks[seq] = []
        self._lens[seq] = 0
        return seq

    def free_sequence(self, seq: int) -> None:
        self._free.extend(reversed(self._blocks.pop(seq)))
        del self._lens[seq]

    def seqlen(self, seq: int) -> int:
        return self._lens[seq]

    def blocks(self, seq: int) -> list[int]:
        return list(self._blocks[seq])

    def _reserve(self, seq: int, tokens: int) -> None:
        """Make room for `tokens` more tokens; raises MemoryError when full."""
        need = -(-(self._lens[seq] + tokens) // BLOCK_SIZE) - len(self._blocks[seq])
        if need > len(self._free):
            raise MemoryError(
                f"paged cache full: need {need} blocks, {len(self._free)} free"
            )
        self._blocks[seq].extend(self._free.pop() for _ in range(need))

    def append(self, seq: int, latent: torch.Tensor) -> None:
        """Append tokens: `latent` is `[num_layers, n, 576]`."""
        layers, n, dim = latent.shape
        if layers != self.num_layers or dim != LATENT_DIM:
            raise ValueError(f"latent {tuple(latent.shape)} does not fit the cache")
        self._reserve(seq, n)
        pos, done = self._lens[seq], 0
        while done < n:
            block, off = divmod(pos, BLOCK_SIZE)
            take = min(BLOCK_SIZE - off, n - done)
            dst = self.kv[self._blocks[seq][block], :, off : off + take]
            dst.copy_(latent[:, done : done + take])
            pos, done = pos + take, done + take
        self._lens[seq] = pos

    # -- FlashMLA views -----------------------------------------------------------
    def layer(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s cache as FlashMLA's `k_cache` `[num_blocks, 64, 1, 576]`."""
        return self.kv[:, layer].unsqueeze(2)

    def block_table(self, seqs: Sequence[int]) -> torch.Tensor:
        """`[len(seqs), max_blocks]` int32; padding entries are 0 and never read."""
        width = max((len(self._blocks[s]) for s in seqs), default=0)
        table = torch.zeros((len(seqs), max(width, 1)), dtype=torch.int32)
        for row, s in enumerate(seqs):
            table[row, : len(self._blocks[s])] = torch.tensor(self._blocks[s])
        return table.to(self.kv.device)

    def cache_seqlens(self, seqs: Sequence[int]) -> torch.Tensor:
        return torch.tensor(
            [self._lens[s] for s in seqs], dtype=torch.int32, device=self.kv.device
        )

    def gather(self, seq: int) -> torch.Tensor:
        """The sequence's latent as `[num_layers, seqlen, 576]` (a copy)."""
        blocks = torch.tensor(
            self._blocks[seq], dtype=torch.long, device=self.kv.device
        )
        flat = (
            self.kv[blocks].permute(1, 0, 2, 3).reshape(self.num_layers, -1, LATENT_DIM)
        )
        return flat[:, : self._lens[seq]]


def _page_buffer(page: torch.Tensor) -> memoryview:
    """Writable bytes of a contiguous CPU page tensor, without copying."""
    return page.view(torch.uint8).reshape(-1).numpy().data


async def save_prefix(
    cache: PagedKVCache, store: PageStore, seq: int, keys: Sequence[bytes]
) -> int:
    """Put the sequence's full pages under `keys` (one key per page, in order).

    Pages past the cached length or past `keys` are skipped, as is a trailing
    partial page. Returns the number of pages put.
    """
    blocks = cache.blocks(seq)[: min(len(keys), cache.seqlen(seq) // BLOCK_SIZE)]
    if not blocks:
        return 0
    pages = [cache.kv[b].cpu() if cache.kv.is_cuda else cache.kv[b] for b in blocks]
    await store.put(list(keys[: len(blocks)]), [_page_buffer(p) for p in pages])
    return len(blocks)


async def load_prefix(
    cache: PagedKVCache, store: PageStore, seq: int, keys: Sequence[bytes]
) -> int:
    """Load the longest cached prefix of `keys` into an empty sequence.

    `keys` are the chained page keys of the sequence's tokens (one per full page,
    `kv_cache.page_keys.page_keys(tokens)`). Asks the store how many leading pages
    exist, reserves blocks, and reads the pages straight into them (CPU cache) or
    into pinned host memory followed by one host-to-device copy (CUDA cache). A
    page evicted between the lookup and the read ends the prefix there. Returns
    the number of tokens loaded (a multiple of 64); the caller appends the rest
    with `PagedKVCache.append`. If cancelled, blocks already reserved stay with
    `seq` until `free_sequence`.
    """
    if cache.seqlen(seq):
        raise ValueError("load_prefix needs an empty sequence")
    hit = await store.batch_exists(list(keys))
    if hit == 0:
        return 0
    cache._reserve(seq, hit * BLOCK_SIZE)
    blocks = cache.blocks(seq)
    if cache.kv.is_cuda:
        staging = torch.empty(
            (hit, *cache.kv.shape[1:]), dtype=cache.kv.dtype, pin_memory=True
        )
        found = await store.get(list(keys[:hit]), [_page_buffer(p) for p in staging])
        hit = _leading(found)
        index = torch.tensor(blocks[:hit], dtype=torch.long, device=cache.kv.device)
        cache.kv.index_copy_(0, index, staging[:hit].to(cache.kv.device))
    else:
        views = [_page_buffer(cache.kv[b]) for b in blocks]
        hit = _leading(await store.get(list(keys[:hit]), views))
    cache._free.extend(reversed(blocks[hit:]))
    del cache._blocks[seq][hit:]
    cache._lens[seq] = hit * BLOCK_SIZE
    return hit * BLOCK_SIZE


def _leading(found: list[bool]) -> int:
    return next((i for i, ok in enumerate(found) if not ok), len(found))
