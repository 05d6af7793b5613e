"""Convolutional feature encoder and feature projection (HF: `feature_extractor`, `feature_projection`).

Every stage carries `lengths` so padding stays explicit. A valid output frame of a conv layer only sees valid
input samples (frame count `floor((L - k) / s) + 1`), so the one place padding could leak into real frames is
the GroupNorm of base models, which normalises each channel over time: it is computed over valid frames only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from server.engine.config import BackboneConfig
from server.engine.layers import activation


def conv_output_lengths(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Frames produced by one conv layer: `floor((L - k) / s) + 1`, or 0 when `L < k`."""
    return torch.where(lengths >= kernel, torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, 0)


def time_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per channel, statistics over each item's valid frames only.

    x: (B, C, T); lengths: (B,). Padded frames come out as zeros. Statistics are computed in float32.
    """
    _batch, _, frames = x.shape
    if bool((lengths == frames).all()):
        return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)
    mask = time_mask(lengths, frames)[:, None, :].to(torch.float32)  # (B, 1, T)
    count = lengths.clamp(min=1).to(torch.float32)[:, None, None]  # (B, 1, 1)
    xf = x.float() * mask
    mean = xf.sum(dim=-1, keepdim=True) / count  # (B, C, 1)
    centered = (xf - mean) * mask
    var = centered.square().sum(dim=-1, keepdim=True) / count
    y = centered * torch.rsqrt(var + norm.eps)
    y = y * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
    return (y * mask).to(x.dtype)


class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> activation. `layer_norm` is HF's name for either norm kind."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None, act: str):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        self.layer_norm: nn.Module | None
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        else:
            self.layer_norm = None
        self.act = activation(act)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C_in, L) -> (B, C_out, T); lengths: (B,) -> (B,)."""
        x = self.conv(x)
        lengths = conv_output_lengths(lengths, self.kernel, self.stride)
        if isinstance(self.layer_norm, nn.GroupNorm):
            x = masked_group_norm(x, lengths, self.layer_norm)
        elif self.layer_norm is not None:
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.act(x), lengths


class FeatureEncoder(nn.Module):
    """Raw waveform -> conv features at 50 Hz (for the standard 320-sample stride)."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        layers = []
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(
            zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True)
        ):
            if config.feat_extract_norm == "layer":
                norm: str | None = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(
                ConvLayer(in_dim, dim, kernel, stride, config.conv_bias, norm, config.feat_extract_activation)
            )
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: (B, L) -> features (B, C, T), frame lengths (B,)."""
        x = waveforms[:, None, :]  # (B, 1, L)
        for layer in self.conv_layers:
            x, lengths = layer(x, lengths)
        return x, lengths


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels, then a linear map to the transformer width."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, C, T) -> (B, T, H)."""
        return self.projection(self.layer_norm(features.transpose(1, 2)))
