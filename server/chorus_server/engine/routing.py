"""One-pass routing: a classifier decides, inside the backbone pass, which adapter runs the rest of an item's pass.

A detector (a classifier) that mixes only the first S + 1 hidden states and changes nothing itself (no bottlenecks,
no CNN adapters) has its answer as soon as state S is computed (the input of layer S). When no candidate adapter
changes anything below layer S either, those states are the frozen backbone's whichever candidate wins: the item runs
layers 0..S-1 unadapted, the detector's top label picks the candidate, and layers S.. and the head run with it. The
item's logits are then bit for bit those of a solo pass with the chosen adapter (CPU), and the label is the
detector's solo answer (tests/server/engine/test_routing.py). `model=auto` uses it when the placement allows
(auto_route.py); otherwise detection is a pass of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from chorus_server.engine.adapters import Adapter, Segment
from chorus_server.engine.classify import LayerMix, classify


class Routing:
    """One item's routing: `detector`'s top label picks `candidates[label]` mid-pass. The engine's pass records the
    outcome here (`label`, `scores`): make one per item. A label without a candidate ends the item unadapted and
    with empty logits (the caller reports it)."""

    def __init__(self, detector: Adapter, candidates: Mapping[str, Adapter]):
        self.detector = detector
        self.candidates = dict(candidates)
        self.label: str | None = None  # the detector's top label, once the pass has decided
        self.scores: torch.Tensor | None = None  # (labels,) float32 detector logits on the host

    @property
    def decision_state(self) -> int:
        return last_state(self.detector)


def last_state(classifier: Adapter) -> int:
    """The last hidden state a classifier mixes, the input of that layer (0: the first layer's input): its answer
    is known once the pass has computed it."""
    return classifier.num_states - 1


def one_pass_problem(detector: Adapter, candidates: Mapping[str, Adapter], num_layers: int) -> str | None:
    """Why `detector` cannot route between `candidates` inside one backbone pass of `num_layers` layers, or None."""
    if not detector.is_classifier:
        return f"{detector.name!r} is not a classifier"
    if detector.layer_ids or detector.cnn_channels:
        return f"the detector {detector.name!r} has adapters of its own (it must read the frozen backbone)"
    last = last_state(detector)
    for label, adapter in candidates.items():
        if adapter.is_classifier:
            return f"candidate {adapter.name!r} (for {label!r}) is a classifier"
        if adapter.cnn_channels:
            return f"candidate {adapter.name!r} (for {label!r}) has CNN adapters: it changes the front end"
        first = min(adapter.layer_ids, default=num_layers)
        if first < last:
            return (
                f"candidate {adapter.name!r} (for {label!r}) changes layer {first}, below the detector's last state "
                f"{last}"
            )
    return None


class Router:
    """The encoder's states hook for a batch (`Engine.run`): feeds every hidden state to the classifiers' layer
    mix and, at a routed item's decision state, scores its detector and swaps its segment for the chosen
    adapter's (`segments` is then what the later layers and the heads use)."""

    def __init__(self, segments: Sequence[Segment], mix: LayerMix, frames: Sequence[int]):
        self.segments = list(segments)
        self.mix, self.frames = mix, frames

    def __call__(self, index: int, h: torch.Tensor) -> list[Segment] | None:
        """h: (B, T, H) hidden state `index` -> the segments from here on when a decision was made, else None."""
        self.mix(index, h)
        due = [
            k
            for k, seg in enumerate(self.segments)
            if seg.routing is not None and seg.adapter is seg.routing.detector and seg.routing.decision_state == index
        ]
        for k in due:
            seg = self.segments[k]
            routing = seg.routing
            assert routing is not None
            detector = routing.detector
            frames = self.frames[seg.start : seg.stop]
            scores = classify(self.mix.mixed(seg), frames, detector.head, detector.pool)[0]  # (labels,)
            routing.scores = scores.cpu()  # on a GPU a sync: the rest of the pass depends on the choice
            routing.label = detector.labels[int(routing.scores.argmax())]
            chosen = routing.candidates.get(routing.label)
            if chosen is not None:
                self.segments[k] = Segment(seg.start, seg.stop, chosen, routing)
        return self.segments if due else None
