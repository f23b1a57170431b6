"""Deterministic token sequences and page contents shared by the KVCache tests
and their peer process."""

from __future__ import annotations

import random

PAGE = 64 * 1024  # bytes per page in the tests (the real MLA page is 4.5 MiB)


def tokens(seed: int, n: int, *, prefix: list[int] | None = None) -> list[int]:
    rng = random.Random(seed)
    head = list(prefix or [])
    return head + [rng.randrange(128_000) for _ in range(n - len(head))]


def page_data(key: bytes, size: int = PAGE) -> bytes:
    """A page's bytes, derived from its key so any process can check them."""
    return (key * (size // len(key) + 1))[:size]
