"""The front end's conv outputs reuse two scratch buffers at inference on the CPU: the same bits as new memory,
nothing left over from a longer item, no new buffer for an item that fits, and no scratch under autograd."""

from __future__ import annotations

import pytest
import torch

from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.frontend import NORM_ROWS, ConvLayer, FeatureEncoder

SMALL = {"conv_dim": (16, 16, 16), "conv_stride": (5, 2, 2), "conv_kernel": (10, 3, 2), "hidden_size": 32}


def encoder(norm: str) -> FeatureEncoder:
    config = BackboneConfig(**SMALL, num_attention_heads=4, feat_extract_norm=norm, conv_bias=norm == "layer")
    torch.manual_seed(0)
    return FeatureEncoder(config).requires_grad_(False)


def fresh(fe: FeatureEncoder, audio: torch.Tensor) -> torch.Tensor:
    """The front end with new memory for every layer: what it computed before the scratch existed."""
    scratch = fe.scratch
    fe.scratch = lambda *args: None  # type: ignore[method-assign, assignment, return-value]
    try:
        with torch.inference_mode():
            return fe(audio, torch.tensor([audio.shape[1]]))[0]
    finally:
        fe.scratch = scratch  # type: ignore[method-assign]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_scratch_gives_the_same_bits_and_no_leftovers(norm):
    fe = encoder(norm)
    gen = torch.Generator().manual_seed(1)
    long, short = torch.randn(1, 8000, generator=gen), torch.randn(1, 3000, generator=gen)
    expected = {n: fresh(fe, a) for n, a in (("long", long), ("short", short))}
    with torch.inference_mode():
        assert torch.equal(fe(long, torch.tensor([8000]))[0], expected["long"])
        buffers = [t.data_ptr() for t in fe._scratch]
        assert all(t.numel() for t in fe._scratch)
        got = fe(short, torch.tensor([3000]))[0]  # fits the buffers the long item left
        assert [t.data_ptr() for t in fe._scratch] == buffers
        assert torch.equal(got, expected["short"])
        # a batch: each item alone through the same buffers, each with its solo bits
        both = torch.zeros(2, 8000)
        both[0], both[1, :3000] = long[0], short[0]
        features, frames = fe(both, torch.tensor([8000, 3000]))
    assert torch.equal(features[0], expected["long"][0])
    assert torch.equal(features[1, : int(frames[1])], expected["short"][0, : int(frames[1])])
    assert not features[1, int(frames[1]) :].any()


def test_no_scratch_under_autograd():
    fe = encoder("group").requires_grad_(True)
    audio = torch.randn(1, 4000)
    features, _ = fe(audio, torch.tensor([4000]))
    features.sum().backward()
    assert all(t.numel() == 0 for t in fe._scratch)
    assert all(p.grad is not None for p in fe.parameters() if p.requires_grad)


def test_scratch_made_in_inference_mode_serves_no_grad_too():
    """The server runs in inference mode, training's evaluation under no_grad; one front end may see both."""
    fe = encoder("group")
    audio = torch.randn(1, 4000)
    with torch.inference_mode():
        first = fe(audio, torch.tensor([4000]))[0]
    with torch.no_grad():
        again = fe(audio, torch.tensor([4000]))[0]
    assert torch.equal(first, again)


@pytest.mark.parametrize("frames", [1, NORM_ROWS - 1, NORM_ROWS, 2 * NORM_ROWS + 5])
def test_layer_norm_front_end_normalises_within_its_scratch(frames):
    """A LayerNorm conv layer's result stays in the memory it was given (aten's norm would write the whole
    output to new memory: 65 MB per 10 s item at layer 0), bitwise equal to the norm over the whole tensor."""
    torch.manual_seed(2)
    layer = ConvLayer(8, 16, kernel=3, stride=2, bias=True, norm="layer", act="gelu").requires_grad_(False)
    x = torch.randn(2 * frames + 1, 8)  # (T_in, C_in) -> (frames, 16)
    with torch.inference_mode():
        expected = layer(x)
        into = torch.empty(frames, 16)
        got = layer(x, into)
    assert got.data_ptr() == into.data_ptr()
    assert torch.equal(got, expected)
