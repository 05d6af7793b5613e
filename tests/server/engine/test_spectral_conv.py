"""The positional conv in the frequency domain matches torch's direct grouped conv, for every kernel parity, group
layout and length (across block boundaries), and gives an item the same bits whatever its batch-mates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.encoder import PositionalConv
from chorus_server.engine.spectral_conv import block_size, kernel_spectrum, spectral_conv


def direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int) -> torch.Tensor:
    """x (T, C) -> (T, C): nn.Conv1d with padding k // 2, trimmed to T (as the positional conv)."""
    kernel = weight.shape[-1]
    y = F.conv1d(x.T[None].double(), weight.double(), bias.double(), padding=kernel // 2, groups=groups)
    return y[0, :, : x.shape[0]].T


@pytest.mark.parametrize(("channels", "groups", "kernel"), [(64, 16, 128), (48, 4, 9), (32, 2, 16), (24, 3, 127)])
@pytest.mark.parametrize("frames", [1, 7, 128, 129, 130, 259, 499])
def test_spectral_conv_matches_the_direct_conv(channels, groups, kernel, frames):
    gen = torch.Generator().manual_seed(frames * 7 + kernel)
    x = torch.randn(frames, channels, generator=gen)
    weight = torch.randn(channels, channels // groups, kernel, generator=gen) / kernel**0.5
    bias = torch.randn(channels, generator=gen)
    n = block_size(kernel)
    assert n >= 2 * kernel
    got = spectral_conv(x, kernel_spectrum(weight, groups, n), bias, kernel, n)
    assert got.shape == (frames, channels) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), direct(x, weight, bias, groups), rtol=0, atol=1e-5)


def test_bfloat16_items_are_convolved_in_float32():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 32, generator=gen).bfloat16()
    weight, bias = torch.randn(32, 8, 20, generator=gen) / 20**0.5, torch.randn(32, generator=gen)
    n = block_size(20)
    got = spectral_conv(x, kernel_spectrum(weight, 4, n), bias, 20, n)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), direct(x.float(), weight, bias, 4), rtol=1e-2, atol=1e-2)


def test_an_item_gets_the_same_bits_alone_and_padded_in_a_batch():
    config = BackboneConfig(
        hidden_size=32, num_attention_heads=4, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4
    )
    conv = PositionalConv(config).requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    lengths = [37, 300, 129]
    h = torch.randn(3, 300, 32, generator=gen)
    for i, n in enumerate(lengths):
        h[i, n:] = 0
    with torch.no_grad():
        batch = conv(h, lengths)
        for i, n in enumerate(lengths):
            alone = conv(h[i : i + 1, :n], [n])
            assert torch.equal(batch[i, :n], alone[0])
            assert not batch[i, n:].any()
        # the spectral path agrees with the module's direct (batched, masked) path
        torch.testing.assert_close(batch[1], conv(h[1:2])[0], rtol=0, atol=1e-5)


def test_a_trainable_weight_takes_the_direct_conv_with_gradients():
    config = BackboneConfig(
        hidden_size=16, num_attention_heads=4, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2
    )
    conv = PositionalConv(config)
    h = torch.randn(2, 40, 16)
    conv(h, [40, 40]).sum().backward()
    assert conv.conv.weight.grad is not None and conv._spectrum is None
