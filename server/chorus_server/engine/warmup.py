"""Warm-up: one dummy batch per shape bucket before a GPU server reports ready.

The first batch of a new shape pays for kernel selection, lazy CUDA initialisation (cuBLAS handles, workspace)
and the caching allocator's first `cudaMalloc`s; a client would see that as a latency spike, or an
out-of-memory error half-way through serving. Running the largest batch of every bucket first reserves the
peak memory up front, so an out-of-memory error (and the smaller budget it leads to) happens before traffic.

The dummy batches mix every kind of work a real batch can hold, so that no code path is first run by a client:
a bottleneck adapter (per-segment adapter kernels in every layer), a classifier with bottlenecks, a CNN adapter
and attentive pooling (the layer mix, pooling and front-end adapter kernels), an item routed mid-pass (the
detector's decision and the segment swap) and a head-only adapter (the plain CTC path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chorus_server.engine.adapters import CLASSIFIER, Adapter, AdapterInfo, Vocabulary
from chorus_server.engine.engine import Engine
from chorus_server.engine.routing import Routing

_VOCAB = Vocabulary(("<pad>", "|", "a"), blank_id=0, word_delimiter_id=1)
_LABELS = Vocabulary.of_labels(["a", "b"])
_BOTTLENECK = 16  # the rank of the warm-up adapters' bottlenecks (a typical adapter's)


@dataclass(frozen=True)
class WarmUpAdapters:
    """The prepared adapters of the dummy batches. `detector`/`candidate` are None on a one-layer backbone (a
    routed item needs a layer above the detector's decision)."""

    bottleneck: Adapter
    classifier: Adapter
    head: Adapter
    detector: Adapter | None
    candidate: Adapter | None

    def items(self, count: int) -> list[Adapter | Routing]:
        """`count` items cycling through the kinds, most costly first (a batch of one still warms bottlenecks);
        each routed item gets a `Routing` of its own, as the engine requires."""
        kinds: list[Adapter | None] = [self.bottleneck, self.classifier, None, self.head]
        if self.detector is None:
            kinds.remove(None)
        chosen: list[Adapter | Routing] = []
        for i in range(count):
            kind = kinds[i % len(kinds)]
            if kind is None:
                assert self.detector is not None and self.candidate is not None
                chosen.append(Routing(self.detector, {"a": self.candidate, "b": self.head}))
            else:
                chosen.append(kind)
        return chosen


def warm_up_adapters(engine: Engine) -> WarmUpAdapters:
    """Adapters of every kind for dummy batches, fitted to `engine`'s backbone and prepared for its device."""
    config = engine.config
    layers = config.num_hidden_layers
    gen = torch.Generator().manual_seed(0)

    def build(name: str, kind: str, dim: int = 0, ids: range = range(0), states: int = 0) -> Adapter:
        info = AdapterInfo(name=f"warm-up-{name}", kind=kind)
        if kind != CLASSIFIER:
            adapter = Adapter(info, _VOCAB, config.hidden_size, dim, ids)
        elif dim:  # the full classifier: bottlenecks, a CNN adapter after the last conv layer, attentive pooling
            last_conv = len(config.conv_dim) - 1
            cnn = {last_conv: config.conv_dim[last_conv]}
            adapter = Adapter(info, _LABELS, config.hidden_size, dim, ids, states, cnn, dim, pooling="attentive")
        else:  # a detector: reads the frozen backbone
            adapter = Adapter(info, _LABELS, config.hidden_size, num_states=states)
        return engine.prepare(adapter.reset_parameters(gen), check_fingerprint=False)

    routed = layers >= 2  # the detector decides at state 1; its candidate adapts the layers above
    return WarmUpAdapters(
        bottleneck=build("bottleneck", "houlsby", _BOTTLENECK, range(layers)),
        classifier=build("classifier", CLASSIFIER, _BOTTLENECK, range(layers), layers + 1),
        head=build("head", "head"),
        detector=build("detector", CLASSIFIER, states=2) if routed else None,
        candidate=build("candidate", "houlsby", _BOTTLENECK, range(1, layers)) if routed else None,
    )


def warm_up_batch(engine: Engine, adapters: WarmUpAdapters, items: int, samples: int) -> None:
    """One forward over `items` windows of `samples` samples of quiet noise, the adapters mixed (waits for the
    device to finish)."""
    gen = torch.Generator().manual_seed(0)
    waveforms = 0.01 * torch.randn(items, samples, generator=gen)  # (B, L)
    lengths = torch.full((items,), samples, dtype=torch.int64)
    engine.forward(waveforms, lengths, adapters.items(items))
