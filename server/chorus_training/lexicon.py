"""The lexicon `chorus train-adapter` writes beside the adapter: every word of the training transcripts the
adapter can spell, one per line, sorted — the file `chorus adapters upload --lexicon` takes."""

from __future__ import annotations

from pathlib import Path

from chorus_server.decoding.request import spelling_symbols
from chorus_server.engine.adapters import Vocabulary
from chorus_store.decoding_files import MAX_WORD_CHARS
from chorus_training.manifest import normalize_text, read_manifest


def lexicon_path(adapter_file: Path) -> Path:
    """`fr.safetensors` -> `fr.lexicon.txt`, beside it."""
    return adapter_file.with_name(f"{adapter_file.stem}.lexicon.txt")


def transcript_words(manifest: Path, vocab: Vocabulary) -> list[str]:
    """The manifest's words (normalised as training normalises them) that `vocab` spells, each once, sorted."""
    symbols = spelling_symbols(vocab)
    words = {
        word
        for row in read_manifest(manifest)
        for word in normalize_text(row["text"]).split()
        if len(word) <= MAX_WORD_CHARS and all(c in symbols for c in word)
    }
    return sorted(words)


def write_lexicon(manifest: Path, vocab: Vocabulary, out: Path) -> int:
    """Write the lexicon of `manifest` for an adapter of `vocab` to `out`; returns its word count."""
    words = transcript_words(manifest, vocab)
    out.write_text("".join(f"{word}\n" for word in words), encoding="utf-8")
    return len(words)
