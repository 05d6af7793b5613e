"""Adapters: per-layer bottleneck modules + a CTC head + a vocabulary, applied to segments of a mixed batch.

Kinds and where their bottlenecks sit inside transformer layer `i` (each bottleneck computes
`x + up(relu(down(norm(x))))`, the norm only for MMS):

- ``mms``     — one bottleneck on the layer output (MMS / HF `adapter_layer`; pre-LN backbones).
- ``houlsby`` — the seed paper's adapters (Thomas et al. 2022): one on the attention output and one on the
  feed-forward output, each before its residual add; any backbone, optionally only in the top K layers.
- ``head``    — no bottlenecks, just a CTC head (a plain fine-tuned `Wav2Vec2ForCTC`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

KIND_SITES: dict[str, tuple[str, ...]] = {"mms": ("output",), "houlsby": ("attn", "ffn"), "head": ()}


@dataclass(frozen=True)
class Vocabulary:
    """CTC output symbols. `blank_id` is the CTC blank (HF's pad token); `word_delimiter_id` separates words."""

    tokens: tuple[str, ...]
    blank_id: int
    word_delimiter_id: int | None

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("vocabulary is empty")
        if len(set(self.tokens)) != len(self.tokens):
            dupes = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise ValueError(f"vocabulary has duplicate tokens: {dupes[:5]}")
        if not 0 <= self.blank_id < len(self.tokens):
            raise ValueError(f"blank id {self.blank_id} outside vocabulary of {len(self.tokens)} tokens")
        if self.word_delimiter_id is not None and not 0 <= self.word_delimiter_id < len(self.tokens):
            raise ValueError(f"word delimiter id {self.word_delimiter_id} outside vocabulary")

    @classmethod
    def from_hf(cls, token_to_id: dict[str, int], blank: str = "<pad>", delimiter: str = "|") -> Vocabulary:
        """Build from an HF `vocab.json` mapping (token -> id); ids must be 0..N-1."""
        ids = sorted(token_to_id.values())
        if ids != list(range(len(ids))):
            raise ValueError("vocab.json ids must be exactly 0..N-1")
        tokens = tuple(sorted(token_to_id, key=token_to_id.__getitem__))
        if blank not in token_to_id:
            raise ValueError(f"vocab.json has no blank token {blank!r}")
        return cls(tokens, token_to_id[blank], token_to_id.get(delimiter))

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class AdapterInfo:
    """Descriptive metadata carried in the adapter file."""

    name: str
    kind: str
    language: str = ""
    task: str = "transcribe"
    backbone_fingerprint: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Affine(nn.Module):
    """`weight`/`bias` parameters without initialisation: adapters are always loaded or initialised explicitly,
    and skipping nn.Linear's random init makes building an MMS-size adapter (240 bottlenecks) cheap."""

    def __init__(self, out_features: int, in_features: int | None):
        super().__init__()
        shape = (out_features, in_features) if in_features is not None else (out_features,)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_features))


class Bottleneck(nn.Module):
    """`x + up(relu(down(norm(x))))` over the last dimension; x: (..., H)."""

    def __init__(self, hidden: int, dim: int, with_norm: bool):
        super().__init__()
        self.norm = Affine(hidden, None) if with_norm else None
        self.down = Affine(dim, hidden)
        self.up = Affine(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.norm is not None:
            y = F.layer_norm(x, self.norm.weight.shape, self.norm.weight, self.norm.bias)
        return x + F.linear(torch.relu(F.linear(y, self.down.weight, self.down.bias)), self.up.weight, self.up.bias)


class Adapter(nn.Module):
    """One tenant's adapter: bottlenecks keyed `"{layer}.{site}"`, a CTC head and its vocabulary."""

    def __init__(
        self,
        info: AdapterInfo,
        vocab: Vocabulary,
        hidden_size: int,
        bottleneck_dim: int = 0,
        layers: Sequence[int] = (),
    ):
        super().__init__()
        if info.kind not in KIND_SITES:
            raise ValueError(f"unknown adapter kind {info.kind!r}; expected one of {sorted(KIND_SITES)}")
        if info.kind != "head" and (bottleneck_dim < 1 or not layers):
            raise ValueError(f"{info.kind} adapter needs bottleneck_dim >= 1 and at least one layer")
        self.info = info
        self.vocab = vocab
        self.hidden_size = hidden_size
        self.bottleneck_dim = bottleneck_dim if info.kind != "head" else 0
        self.layer_ids = tuple(sorted(layers)) if info.kind != "head" else ()
        sites = KIND_SITES[info.kind]
        self.layers = nn.ModuleDict(
            {
                str(i): nn.ModuleDict({s: Bottleneck(hidden_size, bottleneck_dim, info.kind == "mms") for s in sites})
                for i in self.layer_ids
            }
        )
        self.head = nn.Linear(hidden_size, len(vocab))
        # Plain lookup table over the registered submodules (`.to()` moves parameters in place, so it stays valid).
        self._blocks: dict[tuple[int, str], Bottleneck] = {}
        for i in self.layer_ids:
            for site in sites:
                block = self.layers[str(i)][site]  # type: ignore[index]
                assert isinstance(block, Bottleneck)
                self._blocks[(i, site)] = block

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> Adapter:
        """Training start point: bottlenecks are the identity (up-projection zero), the head is small random."""
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("bias") or ".up." in name:
                param.zero_()
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
        return self

    def block(self, layer: int, site: str) -> Bottleneck | None:
        return self._blocks.get((layer, site))

    @property
    def name(self) -> str:
        return self.info.name

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


@dataclass(frozen=True)
class Segment:
    """Items `[start, stop)` of a batch (sorted by adapter) that share one adapter."""

    start: int
    stop: int
    adapter: Adapter


def find_segments(adapters: Sequence[Adapter]) -> list[Segment]:
    """Runs of consecutive identical adapters -> segments covering the whole batch, in order."""
    segments: list[Segment] = []
    start = 0
    for i in range(1, len(adapters) + 1):
        if i == len(adapters) or adapters[i] is not adapters[start]:
            segments.append(Segment(start, i, adapters[start]))
            start = i
    return segments


def apply_site(h: torch.Tensor, segments: Sequence[Segment], layer: int, site: str) -> torch.Tensor:
    """Apply each segment's bottleneck for (layer, site) to its rows of h: (B, T, H) -> (B, T, H).

    Bottlenecks are per-frame maps, so padded frames never influence valid ones.
    """
    blocks = [seg.adapter.block(layer, site) for seg in segments]
    if all(b is None for b in blocks):
        return h
    if len(segments) == 1:
        block = blocks[0]
        assert block is not None
        return block(h)
    pieces = []
    for seg, block in zip(segments, blocks, strict=True):
        part = h[seg.start : seg.stop]
        pieces.append(block(part) if block is not None else part)
    return torch.cat(pieces, dim=0)
