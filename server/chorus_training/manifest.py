"""Training manifests (JSONL: one `{"audio": path, "text": str, "lang": str}` per line) and text <-> CTC ids.

`audio` is a path to any file libsndfile reads (WAV, FLAC, OGG, ...), absolute or relative to the manifest's
folder; it is resampled to 16 kHz and mixed down to mono on load. Transcripts are lowercased and whitespace is
collapsed; the vocabulary is built from the characters of the training transcripts.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from chorus_server.engine.adapters import Vocabulary

SAMPLE_RATE = 16_000
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "|")  # HF wav2vec 2.0 CTC layout: blank first, "|" between words


@dataclass(frozen=True)
class Example:
    audio: np.ndarray  # (L,) int16 at 16 kHz, compact in memory
    text: str


def normalize_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def read_manifest(path: Path, field: str = "text") -> list[dict]:
    """The rows of a JSONL manifest; each must hold a string `audio` and a string `field` (the transcript, or a
    classifier's label)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not isinstance(row.get(field), str):
            raise ValueError(
                f"{path}:{number}: expected an object with string 'audio' and {field!r}, got {line[:80]!r}"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no examples")
    return rows


def load_audio(path: Path) -> np.ndarray:
    """Any libsndfile format -> (L,) float32 mono at 16 kHz."""
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return mono.astype(np.float32)


def load_examples(path: Path, limit: int | None = None, field: str = "text") -> list[Example]:
    """Read a manifest and its audio into memory (int16). `field`: what `Example.text` holds (normalised when it is
    the transcript, as is otherwise: a label)."""
    examples = []
    for row in read_manifest(path, field)[:limit]:
        audio_path = Path(row["audio"])
        if not audio_path.is_absolute():
            audio_path = path.parent / audio_path
        audio = np.clip(load_audio(audio_path), -1.0, 1.0)
        text = normalize_text(row[field]) if field == "text" else row[field].strip()
        examples.append(Example((audio * 32767).astype(np.int16), text))
    return examples


def build_vocab(texts: Iterable[str]) -> Vocabulary:
    """HF-style CTC vocabulary from transcripts: specials, then every character seen (spaces become "|")."""
    chars = sorted({c for text in texts for c in normalize_text(text) if c != " "})
    return Vocabulary((*SPECIALS, *chars), blank_id=0, word_delimiter_id=SPECIALS.index("|"))


def encode(text: str, vocab: Vocabulary) -> list[int]:
    """Transcript -> token ids; unknown characters map to `<unk>`."""
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    unk = ids.get("<unk>", vocab.blank_id)
    delimiter = vocab.word_delimiter_id
    out = []
    for char in normalize_text(text):
        if char == " " and delimiter is not None:
            out.append(delimiter)
        else:
            out.append(ids.get(char, unk))
    return out


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two sequences."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_rate(references: Sequence[str], hypotheses: Sequence[str], unit: str = "char") -> float:
    """Corpus CER (unit="char") or WER (unit="word"): total edits / total reference length."""
    edits = total = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = normalize_text(ref), normalize_text(hyp)
        r_units: Sequence[str] = r.split() if unit == "word" else r
        h_units: Sequence[str] = h.split() if unit == "word" else h
        edits += edit_distance(r_units, h_units)
        total += len(r_units)
    return edits / max(total, 1)
