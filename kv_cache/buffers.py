"""Caller buffers as flat byte views sharing their memory (zero-copy I/O)."""

from __future__ import annotations

from typing import Any

from py3fs import errors


def byte_view(buf: Any) -> memoryview:
    """A flat byte view of `buf` sharing its memory. Torch tensors must be
    contiguous and on the CPU (InvalidArgument otherwise)."""
    if type(buf).__module__.startswith("torch"):
        import torch

        if buf.device.type != "cpu" or not buf.is_contiguous():
            raise errors.InvalidArgument("tensors must be contiguous CPU tensors")
        return memoryview(buf.detach().reshape(-1).view(torch.uint8).numpy())
    return memoryview(buf).cast("B")
