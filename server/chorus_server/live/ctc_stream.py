"""Greedy CTC decoding one piece of logits at a time, with text that never changes once sent.

The greedy path collapses runs of identical frame ids and drops blanks; a token is emitted at the first frame of
its run. So the tokens emitted by any prefix of the frames are a prefix of the tokens of all frames, and text
built from them only grows. Word delimiters are held back until a following character arrives (a trailing or
repeated delimiter adds no space), which makes the text exactly `ctc_greedy_decode(all frames).text`.
"""

from __future__ import annotations

import torch

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import is_special


class IncrementalCTC:
    """`push(logits)` -> the text those frames add; the sum of all pushes is the transcript of every frame."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.text = ""  # everything returned so far
        self.frames = 0
        self._last_id: int | None = None  # the id of the last frame: a run may continue into the next piece
        self._space_pending = False

    def push(self, logits: torch.Tensor) -> str:
        """logits: (T, V) for the frames that follow the ones pushed before -> the new text (maybe "")."""
        if logits.dim() != 2 or logits.shape[1] != len(self.vocab):
            raise ValueError(f"expected logits (T, {len(self.vocab)}), got shape {tuple(logits.shape)}")
        # (T,) ids chosen exactly as ctc_greedy_decode chooses them (ties after log-softmax included)
        ids: list[int] = torch.log_softmax(logits.float(), dim=-1).max(dim=-1).indices.tolist()
        self.frames += len(ids)
        added: list[str] = []
        for token_id in ids:
            if token_id == self._last_id:
                continue
            self._last_id = token_id
            if token_id == self.vocab.blank_id:
                continue
            if token_id == self.vocab.word_delimiter_id:
                self._space_pending = True
                continue
            token = self.vocab.tokens[token_id]
            if is_special(token):
                continue
            if self._space_pending and (self.text or added):
                added.append(" ")
            self._space_pending = False
            added.append(token)
        delta = "".join(added)
        self.text += delta
        return delta
