"""Helpers shared by tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save


def rebuild_safetensors(
    src: Path,
    edit_tensors: Callable[[dict[str, torch.Tensor]], object] | None = None,
    edit_meta: Callable[[dict[str, str]], object] | None = None,
) -> bytes:
    """The bytes of `src` after editing its tensors and/or metadata in place (for hostile-file tests)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    return save(tensors, metadata=meta)
