"""Where a request's audio has speech, and what that means for it: the regions the backbone runs on (silence costs
no backbone time), the pauses segments end at, `no_speech_prob`, and one transcript from the regions' transcripts.

The request's `chunking_strategy` (OpenAI's form field) picks the detector's options: `auto` takes the server's
settings; a `server_vad` object (JSON, or the OpenAI SDK's `chunking_strategy[field]` form fields) overrides the
threshold, the pause length (`silence_duration_ms`) and the padding (`prefix_padding_ms`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from chorus_server.engine.decode import TimedText, Transcript
from chorus_server.errors import ApiError
from chorus_server.settings import VadSettings
from chorus_server.vad import CHUNK, SAMPLE_RATE, Region, VadOptions, regions_from_probabilities, speech_probabilities

FIELD = "chunking_strategy"
_VAD_FIELDS = {"threshold": "threshold", "silence_duration_ms": "silence_ms", "prefix_padding_ms": "padding_ms"}


@dataclass(frozen=True)
class Speech:
    regions: list[Region]  # what the backbone runs on, in samples (frame-aligned, in order, disjoint)
    probs: np.ndarray  # (N,) speech probability per 32 ms chunk; empty when the rate is not 16 kHz
    rate: int

    def pauses(self) -> list[float]:
        """Times (s) in the middle of the silence between consecutive regions."""
        return [(a.stop + b.start) / 2 / self.rate for a, b in zip(self.regions, self.regions[1:], strict=False)]

    def no_speech_prob(self, start: float, end: float) -> float:
        """1 - the mean speech probability over [start, end) seconds (0 when unknown)."""
        if not len(self.probs):
            return 0.0
        first = min(len(self.probs) - 1, int(start * self.rate) // CHUNK)
        stop = max(first + 1, -(-int(end * self.rate) // CHUNK))
        return round(1.0 - float(self.probs[first:stop].mean()), 3)


def options_from_form(form: Mapping[str, Any], settings: VadSettings) -> VadOptions | None:
    """The detector options a request asks for (None: no detection, the whole file is speech). 400 on bad input."""
    defaults = VadOptions(settings.threshold, settings.silence_ms, settings.padding_ms, settings.min_speech_ms)
    raw = form.get(FIELD)
    nested = {key[len(FIELD) + 1 : -1]: value for key, value in form.items() if key.startswith(f"{FIELD}[")}
    if raw is None and not nested:
        return defaults if settings.enabled else None
    if raw is not None and nested:
        raise _bad(f"send {FIELD} either as one field or as {FIELD}[...] fields, not both")
    if raw == "auto":
        return defaults
    if raw is not None:
        try:
            nested = json.loads(raw)
        except (ValueError, TypeError, RecursionError):
            raise _bad(f'{FIELD} must be "auto" or a JSON object {{"type": "server_vad", ...}}') from None
        if not isinstance(nested, dict):
            raise _bad(f'{FIELD} must be "auto" or a JSON object {{"type": "server_vad", ...}}')
    if nested.get("type") != "server_vad":
        raise _bad(f'{FIELD} object needs "type": "server_vad", got {nested.get("type")!r}')
    unknown = sorted(set(nested) - {"type", *_VAD_FIELDS})
    if unknown:
        raise _bad(f"unknown {FIELD} fields {unknown}; known: type, {', '.join(_VAD_FIELDS)}")
    changes: dict[str, Any] = {}
    for theirs, ours in _VAD_FIELDS.items():
        if theirs in nested:
            try:
                changes[ours] = float(nested[theirs]) if ours == "threshold" else int(nested[theirs])
            except (ValueError, TypeError):
                raise _bad(f"{FIELD}.{theirs} must be a number, got {nested[theirs]!r}") from None
    try:
        return replace(defaults, **changes)
    except ValueError as exc:
        raise _bad(f"{FIELD}: {exc}") from None


def _bad(message: str) -> ApiError:
    return ApiError(400, message, "invalid_parameter", param=FIELD)


def detect(
    samples: np.ndarray, rate: int, options: VadOptions | None, hop: int, min_samples: int, probabilities: bool = True
) -> Speech:
    """samples: (L,) mono at `rate`. Regions start and stop on multiples of `hop` (the backbone's frame step), so
    frame `j` of a region starting at sample `s` lies at `s / rate + j * hop / rate` in the file.

    `probabilities`: whether the caller reports `no_speech_prob`. Without detection (`options` None) the detector
    then runs only for that: ~25 ms of CPU per 5 s of audio, before the audio reaches the backbone."""
    measured = rate == SAMPLE_RATE and (options is not None or probabilities)
    probs = speech_probabilities(samples) if measured else np.zeros(0, np.float32)
    if options is None or not len(probs):
        return Speech([Region(0, len(samples))], probs, rate)
    aligned: list[Region] = []
    for region in regions_from_probabilities(probs, len(samples), options):
        start, stop = region.start // hop * hop, min(len(samples), -(-region.stop // hop) * hop)
        if aligned and start <= aligned[-1].stop:
            start = aligned.pop().start
        if stop - start >= min_samples:
            aligned.append(Region(start, stop))
    return Speech(aligned, probs, rate)


def warm_up() -> None:
    """Load the detector now (start-up), not on the first request."""
    speech_probabilities(np.zeros(SAMPLE_RATE, np.float32))


def _shift(items: list[TimedText], offset: float) -> list[TimedText]:
    return [TimedText(t.text, t.start + offset, t.end + offset, t.logprob) for t in items]


def join(parts: list[tuple[float, Transcript]]) -> Transcript:
    """(offset in seconds, transcript of the audio from there) in time order -> one transcript of the file."""
    words = [w for offset, part in parts for w in _shift(part.words, offset)]
    frames = sum(part.frames for _, part in parts)
    return Transcript(
        text=" ".join(part.text for _, part in parts if part.text),
        words=words,
        chars=[c for offset, part in parts for c in _shift(part.chars, offset)],
        token_ids=[i for _, part in parts for i in part.token_ids],
        avg_logprob=sum(part.avg_logprob * part.frames for _, part in parts) / frames if frames else 0.0,
        frames=frames,
    )
