"""Page keys and the safetensors layout (pure; no processes)."""

from __future__ import annotations

import json

import pytest

from kv_cache import safetensors_format as fmt
from kv_cache.checkpoint import _windows
from kv_cache.page_keys import PAGE_TOKENS, page_key, page_keys


def test_chained_keys_share_prefixes() -> None:
    a = list(range(5 * PAGE_TOKENS + 10))
    b = [*a[: 2 * PAGE_TOKENS + 3], 99, *a[2 * PAGE_TOKENS + 4 :]]
    ka, kb = page_keys(a), page_keys(b)
    assert len(ka) == 5
    assert len(page_keys(a, partial=True)) == 6
    assert all(len(k) == 16 for k in ka)
    assert ka[:2] == kb[:2]
    assert ka[2] != kb[2]
    # Same page tokens after a different prefix give a different key.
    assert ka[3] != kb[3]
    assert page_key(ka[0], a[PAGE_TOKENS : 2 * PAGE_TOKENS]) == ka[1]
    assert page_keys(a[PAGE_TOKENS:], prev=ka[0]) == ka[1:]


def test_windows_cover_parts_in_order() -> None:
    parts = [memoryview(bytes(range(n))) for n in (3, 10, 0, 7)]
    out = list(_windows(parts, 4))
    assert [off for off, _ in out] == [0, 4, 8, 12, 16]
    assert b"".join(bytes(b) for _, b in out) == b"".join(bytes(p) for p in parts)


def test_plan_aligns_and_parses_back() -> None:
    tensors = {
        "b8": ("torch.uint8", (3,), memoryview(b"abc")),
        "f32": ("torch.float32", (2,), memoryview(bytes(8))),
        "bf": ("torch.bfloat16", (1,), memoryview(b"xy")),
    }
    plan = fmt.plan(tensors, {"step": "3"})
    assert plan.data_start % 8 == 0
    assert [t.name for t in plan.tensors] == ["f32", "bf", "b8"]
    n = fmt.header_length(plan.header[:8])
    again = fmt.parse(plan.header[8 : 8 + n])
    assert [(t.name, t.begin, t.end, t.crc) for t in again.tensors] == [
        (t.name, t.begin, t.end, t.crc) for t in plan.tensors
    ]
    assert json.loads(plan.header[8:])["__metadata__"]["step"] == "3"
    with pytest.raises(Exception, match="safetensors name"):
        fmt.plan({"c": ("torch.complex64", (1,), memoryview(bytes(8)))})
