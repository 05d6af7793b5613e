"""Transformer encoder of wav2vec 2.0 (HF `encoder`), post-LN (base) and pre-LN ("stable", large/MMS) layers.

Adapters enter through `apply_site(h, segments, layer, site)` at three sites per layer: the attention output
("attn"), the feed-forward output ("ffn"), both before their residual add, and the layer output ("output").

Bitwise batch invariance on CPU: every op whose result for one item could depend on the padded length or on the
number of items — attention (softmax and score reductions over the key axis) and the positional conv — runs per
item over that item's own frames (`spans`). The rest is per frame (linears, layer norms, activations, adapters), and
those kernels give a row the same bits whatever the number of rows. On CUDA one masked batched attention is kept
(per-item launches would cost more than batching gains there; see docs/engine.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chorus_server.engine.adapters import Segment, apply_site
from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.frontend import time_mask
from chorus_server.engine.layers import GradGate, activate_, activation, weight_key
from chorus_server.engine.spectral_conv import block_size, kernel_spectrum, spectral_conv

# Sees hidden state k (B, T, H); may return the segments the layers after it run with.
StatesHook = Callable[[int, torch.Tensor], Sequence[Segment] | None]


def _adapters_train(segments: Sequence[Segment], layer: int) -> bool:
    return any(seg.adapter.trains(layer) for seg in segments)


class PositionalConv(nn.Module):
    """Grouped conv over time added to the input (HF `pos_conv_embed`); weight norm is folded at load."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        k = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.trim = 1 if k % 2 == 0 else 0
        self.act = activation(config.feat_extract_activation)
        self.block = block_size(k)
        self._spectrum: tuple[tuple[object, ...], torch.Tensor] | None = None

    def spectrum(self) -> torch.Tensor:
        """The kernel's spectrum for `spectral_conv`, rebuilt only when the weight changes (load, `.to()`)."""
        key = weight_key(self.conv.weight)
        if self._spectrum is None or self._spectrum[0] != key:
            self._spectrum = (key, kernel_spectrum(self.conv.weight, self.conv.groups, self.block))
        return self._spectrum[1]

    def forward(self, h: torch.Tensor, spans: Sequence[int] | None = None) -> torch.Tensor:
        """h: (B, T, H) with padded frames zeroed -> (B, T, H). With `spans` (each item's valid frames) every item
        is convolved alone over its own frames, in the frequency domain (spectral_conv.py) unless the weight
        trains; padded frames of the result are then zero."""
        if spans is not None:
            out = torch.zeros_like(h)
            spectral = not self.conv.weight.requires_grad
            for i, n in enumerate(spans):
                if n and spectral:
                    y = spectral_conv(h[i, :n], self.spectrum(), self.conv.bias, self.conv.kernel_size[0], self.block)
                    out[i, :n] = activate_(self.act, y)  # y: a new tensor
                elif n:
                    out[i, :n] = self(h[i : i + 1, :n])[0]
            return out
        x = self.conv(h.transpose(1, 2))  # (B, H, T + trim)
        if self.trim:
            x = x[:, :, : -self.trim]
        return self.act(x).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(
        self, h: torch.Tensor, key_mask: torch.Tensor | None, spans: Sequence[int] | None = None
    ) -> torch.Tensor:
        """h: (B, T, H); key_mask: (B, 1, 1, T) bool (True = attend) or None; spans: each item's valid frames, to
        attend per item over exactly those (then `key_mask` is unused) -> (B, T, H)."""
        batch, frames, hidden = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, frames, self.heads, hidden // self.heads).transpose(1, 2)  # (B, nh, T, hd)

        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        if spans is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, nh, T, hd)
        else:
            out = torch.zeros_like(q)
            for i, n in enumerate(spans):
                if n:
                    one = slice(i, i + 1)
                    out[one, :, :n] = F.scaled_dot_product_attention(q[one, :, :n], k[one, :, :n], v[one, :, :n])
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, hidden))


class FeedForward(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(h)))


class EncoderLayer(nn.Module):
    """One transformer block; `pre_ln` selects the stable-layer-norm ordering."""

    def __init__(self, config: BackboneConfig, index: int):
        super().__init__()
        self.index = index
        self.pre_ln = config.do_stable_layer_norm
        self.attention = Attention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        h: torch.Tensor,
        key_mask: torch.Tensor | None,
        segments: Sequence[Segment],
        spans: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """h: (B, T, H) -> (B, T, H); `key_mask` and `spans` as for `Attention`."""
        i = self.index
        if self.pre_ln:
            h = h + apply_site(self.attention(self.layer_norm(h), key_mask, spans), segments, i, "attn")
            h = h + apply_site(self.feed_forward(self.final_layer_norm(h)), segments, i, "ffn")
        else:
            h = self.layer_norm(h + apply_site(self.attention(h, key_mask, spans), segments, i, "attn"))
            h = self.final_layer_norm(h + apply_site(self.feed_forward(h), segments, i, "ffn"))
        return apply_site(h, segments, i, "output")


class Encoder(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.pre_ln = config.do_stable_layer_norm
        self.pos_conv_embed = PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(
        self,
        h: torch.Tensor,
        frames: Sequence[int],
        segments: Sequence[Segment],
        gate: GradGate | None = None,
        states_hook: StatesHook | None = None,
    ) -> torch.Tensor:
        """h: (B, T, H); frames: each item's valid frames, host integers (so no device value is read) -> (B, T, H).
        `gate`: where gradients start (the backbone's, so the front end counts too). `states_hook(k, h (B, T, H))`
        sees each hidden state as HF's `hidden_states` lists them: k = 0 the first layer's input, k = i + 1 layer
        i's output, the last one after the final norm of a pre-LN encoder (classifiers mix them; classify.py). When
        it returns segments, the layers after state k run with those (a routed item's decision: routing.py)."""
        gate = gate or GradGate()
        width = h.shape[1]
        mask = time_mask(torch.tensor(frames), width).to(h.device, non_blocking=True)  # (B, T) bool
        # On the CPU every item attends and convolves over its own frames (see the module docstring).
        spans = list(frames) if h.device.type == "cpu" else None
        with gate.stage(self.pos_conv_embed, self.layer_norm):
            # Padded frames must be zero before the positional conv, exactly as in a solo run.
            h = h * mask[:, :, None].to(h.dtype)
            h = h + self.pos_conv_embed(h, spans)
            if not self.pre_ln:
                h = self.layer_norm(h)
        full = all(n == width for n in frames)
        key_mask = None if spans is not None or full else mask[:, None, None, :]  # (B, 1, 1, T)
        last = len(self.layers) - 1
        if states_hook is not None:
            segments = states_hook(0, h) or segments
        for i, layer in enumerate(self.layers):
            with gate.stage(layer, trains=functools.partial(_adapters_train, segments, i)):
                h = layer(h, key_mask, segments, spans)
            if states_hook is not None and (i < last or not self.pre_ln):
                segments = states_hook(i + 1, h) or segments
        if self.pre_ln:
            with gate.stage(self.layer_norm):
                h = self.layer_norm(h)
            if states_hook is not None:
                states_hook(last + 1, h)
        return h
