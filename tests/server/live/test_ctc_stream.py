"""Incremental CTC decoding: the pieces' text adds up to the one-shot decode, whatever the cut points."""

from __future__ import annotations

import pytest
import torch

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import ctc_greedy_decode
from chorus_server.live.ctc_stream import IncrementalCTC

VOCAB = Vocabulary(("<pad>", "<s>", "</s>", "<unk>", "|", "a", "b", "c", "'"), blank_id=0, word_delimiter_id=4)


def one_hot(ids: list[int]) -> torch.Tensor:
    logits = torch.full((len(ids), len(VOCAB)), -5.0)  # (T, V)
    logits[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)] = 5.0
    return logits


@pytest.mark.parametrize(
    "ids",
    [
        [],
        [0, 0, 0],
        [4, 4, 5, 5, 0, 5, 4, 6, 4, 4],  # leading and repeated delimiters, a doubled letter across a blank
        [5, 3, 5, 4, 1, 6],  # specials break runs but add no text
        [5, 5, 5, 5, 4],  # a run that spans every cut
    ],
)
def test_pieces_add_up_to_the_one_shot_decode(ids):
    logits = one_hot(ids)
    expected = ctc_greedy_decode(logits, VOCAB).text
    for cut in range(len(ids) + 1):
        decoder = IncrementalCTC(VOCAB)
        deltas = [decoder.push(logits[:cut]), decoder.push(logits[cut:])]
        assert "".join(deltas) == expected == decoder.text
        assert decoder.frames == len(ids)


def test_random_logits_frame_by_frame():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        logits = torch.randn(200, len(VOCAB), generator=gen) * 3  # (T, V)
        decoder = IncrementalCTC(VOCAB)
        text = "".join(decoder.push(logits[t : t + 7]) for t in range(0, 200, 7))
        assert text == ctc_greedy_decode(logits, VOCAB).text


def test_sent_text_never_changes():
    decoder = IncrementalCTC(VOCAB)
    assert decoder.push(one_hot([5, 4])) == "a"  # the space waits for the next word
    assert decoder.push(one_hot([4, 0])) == ""
    assert decoder.push(one_hot([6])) == " b"


def test_wrong_vocabulary_size_is_refused():
    with pytest.raises(ValueError, match=r"expected logits \(T, 9\), got shape \(3, 4\)"):
        IncrementalCTC(VOCAB).push(torch.zeros(3, 4))
