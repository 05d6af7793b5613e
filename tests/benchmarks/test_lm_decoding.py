"""benchmarks/lm_decoding.py's measurements on hand-made logits (the full run needs a synthesized corpus)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.lm_decoding import evaluate, hotwords, made_up_words
from chorus_server.decoding.options import BeamSettings, DecodeRequest, LanguageModelFiles
from chorus_server.decoding.resources import demo_language_model
from chorus_training.lm import write_lexicon, write_unigram_arpa
from tests.server.decoding.test_beam import LEXICON, TOKENS, frames, spoken


def test_evaluate_and_hotwords_measure_greedy_beam_and_prompts(tmp_path: Path) -> None:
    write_lexicon(LEXICON, tmp_path / "lexicon.txt")
    write_unigram_arpa(LEXICON, tmp_path / "lm.arpa")
    files = LanguageModelFiles(tmp_path / "lm.arpa", tmp_path / "lexicon.txt", BeamSettings(word_score=-5.0))
    utterances = [("hello world", {3: ("l", 11.5)}), ("the picture", {}), ("the quick zebra", {})]
    data = {
        "refs": [ref for ref, _ in utterances],
        "logits": [frames(spoken(ref.replace("hello", "helo"), close)) for ref, close in utterances],
        "tokens": list(TOKENS),
        "blank": 0,
        "delimiter": 4,
        "audio_seconds": 6.0,
    }
    greedy, beam = evaluate(data, files, DecodeRequest("greedy")), evaluate(data, files, DecodeRequest("beam"))
    assert greedy["cer"] > 0.0 and beam["cer"] == 0.0 and beam["decode_ms_per_audio_s"] > 0.0
    found = hotwords(data, files, distractors=2)
    assert found["hotword_found_with_prompt"] >= found["hotword_found_without_prompt"] == 1.0


def test_made_up_words_are_outside_the_demo_lexicon() -> None:
    lexicon = demo_language_model("en")
    assert lexicon is not None and lexicon.lexicon is not None
    known = set(lexicon.lexicon.read_text(encoding="utf-8").split())
    words = made_up_words("en", 50)
    assert len(set(words)) == 50 and not known & set(words)
