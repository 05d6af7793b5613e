"""`activate_`: the front end's activations run in place at inference, bit for bit as out of place, and never
in place under autograd (the backward pass of a trained CNN adapter needs the input)."""

from __future__ import annotations

import pytest
import torch

from chorus_server.engine.layers import ACTIVATIONS, activate_, activation


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_at_inference_and_bitwise_equal(name, dtype):
    act = activation(name)
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected = act(x)
    with torch.inference_mode():
        y = x.clone()
        out = activate_(act, y)
    assert out.data_ptr() == y.data_ptr()  # no new tensor
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_out_of_place_under_autograd(name):
    act = activation(name)
    x = torch.randn(50, 8, requires_grad=True)
    h = x * 2
    before = h.detach().clone()
    out = activate_(act, h)
    out.sum().backward()
    assert torch.equal(h.detach(), before) and x.grad is not None
