"""Kernel plugins: FlashMLA, DeepGEMM and DeepEP fed from py3fs.

Each plugin has a PyTorch `reference` (runs anywhere, defines the semantics) and a
`kernel` module that wraps the upstream CUDA library; the package `__init__` picks
the kernel when the library imports and CUDA is available, else the reference.
`PY3FS_PLUGIN_BACKEND=reference` forces the reference everywhere.
"""

from __future__ import annotations

import importlib.util
import os


def kernel_available(module: str) -> bool:
    """True when `module` is installed, CUDA is usable and no override forbids it."""
    if os.environ.get("PY3FS_PLUGIN_BACKEND", "") == "reference":
        return False
    if importlib.util.find_spec(module) is None:
        return False
    import torch

    return torch.cuda.is_available()
