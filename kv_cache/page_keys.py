"""Page keys: token ids cut into pages of 64 tokens (FlashMLA's block size), each
keyed by a hash chained over every page before it.

    key_0 = H(tokens of page 0)
    key_i = H(key_{i-1} || tokens of page i)

so two sequences with the same first n pages get the same first n keys, and a
key names the whole prefix up to its page, not just the page's tokens. H is
BLAKE2b with a 16-byte digest; token ids are packed as little-endian uint32 (a
vocabulary never needs more), so keys are stable across processes and hosts.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

PAGE_TOKENS = 64
KEY_BYTES = 16


def _pack(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}I", *tokens)


def page_key(prev: bytes | None, tokens: Sequence[int]) -> bytes:
    """The key of a page of `tokens` that follows the page keyed `prev` (None
    for the first page)."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    if prev is not None:
        h.update(prev)
    h.update(_pack(tokens))
    return h.digest()


def page_keys(
    tokens: Sequence[int],
    page_tokens: int = PAGE_TOKENS,
    *,
    prev: bytes | None = None,
    partial: bool = False,
) -> list[bytes]:
    """Keys of the full pages of `tokens` (and of a last partial page when
    `partial`); `prev` continues a chain from an earlier call."""
    if page_tokens <= 0:
        raise ValueError("page_tokens must be positive")
    keys = []
    end = len(tokens) if partial else len(tokens) - len(tokens) % page_tokens
    for start in range(0, end, page_tokens):
        prev = page_key(prev, tokens[start : start + page_tokens])
        keys.append(prev)
    return keys


def hex_keys(keys: Sequence[bytes]) -> list[str]:
    """Keys as hex strings (how SGLang passes page hashes around)."""
    return [k.hex() for k in keys]
