"""Corpus generator: the split is disjoint in words and voices; synthesis works where espeak-ng is installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chorus_training import corpus
from chorus_training.corpus import VARIANTS, clean_words, partition, plan_utterance, split_of
from chorus_training.synth import SAMPLE_RATE, augment, espeak_available

WORDS = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26)]


def test_partition_is_complete_disjoint_and_stable() -> None:
    parts = partition(WORDS, salt="words-en-0")
    assert sorted(w for p in parts.values() for w in p) == sorted(WORDS)
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(parts[a]) & set(parts[b])
    assert partition(reversed(WORDS), salt="words-en-0") == parts  # order-independent
    assert all(split_of(w, "words-en-0") == s for s, ws in parts.items() for w in ws)
    shares = {s: len(ws) / len(WORDS) for s, ws in parts.items()}
    assert 0.7 < shares["train"] < 0.9 and shares["valid"] > 0.05 and shares["test"] > 0.05


def test_voice_variants_split_disjointly_with_every_split_populated() -> None:
    voices = partition(VARIANTS, salt="voices-0")
    assert all(len(v) >= 5 for v in voices.values()), {k: len(v) for k, v in voices.items()}
    assert not set(voices["train"]) & (set(voices["valid"]) | set(voices["test"]))
    assert not set(voices["valid"]) & set(voices["test"])


def test_utterances_use_only_their_split() -> None:
    words = partition(WORDS, salt="w")
    voices = partition(VARIANTS, salt="v")
    for i in range(50):
        utt = plan_utterance(i, words["test"], voices["test"], "fr", seed=7)
        assert set(utt.text.split()) <= set(words["test"])
        assert 2 <= len(utt.text.split()) <= 7
        assert utt.voice.variant in voices["test"] and utt.voice.espeak_voice == "fr"
        assert plan_utterance(i, words["test"], voices["test"], "fr", seed=7) == utt  # reproducible


def test_clean_words() -> None:
    lines = ["Paris", "chat", "l'eau", "x", "NASA", "été", "Haus", "peut-être", "abc1", "  chien  "]
    assert clean_words(lines) == ["chat", "chien", "été"]
    assert clean_words(lines, keep_capitalized=True) == ["chat", "chien", "haus", "paris", "été"]


def test_augment_keeps_length_and_range() -> None:
    rng = np.random.default_rng(0)
    audio = np.sin(np.arange(SAMPLE_RATE) / 10).astype(np.float32)
    for _ in range(10):
        out = augment(audio, rng)
        assert out.shape == audio.shape and out.dtype == np.float32 and np.abs(out).max() <= 0.99 + 1e-6


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (tools/install-demo-deps.sh)")
def test_make_split_synthesizes_a_manifest(tmp_path: Path) -> None:
    words = partition(WORDS, salt="w")["train"]
    manifest = corpus.make_split(tmp_path, "en", "train", words, ["m1", "f2"], minutes=0.05, seed=0, workers=1)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows and all((tmp_path / "en" / r["audio"]).is_file() and r["lang"] == "en" for r in rows)
    assert sum(r["duration"] for r in rows) >= 3.0
