"""Realtime input audio: base64 PCM16 (little-endian, mono) -> float32 at the backbone's rate.

OpenAI's Realtime API takes 24 kHz; Chorus also takes 16 kHz (no resampling at all) and the usual device rates,
44.1 and 48 kHz, so a browser can send what its microphone delivers and leave the resampling to the server.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import soxr

RATES = (16000, 24000, 44100, 48000)


class PcmError(ValueError):
    """Audio a client sent that is not base64 PCM16."""


def decode_pcm16(audio: str) -> np.ndarray:
    """base64 of little-endian int16 samples -> (L,) float32 in [-1, 1)."""
    try:
        raw = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise PcmError("audio is not valid base64") from None
    if len(raw) % 2:
        raise PcmError(f"PCM16 audio has an even number of bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0  # (L,)


class Resampler:
    """A stream of chunks at `rate` -> the same stream at `target`, with no seams between chunks."""

    def __init__(self, rate: int, target: int):
        self.rate, self.target = rate, target
        self._stream = soxr.ResampleStream(rate, target, 1, dtype="float32") if rate != target else None

    def push(self, samples: np.ndarray) -> np.ndarray:
        """(L,) float32 at `rate` -> (L',) float32 at `target` (the resampler holds back a few ms until `flush`)."""
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """What the resampler still holds; it then starts afresh (a commit ends the audio it belongs to)."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        rest = np.asarray(self._stream.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)
        self._stream = soxr.ResampleStream(self.rate, self.target, 1, dtype="float32")
        return rest
