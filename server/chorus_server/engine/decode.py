"""Greedy CTC decoding with character and word timestamps.

Frame `t` of the logits covers audio from `t * frame_seconds` (20 ms for the standard front end). A token
emitted over frames `[a, b]` (its run of identical argmax ids) spans `[a, b + 1) * frame_seconds`.
Tokens that look like `<...>` (HF special tokens: `<s>`, `</s>`, `<unk>`, `<pad>`) never reach the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from chorus_server.engine.adapters import Vocabulary


@dataclass(frozen=True)
class TimedText:
    text: str
    start: float
    end: float
    logprob: float  # mean log-probability of the frames that emitted it

    @property
    def probability(self) -> float:
        """exp(logprob): the geometric mean of the emitting frames' probabilities, in (0, 1]."""
        return math.exp(self.logprob)


@dataclass(frozen=True)
class Transcript:
    text: str
    words: list[TimedText] = field(default_factory=list)
    chars: list[TimedText] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0  # mean over all frames of the winning log-probability
    frames: int = 0


def is_special(token: str) -> bool:
    return len(token) > 2 and token.startswith("<") and token.endswith(">")


def ctc_greedy_decode(logits: torch.Tensor, vocab: Vocabulary, frame_seconds: float = 0.02) -> Transcript:
    """logits: (T, V) for one utterance -> transcript with timestamps."""
    if logits.dim() != 2 or logits.shape[1] != len(vocab):
        raise ValueError(f"expected logits (T, {len(vocab)}), got shape {tuple(logits.shape)}")
    frames = logits.shape[0]
    if frames == 0:
        return Transcript(text="")
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best, ids = logprobs.max(dim=-1)  # (T,), (T,)
    best_list, id_list = best.tolist(), ids.tolist()

    chars: list[TimedText] = []
    emitted: list[int] = []
    t = 0
    while t < frames:
        run_end = t
        while run_end + 1 < frames and id_list[run_end + 1] == id_list[t]:
            run_end += 1
        token_id = id_list[t]
        if token_id != vocab.blank_id:
            token = vocab.tokens[token_id]
            emitted.append(token_id)
            if not is_special(token):
                mean_lp = sum(best_list[t : run_end + 1]) / (run_end + 1 - t)
                text = " " if token_id == vocab.word_delimiter_id else token
                chars.append(TimedText(text, t * frame_seconds, (run_end + 1) * frame_seconds, mean_lp))
        t = run_end + 1

    words = _group_words(chars)
    return Transcript(
        text=" ".join(w.text for w in words),
        words=words,
        chars=[c for c in chars if c.text != " "],
        token_ids=emitted,
        avg_logprob=sum(best_list) / frames,
        frames=frames,
    )


def _group_words(chars: list[TimedText]) -> list[TimedText]:
    """Characters separated by delimiters -> words (consecutive or edge delimiters produce no empty words)."""
    words: list[TimedText] = []
    current: list[TimedText] = []
    for char in [*chars, TimedText(" ", 0.0, 0.0, 0.0)]:
        if char.text != " ":
            current.append(char)
            continue
        if current:
            words.append(
                TimedText(
                    "".join(c.text for c in current),
                    current[0].start,
                    current[-1].end,
                    sum(c.logprob for c in current) / len(current),
                )
            )
            current = []
    return words
