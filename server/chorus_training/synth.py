"""Speech synthesis with espeak-ng and light augmentation (gain, noise, reverb), all at 16 kHz mono float32."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class Voice:
    """One espeak-ng rendering setup: language voice + variant, words per minute, pitch (0-99)."""

    espeak_voice: str  # e.g. "en-us"
    variant: str  # e.g. "m3"; "" for the plain voice
    rate: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.espeak_voice}+{self.variant}" if self.variant else self.espeak_voice


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Render `text` with espeak-ng -> (L,) float32 at 16 kHz."""
    if not espeak_available():
        raise SynthesisError("espeak-ng not found; install it with tools/install-demo-deps.sh")
    cmd = ["espeak-ng", "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch), "--stdout", text]
    result = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
    if result.returncode != 0 or not result.stdout:
        raise SynthesisError(f"espeak-ng failed for voice {voice.name!r}: {result.stderr.decode(errors='replace')}")
    audio, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    if audio.ndim != 1:
        audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def trim_silence(audio: np.ndarray, threshold: float = 1e-3, keep: int = 1600) -> np.ndarray:
    """Cut leading/trailing near-silence, keeping `keep` samples (0.1 s) of margin on each side."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    return audio[max(0, loud[0] - keep) : loud[-1] + 1 + keep]


def reverb(audio: np.ndarray, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise with the given RT60 (seconds)."""
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    response = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    response[0] = 1.0 / 0.3  # direct path dominates
    response *= 0.3 / np.sqrt(np.sum(response**2))
    n = audio.size + length - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(response, size), size)[: audio.size]
    return wet.astype(np.float32)


def augment(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light, random corruption: reverb (30%), white or brown noise at 15-40 dB SNR (50%), gain -12..+3 dB."""
    out = audio.astype(np.float32)
    if rng.random() < 0.3:
        out = reverb(out, rng, float(rng.uniform(0.1, 0.5)))
    if rng.random() < 0.5:
        noise = rng.standard_normal(out.size).astype(np.float32)
        if rng.random() < 0.5:  # brown noise: integrated white noise, rumble-like
            noise = np.cumsum(noise)
            noise -= np.convolve(noise, np.ones(401) / 401, mode="same")
        snr_db = rng.uniform(15, 40)
        signal_power = float(np.mean(out**2)) + 1e-12
        noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / (float(np.mean(noise**2)) + 1e-12))
        out = out + noise
    out *= 10 ** (rng.uniform(-12, 3) / 20)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:
        out *= 0.99 / peak
    return out.astype(np.float32)
