"""Loaded decoding resources: an adapter version's KenLM model and lexicon trie, built once per (files, vocabulary)
and shared by every request that decodes with them (flashlight-text's KenLM and Trie are read-only once built;
each decode makes its own small decoder object around them).

Building costs a fraction of a second to a few seconds (a 325,000-word lexicon with its KenLM model: about 1.8 s
on a 2-core machine), so it happens once, under a per-key lock. What is kept is bounded twice, least recently used
out first: at most `MAX_LOADED` builds, and at most the memory budget (CHORUS_CACHE__DECODER_BUDGET_MB) by each
build's estimated size, `BYTES_PER_WORD` per lexicon word plus the model file; a build that alone would exceed the
budget is not made (`DecoderUnavailable`), so tenants' uploads cannot grow the server's memory without bound.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chorus_server.decoding.options import LanguageModelFiles
from chorus_server.engine.adapters import Vocabulary
from chorus_store.errors import StoreError

logger = logging.getLogger(__name__)

MAX_LOADED = 8  # decoders (LM + trie) kept in memory; an adapter version's files are reloaded after eviction
# Resident memory per lexicon word of a build (flashlight's trie and dictionary, KenLM's vocabulary), measured on
# the demo LMs: 0.65-1.24 KB per word (docs/reliability.md); the model file's size is added for KenLM's tables.
BYTES_PER_WORD = 1280
DEFAULT_BUDGET_BYTES = 2048 * 1024 * 1024
DEMO_LM_DIR = Path(__file__).resolve().parent.parent / "demo_model" / "lm"
UNK_WORD = "<unk>"


class DecoderUnavailable(RuntimeError):
    """Beam decoding was asked for but cannot run (flashlight-text missing, or unreadable LM files)."""


@dataclass(frozen=True)
class LoadedLM:
    """A KenLM model and the lexicon's trie over a vocabulary. Words are looked up in flashlight's own dictionary
    (no Python copy of a lexicon that may hold 300,000 words)."""

    lm: Any  # flashlight KenLM or ZeroLM
    word_dict: Any  # flashlight Dictionary: word -> LM index (index 0: `<unk>`, every word outside the lexicon)
    trie: Any
    unk_index: int
    sil_id: int
    blank_id: int
    cost: int = 0  # estimated resident bytes (`estimated_bytes`)

    def knows(self, word: str) -> bool:
        """Whether `word` (as spelled in the vocabulary) is in the lexicon."""
        return self.word_dict.get_index(word) != self.unk_index

    def score(self, word: str) -> float | None:
        """A lexicon word's LM score at the start of an utterance (what the trie was smeared with), else None."""
        index = self.word_dict.get_index(word)
        return None if index == self.unk_index else float(self.lm.score(self.lm.start(False), index)[1])


def read_lines(path: Path) -> list[str]:
    """A text file's non-empty lines, gzip-compressed or not (detected from the content, as KenLM does)."""
    with path.open("rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if compressed else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def lexicon_words(files: LanguageModelFiles) -> list[str]:
    """The lexicon's words: one per line (a line's first field: `word` or a `word spelling…` lexicon line). Without
    a lexicon, the ARPA model's unigrams (a KenLM binary needs a lexicon)."""
    if files.lexicon is not None:
        return [line.split()[0] for line in read_lines(files.lexicon)]
    if files.lm is None:
        return []
    lines = read_lines(files.lm)  # raises UnicodeDecodeError for a KenLM binary
    words, inside = [], False
    for line in lines:
        if line.startswith("\\"):
            inside = line == "\\1-grams:"
            continue
        if inside:
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) >= 2 and fields[1] not in ("<s>", "</s>", UNK_WORD):
                words.append(fields[1])
    return words


def _flashlight() -> tuple[Any, Any]:
    try:
        from flashlight.lib.text import decoder, dictionary
    except ImportError as error:  # an optional dependency: `pip install chorus-asr[lm]`
        raise DecoderUnavailable(
            "beam decoding needs flashlight-text; install it with `pip install 'chorus-asr[lm]'`"
        ) from error
    return decoder, dictionary


def _kenlm() -> Any:
    from flashlight.lib.text.decoder.kenlm import KenLM

    return KenLM


def estimated_bytes(files: LanguageModelFiles, words: int) -> int:
    """Resident bytes of a build over `words` lexicon words with `files`' model."""
    return BYTES_PER_WORD * words + (files.lm.stat().st_size if files.lm is not None else 0)


def build(files: LanguageModelFiles, vocab: Vocabulary, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> LoadedLM:
    """Load the LM and build the lexicon trie for `vocab` (words with a character it lacks are left out); refused
    before the expensive part when its estimated size is above `budget_bytes`."""
    fl, fl_dict = _flashlight()
    if vocab.word_delimiter_id is None:
        raise DecoderUnavailable("beam decoding needs a vocabulary with a word delimiter")
    index = {token: i for i, token in enumerate(vocab.tokens)}
    try:
        files = files.present()  # a remote store's copy may have been evicted since the adapter was loaded
    except StoreError as error:
        raise DecoderUnavailable(f"cannot fetch the language model files: {error}") from error
    try:
        listed = lexicon_words(files)
    except (OSError, UnicodeDecodeError) as error:
        raise DecoderUnavailable(f"cannot read the lexicon: {error}") from error
    spellable = set(index)
    words = sorted({w for w in listed if set(w) <= spellable})
    if len(words) < len(set(listed)):
        logger.info("lexicon: %d of %d words use characters outside the vocabulary", len(set(listed)) - len(words),
                    len(set(listed)))  # fmt: skip
    cost = estimated_bytes(files, len(words))
    if cost > budget_bytes:
        raise DecoderUnavailable(
            f"this version's language model and lexicon ({len(words)} words) need about {cost >> 20} MiB, more than "
            f"the server keeps for beam search ({budget_bytes >> 20} MiB: CHORUS_CACHE__DECODER_BUDGET_MB); decode "
            "with decoder=greedy, or upload a smaller lexicon"
        )
    started = time.perf_counter()
    word_dict = fl_dict.Dictionary([UNK_WORD, *words])  # word i of `words` has index i + 1
    word_dict.set_default_index(0)
    try:
        if files.lm is not None:
            with _without_kenlm_messages(files.lm):
                lm = _kenlm()(str(files.lm), word_dict)
        else:
            lm = fl.ZeroLM()
    except RuntimeError as error:
        raise DecoderUnavailable(f"cannot load the language model: {error}") from error
    trie = fl.Trie(len(vocab.tokens), vocab.word_delimiter_id)
    start, score, insert, spell = lm.start(False), lm.score, trie.insert, index.__getitem__
    for word_index, word in enumerate(words, start=1):
        insert(list(map(spell, word)), word_index, score(start, word_index)[1])
    trie.smear(fl.SmearingMode.MAX)
    logger.info(
        "beam search ready: %d lexicon words%s, built in %.1f s",
        len(words), f", KenLM model {files.lm}" if files.lm is not None else "", time.perf_counter() - started,
    )  # fmt: skip
    return LoadedLM(lm, word_dict, trie, 0, vocab.word_delimiter_id, vocab.blank_id, cost)


# What KenLM writes to standard error while it loads a model (an ARPA file's advice, name and progress bar); no
# log format expects it, so it is dropped. Anything else written there meanwhile is kept.
KENLM_MESSAGE = r"^(Loading the LM will be faster if you build a binary file\.|Reading {path}|-[-0-9]*100|\*+)$"
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_kenlm_messages(path: Path) -> Iterator[None]:
    """Standard error (the file descriptor, where KenLM's C++ writes) goes to a scratch file while KenLM loads
    `path`; then every line in it that is not KenLM's is written to the real standard error (another thread's log
    line written meanwhile arrives late, not lost)."""
    kenlms = re.compile(KENLM_MESSAGE.format(path=re.escape(str(path))))
    with _STDERR_LOCK:  # one redirection at a time: a second would save the first's scratch file as "the real one"
        try:
            saved = os.dup(2)
        except OSError:  # no standard error at all: nothing to keep clean
            saved = None
        if saved is None:
            yield
            return
        with tempfile.TemporaryFile() as scratch:
            sys.stderr.flush()
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                scratch.seek(0)
                lines = scratch.read().splitlines(keepends=True)
                kept = [line for line in lines if not kenlms.match(line.decode("utf-8", "replace").rstrip("\r\n"))]
                if kept:
                    os.write(2, b"".join(kept))


class LoadedCache:
    """(files, vocabulary) -> LoadedLM, built once (concurrent callers of one key wait for the one build); at most
    `capacity` builds and `budget_bytes` of them kept."""

    def __init__(self, capacity: int = MAX_LOADED, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.capacity, self.budget_bytes = capacity, budget_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, LoadedLM] = OrderedDict()
        self._building: dict[tuple, threading.Lock] = {}
        self.builds = 0

    def get(self, files: LanguageModelFiles, vocab: Vocabulary) -> LoadedLM:
        key = (files.lm, files.lexicon, vocab.tokens, vocab.blank_id, vocab.word_delimiter_id)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._entries:  # built by the caller this one waited for
                    return self._entries[key]
            try:
                loaded = build(files, vocab, self.budget_bytes)
            except BaseException:
                with self._lock:
                    self._building.pop(key, None)  # the next caller tries again
                raise
            with self._lock:
                self.builds += 1
                self._entries[key] = loaded
                self._building.pop(key, None)  # with the entry in place: no caller can start a second build
                while len(self._entries) > self.capacity or (
                    len(self._entries) > 1 and self.kept_bytes() > self.budget_bytes
                ):
                    self._entries.popitem(last=False)
            return loaded

    def kept_bytes(self) -> int:
        """Estimated bytes of the builds kept."""
        return sum(entry.cost for entry in self._entries.values())


LOADED = LoadedCache()


def demo_language_model(lang: str, root: Path = DEMO_LM_DIR) -> LanguageModelFiles | None:
    """The bundled demo LM of `lang` (`demo_model/lm/<lang>/{lm.arpa,lexicon.txt}`), or None."""
    folder = root / lang
    if not (folder / "lm.arpa").is_file():
        return None
    lexicon = folder / "lexicon.txt"
    return LanguageModelFiles(folder / "lm.arpa", lexicon if lexicon.is_file() else None)
