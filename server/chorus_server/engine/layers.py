"""Small building blocks shared by the front end and the transformer."""

from __future__ import annotations

from torch import nn


def activation(name: str) -> nn.Module:
    """HF activation name -> module (only the ones wav2vec 2.0 checkpoints use)."""
    table: dict[str, nn.Module] = {
        "gelu": nn.GELU(),
        "gelu_new": nn.GELU(approximate="tanh"),
        "relu": nn.ReLU(),
        "silu": nn.SiLU(),
        "swish": nn.SiLU(),
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(table)}")
    return table[name]
