"""Confidences in the responses: word probabilities, segment avg_logprob, and OpenAI's `include[]=logprobs`
tokens, from a real decode of hand-made logits (clear frames give higher numbers than doubtful ones)."""

from __future__ import annotations

import math

import torch

from chorus_server import formats
from chorus_server.engine.decode import ctc_greedy_decode
from tests.server.decoding.test_beam import VOCAB, frames, spoken


def transcript(strength: float, close: dict[int, tuple[str, float]] | None = None):
    return ctc_greedy_decode(frames(spoken("the cart", close, strength)), VOCAB, 0.02)


def test_logprobs_are_openai_shaped_and_join_to_the_text() -> None:
    t = transcript(12.0)
    tokens = formats.token_logprobs(t)
    assert "".join(x["token"] for x in tokens) == t.text == "the cart"
    assert [x["token"] for x in tokens][2:5] == ["e", " c", "a"]
    for x in tokens:
        assert set(x) == {"token", "logprob", "bytes"}
        assert bytes(x["bytes"]).decode() == x["token"]
        assert -1.0 < x["logprob"] <= 0.0  # clear audio: each character near certain


def test_confidences_fall_where_the_audio_is_doubtful() -> None:
    clear, doubtful = transcript(12.0), transcript(12.0, close={4: ("k", 11.8)})  # "c" vs "k" in "cart"
    assert clear.text == doubtful.text == "the cart"
    words_clear, words_doubtful = formats.words_json(clear), formats.words_json(doubtful)
    assert 0.0 < words_doubtful[1]["probability"] < words_clear[1]["probability"] <= 1.0
    assert words_doubtful[0]["probability"] == words_clear[0]["probability"]  # "the" is as clear in both
    c_clear = formats.token_logprobs(clear)[3]
    c_doubtful = formats.token_logprobs(doubtful)[3]
    assert c_clear["token"] == c_doubtful["token"] == " c"
    assert math.log(0.4) < c_doubtful["logprob"] < math.log(0.6) < c_clear["logprob"]  # c vs k: about even
    body = formats.verbose_json(doubtful, VOCAB, "en", 1.0, {"word", "segment"}, logprobs=True)
    segment = body["segments"][0]
    assert segment["avg_logprob"] < formats.verbose_json(clear, VOCAB, "en", 1.0, set())["segments"][0]["avg_logprob"]
    assert body["words"][1]["probability"] == words_doubtful[1]["probability"]
    assert body["logprobs"] == formats.token_logprobs(doubtful)
    assert "logprobs" not in formats.verbose_json(doubtful, VOCAB, "en", 1.0, set())


def test_no_words_no_tokens() -> None:
    empty = ctc_greedy_decode(torch.zeros(0, len(VOCAB)), VOCAB)
    assert formats.token_logprobs(empty) == []
