"""`chorus dev make-lm`'s files: a lexicon and a unigram ARPA model KenLM reads, and the bundled demo LMs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from chorus_server.decoding.options import LanguageModelFiles
from chorus_server.decoding.resources import build, demo_language_model, lexicon_words, read_lines
from chorus_server.engine.adapters import Vocabulary
from chorus_training.lm import demo_alphabet, make_lm, spellable, write_lexicon, write_unigram_arpa

VOCAB = Vocabulary(("<pad>", "|", *"abcdefghijklmnopqrstuvwxyz"), blank_id=0, word_delimiter_id=1)


def test_spellable_keeps_words_of_the_alphabet_only() -> None:
    assert spellable(["café", "cafe", "zoo", "", "zoo"], "acefoz") == ["cafe", "zoo"]


def test_the_arpa_model_loads_in_kenlm_with_every_word_equally_likely(tmp_path: Path) -> None:
    words = ["apple", "pear", "plum"]
    write_lexicon(words, tmp_path / "lexicon.txt")
    write_unigram_arpa(words, tmp_path / "lm.arpa")
    loaded = build(LanguageModelFiles(tmp_path / "lm.arpa", tmp_path / "lexicon.txt"), VOCAB)
    assert all(loaded.knows(w) for w in words) and not loaded.knows("apples") and not loaded.knows("<unk>")
    scores = {loaded.score(w) for w in words}
    # log10(1/4) (three words and the end of an utterance), each nudged by its own tiny tie-breaker
    assert len(scores) == 3 and all(abs(x - math.log10(0.25)) < 0.001 for x in scores)
    assert loaded.score("apples") is None
    # without a lexicon, the ARPA model's own unigrams are the words
    assert lexicon_words(LanguageModelFiles(tmp_path / "lm.arpa")) == words


def test_an_empty_word_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no words"):
        write_unigram_arpa([], tmp_path / "lm.arpa")


def test_make_lm_writes_the_layout_the_store_reads(tmp_path: Path) -> None:
    dict_dir = tmp_path / "dict"
    dict_dir.mkdir()
    (dict_dir / "italian").write_text("casa\nCasa\ncittà\nxyzzy's\nne\n", encoding="utf-8")
    folder = make_lm("it", list("acnsteiàz"), tmp_path / "lm", dict_dir)
    assert read_lines(folder / "lexicon.txt") == ["casa", "città", "ne"]
    assert demo_language_model("it", tmp_path / "lm") == LanguageModelFiles(folder / "lm.arpa", folder / "lexicon.txt")


@pytest.mark.parametrize("lang", ["en", "fr", "de", "es", "it"])
def test_the_bundled_demo_lms_spell_in_their_adapters_vocabulary(lang: str) -> None:
    files = demo_language_model(lang)
    assert files is not None and files.lexicon is not None
    words = read_lines(files.lexicon)
    assert len(words) > 50_000 and set("".join(words)) <= set(demo_alphabet(lang))
    header = read_lines(files.lm)[:3] if files.lm else []
    assert header[0] == "\\data\\" and header[1] == f"ngram 1={len(words) + 3}"
