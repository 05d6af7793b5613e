"""Convolutional feature encoder and feature projection (HF: `feature_extractor`, `feature_projection`).

The parameters keep HF's layout (`conv_layers.{i}.conv.weight`, ...), but the computation is channels-last and
per item: each item runs over its own valid samples only, as `(T, C)` matrices (on a GPU, items of one length
run together as `(n, T, C)`, each still in GEMMs of its own shape: `FeatureEncoder.batch_equal_lengths`), so

- every strided conv is a sum of plain GEMMs over strided *views* of its input (no unfold copy, no transposes):
  taps `j .. j+s-1` of a stride-`s` conv read rows `s·t + j ..` which are one contiguous `(n, s·C)` view;
- padding never enters the front end, so an item's features cannot depend on its batch-mates, and work scales
  with real audio, not with the longest item;
- one item's activations (≈ 33 MB for 10 s in bf16 at layer 0) stay as small as they can; a batched
  `(B, 512, 32000)` tensor thrashes the caches and made batching lose throughput on CPU.

The GroupNorm of base models (layer 0, one group per channel, statistics over time) is folded into that layer's
weights: a channel's output is `w_c · x_t`, so its mean over time is `w_c · μ` and its variance `w_c Σ w_cᵀ`,
with `μ`, `Σ` the mean and covariance of the item's (k,)-sample windows, computed in float64. Layer 0 then is a
single GEMM with a per-item bias, and GroupNorm never touches the largest activation of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from chorus_server.engine.cnn_adapters import apply_cnn_adapter
from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.layers import activate_, activation, weight_key

NORM_ROWS = 1024  # rows per block of the front end's in-place LayerNorm: 2 MB of float32 at 512 channels
# Items run through the front end together at most: 16 x 20 s windows hold ~1.6 GB of bf16 activations at layers
# 0-1 (a batch of 64 at once would hold 6 GB), and launches per item are already 1/16th.
MAX_TOGETHER = 16


def conv_output_lengths(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Frames produced by one conv layer: `floor((L - k) / s) + 1`, or 0 when `L < k`."""
    return torch.where(lengths >= kernel, torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, 0)


def time_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def tap_blocks(weight: torch.Tensor, stride: int) -> list[tuple[int, int, torch.Tensor]]:
    """Conv weight (C_out, C_in, k) -> [(first tap, taps, (taps·C_in, C_out) GEMM weight)], taps grouped by stride.

    Taps `j .. j+s-1` of output frame t read input frames `s·t + j ..`, i.e. one row of the `(n, s·C_in)` view.
    """
    _out, _in, kernel = weight.shape
    blocks = []
    for first in range(0, kernel, stride):
        taps = min(stride, kernel - first)
        block = weight[:, :, first : first + taps].permute(2, 1, 0).reshape(taps * _in, _out)
        blocks.append((first, taps, block.contiguous()))
    return blocks


def strided_conv(
    x: torch.Tensor,
    blocks: list[tuple[int, int, torch.Tensor]],
    stride: int,
    frames: int,
    into: torch.Tensor | None = None,
) -> torch.Tensor:
    """Channels-last strided conv as GEMMs over views: x (T, C_in) -> (frames, C_out), no bias; written into
    `into` ((frames, C_out), not autograd) when given."""
    channels = x.shape[1]
    out: torch.Tensor | None = None
    for first, taps, w in blocks:
        if taps == stride and first + stride * frames <= x.shape[0]:
            rows = x[first : first + stride * frames].view(frames, stride * channels)  # (n, s·C), no copy
            parts = [(rows, w)]
        else:  # a partial block: one tap at a time, each a (n, C) view with row stride s·C
            parts = [
                (x[first + j : first + j + stride * (frames - 1) + 1 : stride], w[j * channels : (j + 1) * channels])
                for j in range(taps)
            ]
        for a, b in parts:
            out = torch.mm(a, b, out=into) if out is None else out.addmm_(a, b)
    assert out is not None
    return out


def strided_conv_batch(
    x: torch.Tensor, blocks: list[tuple[int, int, torch.Tensor]], stride: int, frames: int
) -> torch.Tensor:
    """`strided_conv` for items of one length: x (n, T, C_in) contiguous -> (n, frames, C_out). Each item is its
    own GEMM of the per-item shape (a batched GEMM, never one (n·frames)-row product), as `strided_conv` runs it."""
    n, _, channels = x.shape
    out: torch.Tensor | None = None
    for first, taps, w in blocks:
        if taps == stride and first + stride * frames <= x.shape[1]:
            rows = x[:, first : first + stride * frames].view(n, frames, stride * channels)  # (n, f, s·C), no copy
            parts = [(rows, w)]
        else:
            parts = [
                (x[:, first + j : first + j + stride * (frames - 1) + 1 : stride], w[j * channels : (j + 1) * channels])
                for j in range(taps)
            ]
        for a, b in parts:
            weights = b.expand(n, *b.shape)  # (n, K, C_out), no copy
            out = torch.bmm(a, weights) if out is None else out.baddbmm_(a, weights)
    assert out is not None
    return out


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
        self._blocks: tuple[tuple[object, ...], list[tuple[int, int, torch.Tensor]]] | None = None

    def gemm_blocks(self) -> list[tuple[int, int, torch.Tensor]]:
        """The conv weight regrouped for `strided_conv`, rebuilt only when the weight changes (load, `.to()`).

        While the weight trains, the blocks are rebuilt from it on every call so that gradients reach it."""
        w = self.conv.weight
        if w.requires_grad and torch.is_grad_enabled():
            return tap_blocks(w, self.stride)
        key = weight_key(w)
        if self._blocks is None or self._blocks[0] != key:
            self._blocks = (key, tap_blocks(w.detach(), self.stride))
        return self._blocks[1]

    def output_frames(self, frames: int) -> int:
        """Output frames for `frames` >= kernel input frames."""
        return (frames - self.kernel) // self.stride + 1

    def forward(self, x: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """One item, channels-last: x (T_in, C_in) -> (T_out, C_out); T_in >= kernel. `into`: memory of that
        shape for the conv's result (without autograd), which nothing else reads until the result has been used."""
        frames = self.output_frames(x.shape[0])
        if isinstance(self.layer_norm, nn.GroupNorm):
            return activate_(self.act, self._group_normed_conv(x, frames, into))  # `into` or new: ours to overwrite
        y = strided_conv(x, self.gemm_blocks(), self.stride, frames, into)  # (T_out, C_out)
        if self.conv.bias is not None:
            y += self.conv.bias
        if self.layer_norm is None:
            return activate_(self.act, y)  # y: the GEMMs' result, nobody else's
        if into is None:  # y is new memory of our own: normalise it into more
            return activate_(self.act, self.layer_norm(y))
        return self._normalize_in_place(y)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Items of one length together, channels-last: x (n, T_in, C_in) -> (n, T_out, C_out); T_in >= kernel.
        Every step is per item in its own GEMM or per row, so each item's output is the one `forward` gives it."""
        frames = self.output_frames(x.shape[1])
        if isinstance(self.layer_norm, nn.GroupNorm):
            return activate_(self.act, self._group_normed_conv_batch(x, frames))
        y = strided_conv_batch(x.contiguous(), self.gemm_blocks(), self.stride, frames)  # (n, T_out, C_out)
        if self.conv.bias is not None:
            y += self.conv.bias
        if self.layer_norm is None:
            return activate_(self.act, y)
        return activate_(self.act, self.layer_norm(y))

    def _group_normed_conv_batch(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """`_group_normed_conv` for items of one length: x (n, T, C_in) -> (n, frames, C). The statistics are
        each item's own (they are tiny: (k·C_in,) and (k·C_in, k·C_in)), the folded GEMM one batched GEMM."""
        assert isinstance(self.layer_norm, nn.GroupNorm)
        folded = [self._folded(x[b], frames) for b in range(x.shape[0])]
        windows = x.unfold(1, self.kernel, self.stride).transpose(2, 3).reshape(x.shape[0], frames, -1)  # (n, T, kC)
        bias = torch.stack([b for b, _ in folded])[:, None, :]  # (n, 1, C)
        return torch.baddbmm(bias, windows, torch.stack([w for _, w in folded]))  # (n, T, C)

    def _folded(self, x: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One item's GroupNorm folded into the conv: (bias (C,), weight (k·C_in, C)) in x's dtype. x: (T, C_in)."""
        assert isinstance(self.layer_norm, nn.GroupNorm)
        w = self.conv.weight.double().permute(0, 2, 1).reshape(self.conv.out_channels, -1)  # (C, k·C_in)
        wins = x.unfold(0, self.kernel, self.stride).transpose(1, 2).reshape(frames, -1).double()  # (T, k·C_in)
        mu = wins.mean(dim=0)  # (k·C_in,)
        centered = wins - mu
        cov = centered.T @ centered / frames  # (k·C_in, k·C_in)
        var = ((w @ cov) * w).sum(dim=1)  # (C,) = diag(w Σ wᵀ); a conv bias cancels in the normalisation
        scale = torch.rsqrt(var + self.layer_norm.eps) * self.layer_norm.weight.double()
        bias = self.layer_norm.bias.double() - (w @ mu) * scale
        return bias.to(x.dtype), (w * scale[:, None]).T.to(x.dtype)  # (C,), (k·C_in, C)

    def _normalize_in_place(self, y: torch.Tensor) -> torch.Tensor:
        """LayerNorm and activation of y (T, C) written back into y, `NORM_ROWS` rows at a time.

        aten's LayerNorm has no true out= variant (it allocates and copies), so the norm of a whole (32000, 512)
        layer-0 output would be 65 MB of new memory per 10 s item: 16,000 page faults per forward. A block of rows
        stays in the cache from norm to copy-back, and rows are normalised independently, so the result is
        bitwise the one of the whole tensor."""
        assert isinstance(self.layer_norm, nn.LayerNorm)
        norm = self.layer_norm
        for start in range(0, y.shape[0], NORM_ROWS):
            rows = y[start : start + NORM_ROWS]  # (≤ NORM_ROWS, C) view
            normed = F.layer_norm(rows, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            rows.copy_(activate_(self.act, normed))
        return y

    def _group_normed_conv(self, x: torch.Tensor, frames: int, into: torch.Tensor | None = None) -> torch.Tensor:
        """Conv + per-channel GroupNorm over time, folded into one GEMM (see module docstring). x: (T, C_in)."""
        bias, w_folded = self._folded(x, frames)
        windows = x.unfold(0, self.kernel, self.stride).transpose(1, 2).reshape(frames, -1)  # (T, k·C_in)
        return torch.addmm(bias, windows, w_folded, out=into)  # (T, C); new when `into` is None


class FeatureEncoder(nn.Module):
    """Raw waveform -> conv features at 50 Hz (for the standard 320-sample stride), channels-last."""

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
        self.out_channels = config.conv_dim[-1]
        self._scratch: list[torch.Tensor] = [torch.empty(0), torch.empty(0)]
        # Items of one length (and CNN adapter) run together: None: on a GPU only, where ~80 kernel launches per
        # item dominate a batch of short convolutions; on a CPU one item's activations stay cache-sized instead.
        self.batch_equal_lengths: bool | None = None

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) output frames."""
        for layer in self.conv_layers:
            assert isinstance(layer, ConvLayer)
            lengths = conv_output_lengths(lengths, layer.kernel, layer.stride)
        return lengths

    def frame_count(self, samples: int) -> int:
        """Output frames of one item of `samples` samples, on the host."""
        for layer in self.conv_layers:
            assert isinstance(layer, ConvLayer)
            samples = layer.output_frames(samples) if samples >= layer.kernel else 0
        return samples

    def forward(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor,
        cnn_adapters: Sequence[Callable[[int], dict[str, torch.Tensor] | None] | None] = (),
    ) -> tuple[torch.Tensor, list[int]]:
        """waveforms: (B, L), lengths: (B,) on the host -> features (B, T, C) with zeros past each item's frames,
        and each item's frame count as host integers (conv arithmetic on the lengths: no device value is read, so
        nobody downstream has to sync to learn a length). T is the frame count of L (the padded width), so a batch
        padded to a shape bucket keeps that bucket's shape. `cnn_adapters`: per item, None or `Adapter.cnn` (conv
        layer -> its CNN adapter's tensors or None), applied after that layer (cnn_adapters.py).

        Each item runs over its valid samples only (see the module docstring for why); items of one length run
        together on a GPU (`batch_equal_lengths`), each still in GEMMs of its own shape."""
        sizes = lengths.tolist()
        counts = [self.frame_count(size) for size in sizes]
        width = max([*counts, self.frame_count(waveforms.shape[1])])
        out = waveforms.new_zeros(waveforms.shape[0], width, self.out_channels)
        cnn = [cnn_adapters[b] if b < len(cnn_adapters) else None for b in range(len(sizes))]
        batched = self.batch_equal_lengths
        if batched is None:
            batched = waveforms.device.type == "cuda"
        together: set[int] = set()
        for group in equal_length_groups(sizes, counts, cnn) if batched else []:
            if len(group) > 1:
                first = group[0]
                out[group, : counts[first]] = self._run_together(waveforms[group, : sizes[first]], cnn[first])
                together.update(group)
        for b, (size, count) in enumerate(zip(sizes, counts, strict=True)):
            if count == 0 or b in together:
                continue
            x = waveforms[b, :size, None]  # (L, 1)
            for i, layer in enumerate(self.conv_layers):
                assert isinstance(layer, ConvLayer)
                into = None
                if x.device.type == "cpu" and not torch.is_grad_enabled():  # write scratch i % 2, read (i - 1) % 2
                    into = self.scratch(i % 2, layer.output_frames(x.shape[0]), layer.conv.out_channels, x)
                x = layer(x, into)  # (T_i, C_i)
                tensors = cnn[b](i) if cnn[b] is not None else None  # type: ignore[misc]
                if tensors is not None:
                    x = apply_cnn_adapter(x, tensors)
            out[b, :count] = x  # (T, C)
        return out, counts

    def _run_together(
        self, waveforms: torch.Tensor, cnn: Callable[[int], dict[str, torch.Tensor] | None] | None
    ) -> torch.Tensor:
        """Items of one length and CNN adapter: waveforms (n, L) of valid samples only -> features (n, T, C)."""
        x = waveforms[:, :, None]  # (n, L, 1)
        for i, layer in enumerate(self.conv_layers):
            assert isinstance(layer, ConvLayer)
            x = layer.forward_batch(x)  # (n, T_i, C_i)
            tensors = cnn(i) if cnn is not None else None
            if tensors is not None:
                x = apply_cnn_adapter(x, tensors)
        return x

    def scratch(self, slot: int, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """A (rows, cols) tensor in reused memory, for a conv layer's output at inference.

        Layer 0's output is the model's largest tensor ((32000, 512) float32 per 10 s: 65 MB) and layer 1's the
        next; allocations that large are fresh pages from the kernel every time (glibc maps anything over 32 MB
        anew), 16,000 page faults per 10 s forward. Two slots that only grow keep the largest item's two largest
        activations instead (98 MB for a 10 s item in float32, twice that for 20 s windows): the peak memory of a
        forward does not change, only what stays mapped between forwards."""
        need = rows * cols
        memory = self._scratch[slot]
        if memory.numel() < need or memory.dtype != like.dtype or memory.device != like.device:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                memory = self._scratch[slot] = torch.empty(need, dtype=like.dtype, device=like.device)
        return memory[:need].view(rows, cols)


def equal_length_groups(
    sizes: Sequence[int], counts: Sequence[int], cnn: Sequence[object | None], most: int = MAX_TOGETHER
) -> list[list[int]]:
    """Items (indices) that can run through the front end together: the same valid length and the same CNN
    adapter (`None`, or one adapter's `cnn`, the same object across its segment), each with at least one frame;
    at most `most` per group. In first-appearance order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for b, (size, count) in enumerate(zip(sizes, counts, strict=True)):
        if count > 0:
            groups.setdefault((size, id(cnn[b])), []).append(b)
    return [group[i : i + most] for group in groups.values() for i in range(0, len(group), most)]


class FeatureProjection(nn.Module):
    """LayerNorm over conv channels, then a linear map to the transformer width."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, T, C) -> (B, T, H)."""
        return self.projection(self.layer_norm(features))
