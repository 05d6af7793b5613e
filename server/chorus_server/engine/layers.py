"""Small building blocks shared by the front end and the transformer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

# HF activation name -> module factory (only the ones wav2vec 2.0 checkpoints use); the config validates against it.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def activate_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`act(x)`, overwriting `x` when autograd is off (bitwise the same values). For the front end, whose
    activations are the model's largest tensors ((32000, 512) per 10 s item at layer 0): writing a new one costs
    more in page faults than the activation itself (GELU over (32000, 512) float32: 37 ms into new memory, 10 ms
    in place). `x` must be a tensor nothing else reads."""
    if torch.is_grad_enabled():
        return act(x)
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if isinstance(act, nn.ReLU):
        return x.relu_()
    if isinstance(act, nn.SiLU):
        return F.silu(x, inplace=True)
    return act(x)


def weight_key(weight: torch.Tensor) -> tuple[object, ...]:
    """What a tensor derived from `weight` depends on: its memory, dtype, device and in-place version. A cache
    keyed on it is rebuilt after a load, a `.to()` or an in-place update, and only then."""
    return (weight.data_ptr(), weight.dtype, weight.device, weight._version)


class GradGate:
    """Where gradients start in one forward pass: autograd is off until the first stage with a trainable parameter.

    Training an adapter on a frozen backbone then keeps no activations for the frozen front end and the layers
    below the adapter's lowest one. A pass that starts without autograd (inference) is left exactly as it is.
    """

    def __init__(self) -> None:
        self.enabled = torch.is_grad_enabled()
        self.on = False

    def stage(self, *modules: nn.Module, trains: Callable[[], bool] = lambda: False) -> AbstractContextManager[object]:
        """Context for a stage made of `modules`; `trains()` reports trainable parameters held elsewhere (adapters)."""
        if not self.enabled:
            return contextlib.nullcontext()
        self.on = self.on or trains() or any(p.requires_grad for m in modules for p in m.parameters())
        return torch.set_grad_enabled(self.on)
