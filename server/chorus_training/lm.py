"""`chorus dev make-lm`: a lexicon and an n-gram language model (ARPA text) for beam-search decoding, from a word
list (the Debian lists the demo corpus draws its words from).

The demo utterances are independent random words, so the only thing a language model can know about them is which
words exist: the model written here is a unigram over the word list (every word equally likely; `<unk>` far
below). A bigram over random word sequences would carry no information and multiply the file's size. Any KenLM
model (`lmplz` from real text) can replace it; the lexicon stays one word per line.

Words with a character outside the adapter's vocabulary cannot be spelled by it and are left out.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

UNK_LOG10 = -10.0  # `<unk>`: far below any listed word, so the LM never prefers it


def spellable(words: Iterable[str], alphabet: Iterable[str]) -> list[str]:
    """The words every character of which is in `alphabet`, sorted and without duplicates."""
    chars = set(alphabet)
    return sorted({w for w in words if w and set(w) <= chars})


def write_lexicon(words: Sequence[str], path: Path) -> Path:
    """One word per line (UTF-8): the lexicon format Chorus reads (`decoding/resources.py`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w}\n" for w in words), encoding="utf-8")
    return path


def _tie_breaker(word: str) -> float:
    """A tiny offset (under 0.001 in log10, 0.23% in probability) that differs between words: with every score
    exactly equal, flashlight's beam cut between tied hypotheses follows memory order, and the same audio could
    decode differently from one call to the next (2 of 157 German test utterances did)."""
    return (zlib.crc32(word.encode()) % 1000) * 1e-6


def write_unigram_arpa(words: Sequence[str], path: Path, counts: dict[str, int] | None = None) -> Path:
    """An ARPA model over `words` (with `counts`: relative frequencies; else uniform, each word nudged by a tiny
    tie-breaker) plus `</s>`, `<s>` (never predicted) and `<unk>` (UNK_LOG10): in effect a unigram (its single
    bigram only makes KenLM accept it)."""
    if not words:
        raise ValueError("no words to build a language model from")
    weights = [float(counts.get(w, 1)) if counts else 1.0 for w in words]
    total = sum(weights) + 1.0  # `</s>` counts as one more word: an utterance ends after any word
    lines = [
        "\\data\\",
        f"ngram 1={len(words) + 3}",
        "ngram 2=1",
        "",
        "\\1-grams:",
        f"{UNK_LOG10:.4f}\t<unk>",
        "-99\t<s>\t0",
        f"{math.log10(1.0 / total):.4f}\t</s>",
    ]
    lines += [f"{math.log10(wt / total) - _tie_breaker(w):.6f}\t{w}" for w, wt in zip(words, weights, strict=True)]
    # KenLM reads only models of order 2 or more: one bigram (an empty utterance, as likely as any word) makes it
    # one; every other pair backs off to the unigrams at no cost.
    lines += ["", "\\2-grams:", f"{math.log10(1.0 / total):.4f}\t<s> </s>", "", "\\end\\", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def make_lm(lang: str, alphabet: Iterable[str], out_dir: Path, dict_dir: Path = Path("/usr/share/dict")) -> Path:
    """Write `<out_dir>/<lang>/lm.arpa` and `lexicon.txt` from the language's word list (as the demo corpus
    cleans it), keeping the words `alphabet` spells. Returns the language's folder."""
    from chorus_training.corpus import language_words

    words = spellable(language_words(lang, dict_dir), alphabet)
    folder = out_dir / lang
    write_lexicon(words, folder / "lexicon.txt")
    write_unigram_arpa(words, folder / "lm.arpa")
    return folder


def demo_alphabet(lang: str) -> list[str]:
    """The characters the bundled demo model writes for `lang` (the backbone's head for English, else the
    language's adapter): single-character tokens other than the word delimiter."""
    import json

    from chorus_server.demo_model import DEMO_DIR
    from chorus_training.demo import adapter_path

    path = adapter_path(lang, DEMO_DIR)
    if path is None:
        vocab = list(json.loads((DEMO_DIR / "backbone" / "vocab.json").read_text(encoding="utf-8")))
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            vocab = json.loads(f.metadata()["vocab"])
    return [t for t in vocab if len(t) == 1 and t != "|"]
