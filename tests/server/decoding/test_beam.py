"""Beam decoding with a lexicon and KenLM model, hotwords, made-up words and the greedy path (`decoding/beam.py`),
on synthetic logits whose best path and near misses are set by hand."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from chorus_server.decoding import resources
from chorus_server.decoding.beam import decode
from chorus_server.decoding.options import BeamSettings, DecodeRequest, LanguageModelFiles
from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import ctc_greedy_decode
from chorus_training.lm import write_lexicon, write_unigram_arpa

TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz")
VOCAB = Vocabulary(TOKENS, blank_id=0, word_delimiter_id=4)
LEXICON = ["hello", "world", "picture", "cart", "the", "zebra", "quick"]
FRAME = 0.02


def frames(spec: list[dict[str, float]]) -> torch.Tensor:
    """One frame per dict of token -> logit (others at 0): the logits (T, V) of a hand-made utterance."""
    logits = torch.zeros(len(spec), len(TOKENS))
    for t, choices in enumerate(spec):
        for token, value in choices.items():
            logits[t, TOKENS.index(token)] = value
    return logits


def spoken(text: str, close: dict[int, tuple[str, float]] | None = None, strength: float = 12.0) -> list[dict]:
    """Frames that spell `text` clearly (each character two frames, a blank after it, "|" between words).
    `close`: {character position: (rival token, its logit)} makes a rival nearly as likely there."""
    out: list[dict[str, float]] = [{"<pad>": strength}]
    for i, char in enumerate(text):
        token = "|" if char == " " else char
        frame = {token: strength}
        if close and i in close:
            rival, value = close[i]
            frame[rival] = value
        out += [frame, dict(frame), {"<pad>": strength}]
    return [*out, {"<pad>": strength}]


@pytest.fixture
def files(tmp_path: Path) -> LanguageModelFiles:
    write_lexicon(LEXICON, tmp_path / "lexicon.txt")
    write_unigram_arpa(LEXICON, tmp_path / "lm.arpa")
    return LanguageModelFiles(tmp_path / "lm.arpa", tmp_path / "lexicon.txt", BeamSettings(word_score=-5.0))


def test_greedy_is_exactly_ctc_greedy_decode(files: LanguageModelFiles) -> None:
    torch.manual_seed(0)
    for length in (0, 1, 7, 150):
        logits = torch.randn(length, len(TOKENS)) * 4
        expected = ctc_greedy_decode(logits, VOCAB, FRAME)
        for request, lm in ((DecodeRequest(), None), (DecodeRequest("greedy"), files),
                            (DecodeRequest("greedy", ("hello",), True), files)):  # fmt: skip
            got = decode(logits, VOCAB, lm, request, FRAME)
            assert got == expected  # every field, floats bit for bit


def test_default_decoder_is_beam_with_a_language_model(files: LanguageModelFiles) -> None:
    # "helo": the second "l" is lost in the audio; the lexicon knows "hello"
    logits = frames(spoken("helo world", close={3: ("l", 11.5)}))
    assert ctc_greedy_decode(logits, VOCAB).text == "helo world"
    assert decode(logits, VOCAB, files, DecodeRequest(), FRAME).text == "hello world"


def test_a_made_up_word_keeps_its_spelling(files: LanguageModelFiles) -> None:
    logits = frames(spoken("the zorblat"))
    transcript = decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)
    assert transcript.text == "the zorblat"


def test_a_hotword_comes_out_as_written_in_the_prompt(files: LanguageModelFiles) -> None:
    # the audio leans to "picart" ("t" over "d" at the last letter); "Picard" is in no lexicon
    logits = frames(spoken("the picart", close={9: ("d", 11.0)}))
    assert ctc_greedy_decode(logits, VOCAB).text == "the picart"
    assert decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME).text in ("the picart", "the picture")
    with_prompt = decode(logits, VOCAB, files, DecodeRequest("beam", ("Captain Picard.",)), FRAME)
    assert with_prompt.text == "the Picard"
    # without a language model too (beam = greedy + hotwords), and a far-off hotword changes nothing
    assert decode(logits, VOCAB, None, DecodeRequest("beam", ("Picard",)), FRAME).text == "the Picard"
    assert decode(logits, VOCAB, files, DecodeRequest("beam", ("Zanzibar",)), FRAME).text != "the Zanzibar"


def test_beam_keeps_word_timestamps(files: LanguageModelFiles) -> None:
    logits = frames(spoken("helo world", close={3: ("l", 11.5)}))
    beam = decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)
    greedy = ctc_greedy_decode(logits, VOCAB, FRAME)
    assert [w.text for w in beam.words] == ["hello", "world"]
    # "world" is untouched: same frames as greedy's; "hello" spans the frames greedy's "helo" did
    assert (beam.words[1].start, beam.words[1].end) == (greedy.words[1].start, greedy.words[1].end)
    assert beam.words[0].start == pytest.approx(greedy.words[0].start)
    assert beam.words[0].end == pytest.approx(greedy.words[0].end)
    assert all(a.end <= b.start for a, b in zip(beam.chars, beam.chars[1:], strict=False))
    assert "".join(c.text for c in beam.chars) == "helloworld"


def test_confidences_are_probabilities_higher_where_the_audio_is_clear(files: LanguageModelFiles) -> None:
    clear = decode(frames(spoken("the cart", strength=12.0)), VOCAB, files, DecodeRequest("beam"), FRAME)
    unsure = decode(frames(spoken("the cart", strength=3.0)), VOCAB, files, DecodeRequest("beam"), FRAME)
    for transcript in (clear, unsure):
        assert transcript.text == "the cart"
        assert all(0.0 < w.probability <= 1.0 for w in transcript.words)
        assert transcript.avg_logprob < 0.0
    assert all(c.probability > u.probability for c, u in zip(clear.words, unsure.words, strict=True))
    assert clear.avg_logprob > unsure.avg_logprob


def test_the_trie_is_built_once_for_concurrent_requests(files: LanguageModelFiles, monkeypatch) -> None:
    cache = resources.LoadedCache()
    monkeypatch.setattr("chorus_server.decoding.beam.LOADED", cache)
    logits = frames(spoken("hello world"))
    texts: list[str] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        texts.append(decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME).text)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert texts == ["hello world"] * 4
    assert cache.builds == 1
    decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)
    assert cache.builds == 1


def test_without_flashlight_the_default_falls_back_to_greedy_and_beam_by_name_says_why(
    files: LanguageModelFiles, monkeypatch
) -> None:
    def missing() -> None:
        raise resources.DecoderUnavailable("beam decoding needs flashlight-text")

    monkeypatch.setattr(resources, "_flashlight", missing)
    monkeypatch.setattr("chorus_server.decoding.beam.LOADED", resources.LoadedCache())
    logits = frames(spoken("helo world", close={3: ("l", 11.5)}))
    assert decode(logits, VOCAB, files, DecodeRequest(), FRAME) == ctc_greedy_decode(logits, VOCAB, FRAME)
    with pytest.raises(resources.DecoderUnavailable, match="flashlight-text"):
        decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)


def test_hotwords_keep_a_names_case_but_not_a_sentence_starts() -> None:
    from chorus_server.decoding.beam import hotwords_of

    lexicon = frozenset({"the", "meeting", "with", "captain", "joined", "end"})
    words = hotwords_of(
        ("The meeting with Captain Picard. Riker joined; the end, to me", "McKay"), VOCAB, lexicon.__contains__
    )
    # "The" opens a sentence and is a lexicon word: plain case; "Riker" opens one too, but is a name
    assert [w.display for w in words] == ["the", "meeting", "with", "Captain", "Picard", "Riker", "joined", "end",
                                          "McKay"]  # fmt: skip
    assert words[4].spelling == [TOKENS.index(c) for c in "picard"]
    assert hotwords_of(("Zoë",), VOCAB) == []  # not spelled by the vocabulary


def test_a_hotword_inside_a_run_of_merged_words_is_found(files: LanguageModelFiles) -> None:
    # no delimiter between "the" and "picart": greedy writes one word
    logits = frames(spoken("thepicart", close={8: ("d", 11.0)}))
    assert ctc_greedy_decode(logits, VOCAB).text == "thepicart"
    assert decode(logits, VOCAB, files, DecodeRequest("beam", ("Picard",)), FRAME).text == "the Picard"
    # a piece left over that is no lexicon word keeps the run whole: "thepi" + "cart" is not spotted
    assert decode(logits, VOCAB, files, DecodeRequest("beam", ("cart",)), FRAME).text == "thepicart"


def test_the_search_in_steps_finds_what_one_call_finds(files: LanguageModelFiles, monkeypatch) -> None:
    # flashlight is called in steps (the GIL is free between them); the step size must not change the result
    logits = frames(spoken("helo world the quick zebra", close={3: ("l", 11.5)}))
    whole = decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)
    monkeypatch.setattr("chorus_server.decoding.beam.STEP_FRAMES", 7)
    stepped = decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)
    assert stepped == whole and whole.text == "hello world the quick zebra"


def test_loading_a_kenlm_model_prints_nothing_to_standard_error(files: LanguageModelFiles, capfd) -> None:
    """KenLM's C++ loader writes its advice and an ARPA file's progress bar to file descriptor 2, which would land
    between the server's log lines; none of it may reach the console."""
    capfd.readouterr()
    loaded = resources.build(files, VOCAB)
    assert loaded.knows("zebra") and not loaded.knows("zebras")
    assert capfd.readouterr().err == ""


def test_lines_written_to_standard_error_while_kenlm_loads_are_kept(tmp_path: Path, capfd) -> None:
    """Standard error is the process's, not KenLM's: another thread's log line written during a load arrives."""
    path = tmp_path / "lm.arpa"
    capfd.readouterr()
    with resources._without_kenlm_messages(path):
        os.write(2, b"Loading the LM will be faster if you build a binary file.\n")
        os.write(2, f"Reading {path}\n".encode())
        os.write(2, b"INFO chorus_server.app: another thread's line\n")
        os.write(
            2, b"----5---10---15---20---25---30---35---40---45---50---55---60---65---70---75---80---85---90---95--100\n"
        )
        os.write(2, b"*" * 100 + b"\n")
        os.write(2, b"Reading another file\n")
    assert capfd.readouterr().err == "INFO chorus_server.app: another thread's line\nReading another file\n"


def language_models(tmp_path: Path, count: int) -> list[LanguageModelFiles]:
    out = []
    for n in range(count):
        folder = tmp_path / f"lm{n}"
        folder.mkdir()
        write_lexicon(LEXICON, folder / "lexicon.txt")
        write_unigram_arpa(LEXICON, folder / "lm.arpa")
        out.append(LanguageModelFiles(folder / "lm.arpa", folder / "lexicon.txt", BeamSettings(word_score=-5.0)))
    return out


def test_decoders_kept_stay_within_the_memory_budget(tmp_path: Path, monkeypatch) -> None:
    """Tenants' language models cannot grow the server's memory without bound: builds beyond the budget push the
    least recently used out (and that one is built again when asked for)."""
    first, second, third = language_models(tmp_path, 3)
    one = resources.estimated_bytes(first, len(LEXICON))
    assert one == resources.BYTES_PER_WORD * len(LEXICON) + first.lm.stat().st_size  # type: ignore[union-attr]
    cache = resources.LoadedCache(budget_bytes=2 * one + one // 2)
    monkeypatch.setattr("chorus_server.decoding.beam.LOADED", cache)
    logits = frames(spoken("hello world"))
    for files in (first, second, third):
        assert decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME).text == "hello world"
    assert cache.builds == 3 and cache.kept_bytes() == 2 * one <= cache.budget_bytes
    decode(logits, VOCAB, third, DecodeRequest("beam"), FRAME)
    assert cache.builds == 3  # kept
    decode(logits, VOCAB, first, DecodeRequest("beam"), FRAME)
    assert cache.builds == 4  # pushed out by the third, built again


def test_a_decoder_larger_than_the_whole_budget_is_not_built(files: LanguageModelFiles, monkeypatch) -> None:
    cache = resources.LoadedCache(budget_bytes=4096)
    monkeypatch.setattr("chorus_server.decoding.beam.LOADED", cache)
    logits = frames(spoken("hello world"))
    with pytest.raises(resources.DecoderUnavailable, match="CHORUS_CACHE__DECODER_BUDGET_MB"):
        decode(logits, VOCAB, files, DecodeRequest("beam"), FRAME)
    greedy = decode(logits, VOCAB, files, DecodeRequest(), FRAME)  # the default falls back to greedy decoding
    assert greedy.text == ctc_greedy_decode(logits, VOCAB, FRAME).text and cache.builds == 0
