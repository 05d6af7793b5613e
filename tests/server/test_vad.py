"""chorus_server.vad: the detector matches Silero's own model, and the region rules (table-driven)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile
import torch

from chorus_server.demo_model import DEMO_DIR
from chorus_server.vad import (
    CHUNK,
    Region,
    VadOptions,
    regions_from_probabilities,
    speech_probabilities,
    speech_regions,
)
from chorus_server.vad_silero import weights_path

RATE = 16000
SAMPLES = DEMO_DIR / "samples"


def sample(name: str) -> np.ndarray:
    audio, rate = soundfile.read(SAMPLES / f"{name}.wav", dtype="float32")
    assert rate == RATE
    return audio


def quiet_noise(seconds: float, seed: int = 0, level: float = 0.003) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def test_probabilities_equal_the_wheels_own_model():
    speech = np.concatenate([np.zeros(RATE, np.float32), sample("en-1"), quiet_noise(2.0), sample("fr-2")[:-77]])
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated; it is the reference here
        scripted = torch.jit.load(str(weights_path())).eval()
        theirs = scripted.audio_forward(torch.from_numpy(speech)[None], RATE)[0].numpy()  # (N,)
    ours = speech_probabilities(speech)
    assert ours.shape == theirs.shape == (-(-len(speech) // CHUNK),)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_detection_leaves_torchs_thread_count_alone():
    before = torch.get_num_threads()
    speech_probabilities(np.zeros(RATE, np.float32))
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "signal",
    [np.zeros(3 * RATE, np.float32), quiet_noise(3.0), quiet_noise(3.0, seed=1, level=0.02)],
    ids=["digital silence", "quiet noise", "louder noise"],
)
def test_silence_and_noise_have_no_speech(signal):
    assert speech_regions(signal) == []


def test_regions_follow_known_pauses():
    """Utterances separated by known pauses (digital silence and noise): one region per utterance; it starts
    within the padding plus 150 ms of the truth, and ends within the padding plus 400 ms (in noise, Silero's
    probability stays up for about 350 ms after speech)."""
    options = VadOptions()
    pieces, truth, position = [], [], 0
    for name, gap in [("en-2", 0.8), ("de-2", 1.5), ("es-3", 3.0)]:
        pause = quiet_noise(gap) if name == "de-2" else np.zeros(int(gap * RATE), np.float32)
        utterance = sample(name)
        pieces += [pause, utterance]
        position += len(pause)
        truth.append((position, position + len(utterance)))
        position += len(utterance)
    regions = speech_regions(np.concatenate(pieces), options)
    assert len(regions) == len(truth)
    early, late = (options.padding_ms + 150) * RATE // 1000, (options.padding_ms + 400) * RATE // 1000
    for region, (start, stop) in zip(regions, truth, strict=True):
        assert start - early <= region.start <= start + early, (region, start, stop)
        assert stop - early <= region.stop <= stop + late, (region, start, stop)


def test_a_short_pause_does_not_split():
    audio = np.concatenate([sample("en-2"), np.zeros(int(0.2 * RATE), np.float32), sample("en-2")])
    assert len(speech_regions(audio)) == 1


def probs(pattern: str) -> np.ndarray:
    """'0' = 0.05, '9' = 0.95 per chunk, '4' = 0.4 (between the thresholds)."""
    return np.array([{"0": 0.05, "4": 0.4, "9": 0.95}[c] for c in pattern], np.float32)


# 1 chunk = 32 ms; silence_ms=64 -> 2 quiet chunks end a region; min_speech_ms=64 -> 2 chunks; no padding
TIGHT = VadOptions(threshold=0.5, silence_ms=64, padding_ms=0, min_speech_ms=64)


@pytest.mark.parametrize(
    ("pattern", "options", "expected"),
    [
        ("", TIGHT, []),
        ("0000", TIGHT, []),
        ("0900", TIGHT, []),  # one chunk: shorter than min_speech
        ("0990000", TIGHT, [(1, 3)]),
        ("0990990", TIGHT, [(1, 6)]),  # a one-chunk pause is shorter than silence_ms
        ("0990099", TIGHT, [(1, 3), (5, 7)]),
        ("0994449900", TIGHT, [(1, 8)]),  # between the thresholds speech goes on
        ("99", TIGHT, [(0, 2)]),  # speech to the very end
        ("00990099", VadOptions(0.5, 64, 32, 64), [(1, 8)]),  # padded regions touch: one; clipped to the file
        ("000990000990", VadOptions(0.5, 64, 64, 64), [(1, 12)]),  # padded regions overlap: merged
        ("0044440", VadOptions(0.3, 64, 0, 64), [(2, 6)]),  # a lower threshold
    ],
)
def test_regions_from_probabilities(pattern, options, expected):
    found = regions_from_probabilities(probs(pattern), len(pattern) * CHUNK, options)
    assert found == [Region(a * CHUNK, b * CHUNK) for a, b in expected]


def test_the_last_region_stops_at_the_audio_end():
    found = regions_from_probabilities(probs("0999"), 3 * CHUNK + 100, TIGHT)
    assert found == [Region(CHUNK, 3 * CHUNK + 100)]


@pytest.mark.parametrize("fields", [{"threshold": 0.0}, {"threshold": 1.0}, {"silence_ms": -1}, {"padding_ms": 10_001}])
def test_options_are_checked(fields):
    with pytest.raises(ValueError, match=next(iter(fields))):
        VadOptions(**fields)


def test_mono_only():
    with pytest.raises(ValueError, match="mono"):
        speech_probabilities(np.zeros((2, RATE), np.float32))


def test_the_samples_manifest_lists_the_voices_used_here():
    names = {json.loads(line)["audio"] for line in (SAMPLES / "samples.jsonl").read_text().splitlines()}
    assert {"en-1.wav", "en-2.wav", "de-2.wav", "es-3.wav", "fr-2.wav"} <= names
