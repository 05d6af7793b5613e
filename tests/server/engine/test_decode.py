"""Greedy CTC decoding against hand-built logits."""

from __future__ import annotations

import pytest
import torch

from chorus_server.engine import Vocabulary, ctc_greedy_decode

VOCAB = Vocabulary(("<pad>", "<s>", "</s>", "<unk>", "|", "a", "b", "c"), blank_id=0, word_delimiter_id=4)
ID = {t: i for i, t in enumerate(VOCAB.tokens)}


def one_hot(symbols: list[str]) -> torch.Tensor:
    """Frame-wise symbols -> logits (T, V) with a clear winner per frame."""
    logits = torch.full((len(symbols), len(VOCAB)), -10.0)
    for t, s in enumerate(symbols):
        logits[t, ID[s]] = 10.0
    return logits


@pytest.mark.parametrize(
    ("frames", "text"),
    [
        ([], ""),
        (["<pad>"] * 5, ""),
        (["a", "a", "a"], "a"),
        (["a", "<pad>", "a"], "aa"),  # a blank separates real repeats
        (["a", "a", "b", "b", "c"], "abc"),
        (["a", "|", "b"], "a b"),
        (["|", "|", "a", "|", "|", "|", "b", "|"], "a b"),  # edge and repeated delimiters
        (["a", "|", "<pad>", "|", "b"], "a b"),  # delimiter, blank, delimiter = one boundary
        (["<s>", "a", "</s>", "<unk>", "b"], "ab"),  # special tokens never reach the text
    ],
)
def test_text(frames, text):
    assert ctc_greedy_decode(one_hot(frames), VOCAB).text == text


def test_char_and_word_timestamps():
    frames = ["<pad>", "a", "a", "<pad>", "b", "|", "|", "<pad>", "c", "c", "c", "<pad>"]
    result = ctc_greedy_decode(one_hot(frames), VOCAB, frame_seconds=0.02)
    assert result.text == "ab c"
    assert [(c.text, round(c.start, 3), round(c.end, 3)) for c in result.chars] == [
        ("a", 0.02, 0.06),
        ("b", 0.08, 0.10),
        ("c", 0.16, 0.22),
    ]
    assert [(w.text, round(w.start, 3), round(w.end, 3)) for w in result.words] == [
        ("ab", 0.02, 0.10),
        ("c", 0.16, 0.22),
    ]
    assert result.frames == 12
    assert result.token_ids == [ID["a"], ID["b"], ID["|"], ID["c"]]


def test_logprobs_reflect_confidence():
    confident = ctc_greedy_decode(one_hot(["a", "b"]), VOCAB)
    unsure_logits = one_hot(["a", "b"])
    unsure_logits[:, ID["c"]] = 9.5
    unsure = ctc_greedy_decode(unsure_logits, VOCAB)
    assert confident.text == unsure.text == "ab"
    assert unsure.avg_logprob < confident.avg_logprob <= 0.0
    assert unsure.words[0].logprob < confident.words[0].logprob


def test_rejects_wrong_vocab_size():
    with pytest.raises(ValueError, match=r"expected logits \(T, 8\)"):
        ctc_greedy_decode(torch.zeros(3, 5), VOCAB)
