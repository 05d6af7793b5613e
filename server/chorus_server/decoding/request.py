"""A request's decoding choices, from its form fields or session: `decoder` (greedy or beam), OpenAI's
`include[]=logprobs` and `prompt` (its words become hotwords, spelled in the adapter's vocabulary)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import replace

from chorus_server.decoding.options import Decoder, DecodeRequest
from chorus_server.engine.adapters import Vocabulary
from chorus_server.errors import ApiError
from chorus_store.base import AdapterRecord

DECODERS: tuple[Decoder, ...] = ("greedy", "beam")
INCLUDES = ("logprobs",)
MAX_PROMPT_CHARS = 8192  # read at most this much of a prompt (OpenAI's prompt is ~224 tokens)
MAX_HOTWORD_CHARS = 64
MAX_PROMPT_WORDS = 1000


def check_decoder(decoder: str | None, param: str = "decoder") -> Decoder | None:
    """`greedy`, `beam` or unset (None: the adapter version's default); anything else is a 400 naming `param`."""
    if decoder is None or decoder == "":
        return None
    if decoder not in DECODERS:
        raise ApiError(400, f"{param} must be 'greedy' or 'beam', got {decoder[:20]!r}", "invalid_decoder", param)
    return "greedy" if decoder == "greedy" else "beam"


def check_include(include: Iterable[str] | None, response_format: str) -> bool:
    """Whether `include[]` asks for token log-probabilities; as OpenAI, only with response_format json."""
    wanted = set(include or ())
    unknown = sorted(wanted - set(INCLUDES))
    if unknown:
        message = f"include[] supports only 'logprobs', got {unknown[0][:20]!r}"
        raise ApiError(400, message, "invalid_include", "include[]")
    if wanted and response_format != "json":
        raise ApiError(
            400,
            f"include[]=logprobs works only with response_format json, not {response_format!r}",
            "invalid_include",
            "include[]",
        )
    return bool(wanted)


def check_beam_possible(decoder: Decoder | None, record: AdapterRecord, param: str = "decoder") -> None:
    """decoder=beam needs a version stored with a language model or lexicon; say so, and how to add one."""
    if decoder == "beam" and record.lm is None and record.lexicon is None:
        raise ApiError(
            400,
            f"adapter {record.ref} has no language model or lexicon, so decoder=beam cannot run; use decoder=greedy, "
            "or upload a version with one (chorus adapters upload --lm FILE --lexicon FILE)",
            "beam_unavailable",
            param,
        )


def hotwords(prompt: str | None, symbols: frozenset[str], limit: int) -> tuple[str, ...]:
    """The prompt's words the adapter can spell, at most `limit`, each once, in order. A word is NFC-normalised,
    lowercased when the vocabulary has no capitals, stripped of surrounding punctuation; a word that still has a
    character outside `symbols` (or is longer than MAX_HOTWORD_CHARS) is left out, since no transcript could
    contain it."""
    if not prompt or limit <= 0 or not symbols:
        return ()
    lower = not any(c != c.lower() for c in symbols)
    words: list[str] = []
    for raw in unicodedata.normalize("NFC", prompt[:MAX_PROMPT_CHARS]).split():
        word = _strip_punctuation(raw.lower() if lower else raw, symbols)
        if word and len(word) <= MAX_HOTWORD_CHARS and all(c in symbols for c in word) and word not in words:
            words.append(word)
            if len(words) == limit:
                break
    return tuple(words)


def _strip_punctuation(word: str, symbols: frozenset[str]) -> str:
    """`"hello,"` -> `hello`; punctuation the vocabulary spells (an apostrophe, say) is kept."""
    start, stop = 0, len(word)
    while start < stop and word[start] not in symbols and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while stop > start and word[stop - 1] not in symbols and unicodedata.category(word[stop - 1]).startswith("P"):
        stop -= 1
    return word[start:stop]


def from_prompt(decoder: Decoder | None, prompt: str | None, token_logprobs: bool) -> DecodeRequest:
    """A request's choices before its adapter is known (model=auto picks it later): the prompt's words as written,
    at most MAX_PROMPT_WORDS; `for_adapter` spells them in the adapter's vocabulary."""
    words = prompt[:MAX_PROMPT_CHARS].split()[:MAX_PROMPT_WORDS] if prompt else []
    return DecodeRequest(decoder, tuple(words), token_logprobs)


def for_adapter(request: DecodeRequest, vocab: Vocabulary, max_hotwords: int) -> DecodeRequest:
    """`request` with its hotwords spelled in `vocab` (`hotwords`), at most `max_hotwords` of them."""
    if not request.hotwords:
        return request
    return replace(request, hotwords=hotwords(" ".join(request.hotwords), spelling_symbols(vocab), max_hotwords))


def spelling_symbols(vocab: Vocabulary) -> frozenset[str]:
    """The characters a lexicon word or a hotword may use: the vocabulary's one-character tokens, without the
    blank and the word delimiter."""
    skip = {vocab.blank_id, vocab.word_delimiter_id}
    return frozenset(t for i, t in enumerate(vocab.tokens) if len(t) == 1 and i not in skip and not t.isspace())
