"""What a decode needs besides the logits: the adapter version's language-model files and beam settings
(`LanguageModelFiles`, stored with the version) and the request's choices (`DecodeRequest`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Decoder = Literal["greedy", "beam"]


@dataclass(frozen=True)
class BeamSettings:
    """Beam-search settings stored with an adapter version (sane defaults; a version may override them)."""

    beam_width: int = 32
    lm_weight: float = 0.5  # weight of the LM's log10 score added to the acoustic log-probability
    word_score: float = -7.0  # added per emitted word (negative: fewer, longer words; tuned on the demo valid split)
    unk_score: float = -4.5  # score of a word outside the lexicon (lexicon decoding)
    unk_char_score: float = -1.3  # and per character of it: a long made-up word needs more acoustic evidence
    hotword_score: float = 8.0  # bonus for a word from the request's prompt (tuned on the demo valid split)
    beam_threshold: float = 12.0  # hypotheses scoring this far below the best are dropped
    beam_tokens: int = 8  # tokens tried per frame, the likeliest first (0: all of the vocabulary)


@dataclass(frozen=True)
class LanguageModelFiles:
    """An adapter version's decoding resources, on local disk (a cache copy when the store is remote).
    `lm`: a KenLM model (ARPA text or KenLM binary); `lexicon`: one word per line, spelled in the adapter's
    vocabulary. Either may be absent; with neither, only greedy decoding is available. `fetch_again` asks the store
    for them again (a remote store's local copies are evicted, least recently used first)."""

    lm: Path | None = None
    lexicon: Path | None = None
    settings: BeamSettings = field(default_factory=BeamSettings)
    fetch_again: Callable[[], LanguageModelFiles] | None = field(default=None, compare=False, repr=False)

    @property
    def default_decoder(self) -> Decoder:
        return "beam" if self.lm is not None or self.lexicon is not None else "greedy"

    def present(self) -> LanguageModelFiles:
        """The files as the store has them now: a remote store's copies marked used, or fetched again if evicted
        (without `fetch_again`, these paths as they are)."""
        return self.fetch_again() if self.fetch_again is not None else self


@dataclass(frozen=True)
class DecodeRequest:
    """A request's decoding choices. `decoder=None`: the adapter version's default (beam where it has an LM).
    `hotwords`: words to boost, from OpenAI's `prompt`. `token_logprobs`: `include[]=logprobs`."""

    decoder: Decoder | None = None
    hotwords: tuple[str, ...] = ()
    token_logprobs: bool = False
