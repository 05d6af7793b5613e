"""CNN adapters in the convolutional front end (CHAPTER: Chen, Sung & Lee, 2022).

Transformer-only adapters leave the feature extractor as it was pre-trained; CHAPTER adds small adapters after
its conv layers, which helps tasks that hinge on the voice rather than the words (speaker, emotion). Chorus's
CNN adapter after conv layer `i` (C_i channels), on one item's channels-last activations x: (T, C_i):

    x + up(gelu(depthwise_conv3(down(x))))

`down`: C_i -> r, a depthwise conv of 3 taps over time (each of the r channels sees its neighbour frames; the
item's edges are zero-padded), `up`: r -> C_i, starting at zero so an untrained adapter is the identity. The front
end runs every item alone over its own samples (frontend.py), so each item gets its own adapter's CNN adapters in
a mixed batch, and an item's features never depend on its batch-mates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CNN_PARTS = ("down.weight", "down.bias", "conv.weight", "up.weight", "up.bias")


def cnn_part_shape(part: str, channels: int, dim: int) -> tuple[int, ...]:
    """Shape of one CNN adapter tensor for a conv layer of `channels` channels and bottleneck size `dim`."""
    return {
        "down.weight": (dim, channels),
        "down.bias": (dim,),
        "conv.weight": (dim, 3),
        "up.weight": (channels, dim),
        "up.bias": (channels,),
    }[part]


def cnn_name(layer: int, part: str) -> str:
    """File name of a CNN adapter tensor: `cnn.{layer}.{part}`."""
    return f"cnn.{layer}.{part}"


def apply_cnn_adapter(x: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """A conv-layer output x: (T, C) for one item, or (n, T, C) for items of one length -> the same shape;
    `tensors`: part -> tensor (CNN_PARTS)."""
    z = F.linear(x, tensors["down.weight"], tensors["down.bias"])  # (..., T, r)
    padded = F.pad(z, (0, 0, 1, 1))  # (..., T + 2, r): zero frames before the first and after the last
    taps = tensors["conv.weight"]  # (r, 3)
    before, here, after = padded[..., :-2, :], padded[..., 1:-1, :], padded[..., 2:, :]
    y = before * taps[:, 0] + here * taps[:, 1] + after * taps[:, 2]  # (..., T, r)
    return x + F.linear(F.gelu(y), tensors["up.weight"], tensors["up.bias"])
