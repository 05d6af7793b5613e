"""Adapters: per-layer bottleneck modules + a CTC head + a vocabulary, applied to segments of a mixed batch.

Kinds and where their bottlenecks sit inside transformer layer `i` (each bottleneck computes
`x + up(relu(down(norm(x))))`, the norm only for MMS):

- ``mms``     — one bottleneck on the layer output (MMS / HF `adapter_layer`; pre-LN backbones).
- ``houlsby`` — the seed paper's adapters (Thomas et al. 2022): one on the attention output and one on the
  feed-forward output, each before its residual add; any backbone, optionally only in the top K layers.
- ``head``    — no bottlenecks, just a CTC head (a plain fine-tuned `Wav2Vec2ForCTC`).
- ``classifier`` — an utterance classifier (SUPERB convention): a learned softmax-weighted sum of the backbone's
  hidden states (`layer_weights`: one per state, the encoder input and every layer's output), mean-pooled over
  the item's valid frames, then a linear head over its labels; bottlenecks placed as houlsby's, optional. Its
  `vocab` holds the labels (`labels`); see classify.py for how it reads a batch.

Any kind may also carry CNN adapters after conv layers of the front end (`cnn_channels`: conv layer -> its
channels; cnn_adapters.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from chorus_server.engine.cnn_adapters import CNN_PARTS, cnn_name, cnn_part_shape

if TYPE_CHECKING:
    from chorus_server.decoding.options import LanguageModelFiles
    from chorus_server.engine.routing import Routing

CLASSIFIER = "classifier"
POOLINGS = ("mean", "attentive")  # a classifier's pooling over an item's frames
KIND_SITES: dict[str, tuple[str, ...]] = {
    "mms": ("output",),
    "houlsby": ("attn", "ffn"),
    "head": (),
    CLASSIFIER: ("attn", "ffn"),
}
OPTIONAL_BOTTLENECKS = ("head", CLASSIFIER)  # kinds that may have no bottleneck at all


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

    @classmethod
    def of_labels(cls, labels: Sequence[str]) -> Vocabulary:
        """A classifier's labels as its output symbols (no blank or delimiter is ever decoded from them)."""
        if any(not isinstance(label, str) or not label.strip() for label in labels):
            raise ValueError("classifier labels must be non-empty strings")
        return cls(tuple(labels), blank_id=0, word_delimiter_id=None)

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


PARTS = ("norm.weight", "norm.bias", "down.weight", "down.bias", "up.weight", "up.bias")


def part_shape(part: str, hidden: int, dim: int) -> tuple[int, ...]:
    """Shape of one bottleneck tensor (`down.weight`, ...) for hidden size H and bottleneck size r."""
    return {
        "norm.weight": (hidden,),
        "norm.bias": (hidden,),
        "down.weight": (dim, hidden),
        "down.bias": (dim,),
        "up.weight": (hidden, dim),
        "up.bias": (hidden,),
    }[part]


@dataclass(frozen=True)
class Bottleneck:
    """`x + up(relu(down(norm(x))))` over the last dimension; x: (..., H). Holds views into the adapter's stacks."""

    down_weight: torch.Tensor  # (r, H)
    down_bias: torch.Tensor  # (r,)
    up_weight: torch.Tensor  # (H, r)
    up_bias: torch.Tensor  # (H,)
    norm_weight: torch.Tensor | None = None  # (H,), MMS only
    norm_bias: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        y = x
        if self.norm_weight is not None:
            y = F.layer_norm(x, self.norm_weight.shape, self.norm_weight, self.norm_bias)
        delta = F.linear(torch.relu(F.linear(y, self.down_weight, self.down_bias)), self.up_weight, self.up_bias)
        return torch.add(x, delta, out=out) if out is not None else x + delta


class Adapter(nn.Module):
    """One tenant's adapter: per-site bottleneck tensors stacked over its layers, a CTC head, its vocabulary.

    Each (site, part) is one parameter `{site}_{part}` of shape (layers, *part shape), e.g. `attn_down_weight:
    (L, r, H)`: an MMS-size adapter (48 layers) is 13 tensors, not a tree of 240 modules, so building one costs
    microseconds. `tensors()` gives the per-layer view under the file's names (`layers.{i}.{site}.{part}`).
    """

    def __init__(
        self,
        info: AdapterInfo,
        vocab: Vocabulary,
        hidden_size: int,
        bottleneck_dim: int = 0,
        layers: Sequence[int] = (),
        num_states: int = 0,
        cnn_channels: Mapping[int, int] | None = None,
        cnn_dim: int = 0,
        normalize_states: bool = False,
        pooling: str = "mean",
        device: torch.device | str | None = None,
    ):
        """`num_states` (classifier only): hidden states it mixes, the backbone's layers + 1; `normalize_states`:
        each state is layer-normed (no parameters) before it is mixed, as SUPERB's featurizer can (the residual
        stream's scale grows with depth); `pooling`: `mean` or `attentive` over the item's frames (classify.py).
        `cnn_channels`: conv layer -> its output channels, for CNN adapters of bottleneck size `cnn_dim` after
        those layers. `device="meta"` builds placeholders that `adopt` replaces (no memory, no init cost)."""
        super().__init__()
        if info.kind not in KIND_SITES:
            raise ValueError(f"unknown adapter kind {info.kind!r}; expected one of {sorted(KIND_SITES)}")
        bottlenecks = info.kind != "head" and (info.kind != CLASSIFIER or bool(layers) or bottleneck_dim != 0)
        if bottlenecks and (bottleneck_dim < 1 or not layers):
            raise ValueError(f"{info.kind} adapter needs bottleneck_dim >= 1 and at least one layer")
        if info.kind == CLASSIFIER and num_states < 2:
            raise ValueError(f"classifier adapter needs num_states >= 2 (backbone layers + 1), got {num_states}")
        self.info = info
        self.vocab = vocab
        self.hidden_size = hidden_size
        self.bottleneck_dim = bottleneck_dim if bottlenecks else 0
        self.layer_ids = tuple(sorted(layers)) if bottlenecks else ()
        self.num_states = num_states if info.kind == CLASSIFIER else 0
        self.normalize_states = normalize_states and info.kind == CLASSIFIER
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling if info.kind == CLASSIFIER else "mean"
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError(f"adapter layers must be distinct, got {list(layers)}")
        self.sites = KIND_SITES[info.kind] if self.layer_ids else ()
        self.parts = PARTS if info.kind == "mms" else PARTS[2:]
        for site, part in self.stack_keys():
            shape = (len(self.layer_ids), *part_shape(part, hidden_size, self.bottleneck_dim))
            self.register_parameter(
                stack_name(site, part), nn.Parameter(torch.empty(shape, device=device), requires_grad=False)
            )
        self.head = nn.Linear(hidden_size, len(vocab), device=device)
        # (num_states,) logits of the layer mix; (0,) for the CTC kinds, so every adapter has the attribute.
        self.layer_weights = nn.Parameter(torch.empty(self.num_states, device=device), requires_grad=False)
        self.cnn_channels = dict(sorted((cnn_channels or {}).items()))
        self.cnn_dim = cnn_dim if self.cnn_channels else 0
        if self.cnn_channels and (cnn_dim < 1 or min(self.cnn_channels) < 0 or min(self.cnn_channels.values()) < 1):
            raise ValueError(f"CNN adapters need cnn_dim >= 1, conv layers >= 0 and channels >= 1, got {cnn_channels}")
        for attr, shape in self._extras().values():
            self.register_parameter(attr, nn.Parameter(torch.empty(shape, device=device), requires_grad=False))
        self._blocks: dict[tuple[int, str], Bottleneck] | None = None  # built on first use, see `block`
        # The stored version's decoding files on local disk (set by the cache's loader; None: greedy only).
        self.language_model: LanguageModelFiles | None = None

    def stack_keys(self) -> list[tuple[str, str]]:
        return [(site, part) for site in self.sites for part in self.parts]

    def cnn_keys(self) -> list[tuple[int, str]]:
        return [(layer, part) for layer in self.cnn_channels for part in CNN_PARTS]

    def _extras(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Tensors beside the stacks, head and layer mix: file name -> (attribute, shape). The CNN adapters'
        and, for attentive pooling, `pool.weight` (H,): a frame's attention score is its mixed state times it."""
        extras = {
            cnn_name(layer, part): (
                _cnn_param(layer, part),
                cnn_part_shape(part, self.cnn_channels[layer], self.cnn_dim),
            )
            for layer, part in self.cnn_keys()
        }
        if self.pooling == "attentive":
            extras["pool.weight"] = ("pool_weight", (self.hidden_size,))
        return extras

    @property
    def pool(self) -> torch.Tensor | None:
        """(H,) weight of attentive pooling's frame scores; None for mean pooling."""
        return self._parameters.get("pool_weight")

    def cnn(self, layer: int) -> dict[str, torch.Tensor] | None:
        """The CNN adapter after conv layer `layer` (part -> tensor), or None."""
        if layer not in self.cnn_channels:
            return None
        return {part: getattr(self, _cnn_param(layer, part)) for part in CNN_PARTS}

    def cnn_trains(self) -> bool:
        """Whether a CNN adapter parameter is trainable (a training pass then starts gradients in the front end)."""
        return any(getattr(self, _cnn_param(*key)).requires_grad for key in self.cnn_keys())

    def stack(self, site: str, part: str) -> torch.Tensor:
        """(layers, *part shape) tensor of one site and part."""
        return getattr(self, stack_name(site, part))

    def _rebuild_blocks(self) -> None:
        """The (layer, site) -> Bottleneck lookup; views go stale whenever the parameters are replaced."""
        blocks = {}
        for site in self.sites:
            rows = {part.replace(".", "_"): self.stack(site, part).unbind(0) for part in self.parts}
            for row, layer in enumerate(self.layer_ids):
                blocks[(layer, site)] = Bottleneck(**{part: views[row] for part, views in rows.items()})
        self._blocks = blocks

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Adapter:
        """`.to()`, `.float()`, ... replace the parameters; rebuild the views."""
        result = super()._apply(fn, recurse)
        self._rebuild_blocks()
        return result

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor under its file name: `layers.{i}.{site}.{part}` (views into the stacks) and `head.*`."""
        out = {
            f"layers.{layer}.{site}.{part}": self.stack(site, part)[row]
            for site, part in self.stack_keys()
            for row, layer in enumerate(self.layer_ids)
        }
        out["head.weight"], out["head.bias"] = self.head.weight, self.head.bias
        if self.is_classifier:
            out["layer_weights"] = self.layer_weights
        out.update({name: getattr(self, attr) for name, (attr, _) in self._extras().items()})
        return out

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """File tensor name -> shape, for validation without building anything."""
        shapes = {
            f"layers.{layer}.{site}.{part}": part_shape(part, self.hidden_size, self.bottleneck_dim)
            for site, part in self.stack_keys()
            for layer in self.layer_ids
        }
        shapes["head.weight"], shapes["head.bias"] = (len(self.vocab), self.hidden_size), (len(self.vocab),)
        if self.is_classifier:
            shapes["layer_weights"] = (self.num_states,)
        shapes.update({name: shape for name, (_, shape) in self._extras().items()})
        return shapes

    def adopt(
        self,
        stacks: dict[tuple[str, str], torch.Tensor],
        head_weight: torch.Tensor,
        head_bias: torch.Tensor,
        layer_weights: torch.Tensor | None = None,
        extras: Mapping[str, torch.Tensor] | None = None,
    ) -> Adapter:
        """Take ownership of already-stacked tensors (no copy); shapes must match exactly. `layer_weights`:
        (num_states,), required for a classifier; `extras`: the CNN adapters' and attentive pooling's tensors
        under their file names."""
        for (site, part), tensor in stacks.items():
            expected = self.stack(site, part).shape
            if tensor.shape != expected:
                raise ValueError(
                    f"{stack_name(site, part)} has shape {tuple(tensor.shape)}, expected {tuple(expected)}"
                )
            setattr(self, stack_name(site, part), nn.Parameter(tensor, requires_grad=False))
        self.head.weight = nn.Parameter(head_weight, requires_grad=False)
        self.head.bias = nn.Parameter(head_bias, requires_grad=False)
        if self.is_classifier:
            if layer_weights is None or tuple(layer_weights.shape) != (self.num_states,):
                found = None if layer_weights is None else tuple(layer_weights.shape)
                raise ValueError(f"layer_weights has shape {found}, expected ({self.num_states},)")
            self.layer_weights = nn.Parameter(layer_weights, requires_grad=False)
        else:  # empty, but beside the head: an adapter built on the meta device keeps no meta tensor
            self.layer_weights = nn.Parameter(head_weight.new_empty(0), requires_grad=False)
        extras = extras or {}
        for name, (attr, want) in self._extras().items():
            if name not in extras or tuple(extras[name].shape) != want:
                found = tuple(extras[name].shape) if name in extras else None
                raise ValueError(f"{name} has shape {found}, expected {want}")
            setattr(self, attr, nn.Parameter(extras[name], requires_grad=False))
        self._blocks = None
        return self

    def converted(self, device: torch.device, dtype: torch.dtype, non_blocking: bool = False) -> Adapter:
        """A copy with every tensor on `device` in `dtype`; this adapter stays as it is (`nn.Module.to` converts in
        place, which turned the cache's host copy into its device copy). Tensors already right are shared."""
        new = Adapter(  # placeholders on the meta device: no allocation for tensors about to be replaced
            self.info,
            self.vocab,
            self.hidden_size,
            self.bottleneck_dim,
            self.layer_ids,
            self.num_states,
            self.cnn_channels,
            self.cnn_dim,
            self.normalize_states,
            self.pooling,
            device="meta",
        )

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.detach().to(device, dtype, non_blocking=non_blocking)

        stacks = {key: move(self.stack(*key)) for key in self.stack_keys()}
        mix = move(self.layer_weights) if self.is_classifier else None
        extras = {name: move(getattr(self, attr)) for name, (attr, _) in self._extras().items()}
        new.language_model = self.language_model  # files on disk: every copy of the adapter decodes with them
        return new.adopt(stacks, move(self.head.weight), move(self.head.bias), mix, extras).train(self.training)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> Adapter:
        """Training start point: bottlenecks are the identity (up-projection zero), the head is small random, the
        layer mix uniform, attentive pooling the mean (scores all zero)."""
        for name, param in self.tensors().items():
            if name in ("layer_weights", "pool.weight"):
                param.zero_()
            elif name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("bias") or ".up." in name:
                param.zero_()
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
        return self

    def block(self, layer: int, site: str) -> Bottleneck | None:
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            # Training: fresh views each time, so autograd reaches the stacks (cached views may predate it).
            if layer not in self.layer_ids or site not in self.sites:
                return None
            row = self.layer_ids.index(layer)
            return Bottleneck(**{part.replace(".", "_"): self.stack(site, part)[row] for part in self.parts})
        if self._blocks is None:
            self._rebuild_blocks()
            assert self._blocks is not None
        return self._blocks.get((layer, site))

    def trains(self, layer: int) -> bool:
        """Whether any bottleneck parameter of `layer` is trainable (where a training pass starts its gradients)."""
        return layer in self.layer_ids and any(self.stack(site, part).requires_grad for site, part in self.stack_keys())

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def is_classifier(self) -> bool:
        return self.info.kind == CLASSIFIER

    @property
    def labels(self) -> tuple[str, ...]:
        """A classifier's class labels, in head-row order (empty for the CTC kinds)."""
        return self.vocab.tokens if self.is_classifier else ()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


def stack_name(site: str, part: str) -> str:
    return f"{site}_{part.replace('.', '_')}"


def _cnn_param(layer: int, part: str) -> str:
    return f"cnn_{layer}_{part.replace('.', '_')}"


@dataclass(frozen=True)
class Segment:
    """Items `[start, stop)` of a batch (sorted by adapter) that share one adapter. A routed item (routing.py) is a
    segment of its own: its detector's until the decision, then the chosen adapter's."""

    start: int
    stop: int
    adapter: Adapter
    routing: Routing | None = None


def find_segments(adapters: Sequence[Adapter], routings: Sequence[Routing | None] = ()) -> list[Segment]:
    """Runs of consecutive identical adapters -> segments covering the whole batch, in order. `routings`: per
    item, its routing or None; a routed item gets a segment of its own."""
    routed = list(routings) or [None] * len(adapters)
    segments: list[Segment] = []
    start = 0
    for i in range(1, len(adapters) + 1):
        if i == len(adapters) or adapters[i] is not adapters[start] or routed[i] or routed[start]:
            segments.append(Segment(start, i, adapters[start], routed[start]))
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
    if all(b is not None and b.down_weight.shape == blocks[0].down_weight.shape for b in blocks):  # type: ignore[union-attr]
        return gathered(h, segments, [b for b in blocks if b is not None])
    out = torch.empty_like(h)  # each segment writes its rows in place: no list of pieces, no torch.cat
    for seg, block in zip(segments, blocks, strict=True):
        part = h[seg.start : seg.stop]
        if block is None:
            out[seg.start : seg.stop] = part
        else:
            block(part, out=out[seg.start : seg.stop])
    return out


def gathered(h: torch.Tensor, segments: Sequence[Segment], blocks: Sequence[Bottleneck]) -> torch.Tensor:
    """All segments' bottlenecks (one shape, every segment has one) as batched matmuls over per-item weights.

    A handful of ops per site whatever the number of distinct adapters, instead of a handful per segment: on a
    busy CPU every small op is a parallel region that waits for both cores. h: (B, T, H) -> (B, T, H).
    """
    per_item = [block for seg, block in zip(segments, blocks, strict=True) for _ in range(seg.stop - seg.start)]
    down_w = torch.stack([b.down_weight for b in per_item])  # (B, r, H)
    down_b = torch.stack([b.down_bias for b in per_item])[:, None, :]  # (B, 1, r)
    up_w = torch.stack([b.up_weight for b in per_item])  # (B, H, r)
    up_b = torch.stack([b.up_bias for b in per_item])[:, None, :]  # (B, 1, H)
    y = h
    if blocks[0].norm_weight is not None:
        norm_w = torch.stack([b.norm_weight for b in per_item])[:, None, :]  # type: ignore[misc]  # (B, 1, H)
        norm_b = torch.stack([b.norm_bias for b in per_item])[:, None, :]  # type: ignore[misc]
        y = torch.addcmul(norm_b, F.layer_norm(h, h.shape[-1:]), norm_w)
    z = torch.baddbmm(down_b, y, down_w.transpose(1, 2)).relu_()  # (B, T, r)
    return torch.baddbmm(up_b, z, up_w.transpose(1, 2)).add_(h)  # (B, T, H)
