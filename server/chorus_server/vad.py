"""Voice activity detection: where a mono 16 kHz recording has speech.

    probs = speech_probabilities(samples)            # (ceil(L / 512),) one per 32 ms chunk, Silero VAD v6
    regions = speech_regions(samples, VadOptions())  # [Region(start, stop)] in samples, padded, in order

`regions_from_probabilities` is the pure part (hysteresis, minimum speech and silence, padding), so a caller with
its own probabilities (a live stream fed chunk by chunk, another detector) gets the same rules. The network is
loaded once per process, on first use; it is stateless between calls and safe to call from several threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from chorus_server.vad_silero import CHUNK, SAMPLE_RATE, SileroVad

__all__ = [
    "CHUNK",
    "SAMPLE_RATE",
    "Region",
    "VadOptions",
    "regions_from_probabilities",
    "speech_probabilities",
    "speech_regions",
]


class Region(NamedTuple):
    start: int  # first sample of speech (padding included)
    stop: int  # one past the last


@dataclass(frozen=True)
class VadOptions:
    """OpenAI's `server_vad` fields (threshold, prefix_padding_ms, silence_duration_ms) plus a minimum speech length."""

    threshold: float = 0.5  # probability at which speech starts; it ends below `threshold - 0.15`
    silence_ms: int = 500  # shorter pauses do not end a region
    padding_ms: int = 200  # audio kept before and after each region
    min_speech_ms: int = 250  # shorter bursts (clicks, breaths) are dropped

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        for name in ("silence_ms", "padding_ms", "min_speech_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 10_000:
                raise ValueError(f"{name} must be between 0 and 10000 ms, got {value}")


_model: SileroVad | None = None
_model_lock = threading.Lock()


def _network() -> SileroVad:
    global _model
    with _model_lock:
        if _model is None:
            _model = SileroVad.from_wheel()
        return _model


def speech_probabilities(samples: np.ndarray) -> np.ndarray:
    """samples: (L,) float32 mono 16 kHz -> (ceil(L / 512),) float32 speech probability of each 32 ms chunk."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono (L,) audio, got shape {samples.shape}")
    return _network()(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))).numpy()


def speech_regions(samples: np.ndarray, options: VadOptions | None = None) -> list[Region]:
    """samples: (L,) float32 mono 16 kHz -> the regions that hold speech (empty: none)."""
    return regions_from_probabilities(speech_probabilities(samples), len(samples), options or VadOptions())


def regions_from_probabilities(probs: np.ndarray, num_samples: int, options: VadOptions) -> list[Region]:
    """probs: (N,) per 512-sample chunk -> padded, merged speech regions within [0, num_samples)."""
    ms = SAMPLE_RATE // 1000
    low = max(0.0, options.threshold - 0.15)
    silence_chunks = max(1, -(-options.silence_ms * ms // CHUNK))
    raw: list[tuple[int, int]] = []  # chunk indices [first, stop)
    start: int | None = None
    quiet = 0  # consecutive chunks below `low` inside a region
    for i, p in enumerate(probs.tolist()):
        if start is None:
            if p >= options.threshold:
                start, quiet = i, 0
            continue
        quiet = quiet + 1 if p < low else 0
        if quiet >= silence_chunks:
            raw.append((start, i - quiet + 1))
            start = None
    if start is not None:
        raw.append((start, len(probs) - quiet))
    pad = options.padding_ms * ms
    regions: list[Region] = []
    for first, stop in raw:
        begin, end = first * CHUNK, min(num_samples, stop * CHUNK)
        if end - begin < options.min_speech_ms * ms:
            continue
        begin, end = max(0, begin - pad), min(num_samples, end + pad)
        if regions and begin <= regions[-1].stop:
            regions[-1] = Region(regions[-1].start, end)
        else:
            regions.append(Region(begin, end))
    return regions
