"""`decode`: one utterance's CTC logits -> its transcript, greedily or by beam search with the adapter version's
language model and lexicon, with the request's hotwords.

Beam decoding runs in two steps:

1. flashlight-text's lexicon beam search (C++, KenLM fused with `lm_weight`, `word_score` per word) finds the best
   sequence of lexicon words and its frame path;
2. each word of that path is weighed, over the same stretch of frames, against the alternatives a lexicon cannot
   offer: the greedy spelling of those frames (a word outside the lexicon, scored `unk_score` in place of the LM)
   and each hotword (scored `hotword_score` in place of the LM). Every alternative is scored by its best CTC
   alignment to those frames (`align.viterbi`), so a name from the prompt wins where the audio is close to it and a
   made-up word keeps its greedy spelling where no lexicon word comes close.

Word and character timestamps come from the chosen alignments, as greedy decoding's come from its path.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from chorus_server.decoding.align import Emitted, path_tokens, viterbi, word_runs
from chorus_server.decoding.options import BeamSettings, DecodeRequest, LanguageModelFiles
from chorus_server.decoding.resources import LOADED, DecoderUnavailable, LoadedLM, _flashlight
from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import TimedText, Transcript, ctc_greedy_decode

logger = logging.getLogger(__name__)

MAX_HOTWORDS = 64  # words of a prompt that are boosted; the rest are ignored (each costs an alignment per word)
STEP_FRAMES = 250  # frames (5 s) searched per call into flashlight, which holds the GIL for a call
MIN_HOTWORD_CHARS = 3  # shorter prompt words ("a", "to") are not boosted: a bonus would outweigh their acoustics
_PUNCTUATION = string.punctuation + "«»“”„‘’¿¡…"


@dataclass(frozen=True)
class Hotword:
    display: str  # as written in the prompt (its case kept)
    spelling: list[int]  # token ids in the vocabulary


@dataclass(frozen=True)
class _Choice:
    score: float
    words: list[list[Emitted]]
    displays: dict[int, str] = field(default_factory=dict)  # word index -> a hotword as written in the prompt


def decode(
    logits: torch.Tensor,
    vocab: Vocabulary,
    files: LanguageModelFiles | None,
    request: DecodeRequest,
    frame_seconds: float = 0.02,
) -> Transcript:
    """logits: (T, V) for one utterance. `request.decoder` None: beam where `files` has an LM or lexicon, else
    greedy. Greedy is exactly `ctc_greedy_decode` (the prompt is not used); beam without files is greedy decoding
    with the prompt's hotwords."""
    decoder = request.decoder or (files.default_decoder if files is not None else "greedy")
    if decoder == "greedy":
        return ctc_greedy_decode(logits, vocab, frame_seconds)
    if logits.dim() != 2 or logits.shape[1] != len(vocab):
        raise ValueError(f"expected logits (T, {len(vocab)}), got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0 or vocab.word_delimiter_id is None:
        return ctc_greedy_decode(logits, vocab, frame_seconds)
    has_lm = files is not None and (files.lm is not None or files.lexicon is not None)
    try:
        loaded = LOADED.get(files, vocab) if has_lm and files is not None else None
    except DecoderUnavailable:
        if request.decoder is not None:
            raise  # asked for by name: the caller says why it cannot be had
        logger.warning("beam decoding unavailable, decoding greedily", exc_info=True)
        return ctc_greedy_decode(logits, vocab, frame_seconds)
    settings = files.settings if files is not None else BeamSettings()
    hotwords = hotwords_of(request.hotwords, vocab, loaded.knows if loaded is not None else None)
    return _beam(logits, vocab, loaded, settings, hotwords, frame_seconds)


def hotwords_of(
    prompt: tuple[str, ...], vocab: Vocabulary, in_lexicon: Callable[[str], bool] | None = None
) -> list[Hotword]:
    """The prompt's words the vocabulary can spell, of MIN_HOTWORD_CHARS or more (lower-cased to match it, outer
    punctuation dropped). A word keeps its case from the prompt ("Picard" stays "Picard") unless it opens a
    sentence and the lexicon (`in_lexicon`) has it in lower case ("The meeting…" must not capitalise every "the")."""
    index = {token: i for i, token in enumerate(vocab.tokens)}
    out: dict[str, Hotword] = {}
    for text in prompt:
        sentence_start = True
        for raw in text.split():
            word = raw.strip(_PUNCTUATION)
            key = word.lower()
            if len(key) >= MIN_HOTWORD_CHARS and all(c in index for c in key) and len(out) < MAX_HOTWORDS:
                common = in_lexicon is not None and in_lexicon(key)
                display = key if sentence_start and word[1:] == key[1:] and common else word
                if key not in out or out[key].display == key:  # a mid-sentence capital wins over plain case
                    out[key] = Hotword(display, [index[c] for c in key])
            sentence_start = raw.endswith((".", "!", "?", "…"))
    return list(out.values())


def _beam_path(
    logprobs: torch.Tensor, loaded: LoadedLM, settings: BeamSettings, vocab: Vocabulary
) -> tuple[list[int], set[int]]:
    """The frame path (T ids) of flashlight's best lexicon hypothesis and the frames where its words end.
    logprobs: (T, V) float32, contiguous."""
    fl, _ = _flashlight()
    options = fl.LexiconDecoderOptions(
        beam_size=settings.beam_width,
        beam_size_token=settings.beam_tokens or len(vocab.tokens),
        beam_threshold=settings.beam_threshold,
        lm_weight=settings.lm_weight,
        word_score=settings.word_score,
        unk_score=settings.unk_score,
        sil_score=0.0,
        log_add=False,
        criterion_type=fl.CriterionType.CTC,
    )
    # A decoder object holds one search's hypotheses: one per call; the trie and the LM are shared, read-only.
    decoder = fl.LexiconDecoder(options, loaded.trie, loaded.lm, loaded.sil_id, loaded.blank_id, loaded.unk_index,
                                [], False)  # fmt: skip
    frames, size = logprobs.shape
    # The search holds the GIL while it runs: in steps of STEP_FRAMES, so other threads (the event loop) get it
    # between them (one call for a 146 s region held it ~110 ms; in steps, ~20 ms at the end).
    decoder.decode_begin()
    for start in range(0, frames, STEP_FRAMES):
        chunk = min(STEP_FRAMES, frames - start)
        decoder.decode_step(logprobs.data_ptr() + start * size * logprobs.element_size(), chunk, size)
    decoder.decode_end()
    results = decoder.get_all_final_hypothesis()  # best first (get_best_hypothesis skips the end-of-utterance step)
    if not results:
        return logprobs.argmax(dim=-1).tolist(), set()
    best = results[0]
    # flashlight pads the path with a word delimiter at each end; `words` has a word's index at its last frame
    return list(best.tokens[1:-1]), {t - 1 for t, w in enumerate(best.words) if w >= 0}


def _beam(
    logits: torch.Tensor,
    vocab: Vocabulary,
    loaded: LoadedLM | None,
    settings: BeamSettings,
    hotwords: list[Hotword],
    frame_seconds: float,
) -> Transcript:
    logprobs = torch.log_softmax(logits.float(), dim=-1).contiguous()  # (T, V)
    lp = logprobs.numpy()
    greedy_path = logprobs.argmax(dim=-1).tolist()
    path, ends = _beam_path(logprobs, loaded, settings, vocab) if loaded is not None else (greedy_path, set())
    blank, delimiter = vocab.blank_id, vocab.word_delimiter_id
    assert delimiter is not None
    gap = np.maximum(lp[:, blank], lp[:, delimiter])  # (T,) a frame between or around a word's characters
    beam_words = word_runs(path_tokens(path, lp, blank), vocab, ends)
    greedy_words = word_runs(path_tokens(greedy_path, lp, blank), vocab)

    greedy = np.asarray(greedy_path)
    chosen: list[_Choice] = []
    for first, stop, mine, theirs in _groups(beam_words, greedy_words):
        greedy_score = float(lp[np.arange(first, stop), greedy[first:stop]].sum())
        if _spell(theirs) == _spell(mine):  # the greedy path spells the search's words: their best alignment
            options = [_Choice(greedy_score + _lm_terms(theirs, loaded, settings, vocab), theirs)]
        else:
            # The search's words, aligned afresh: flashlight may cut a word's last character short (ties broken
            # arbitrarily), and every alternative here is scored by its best alignment.
            score, aligned = viterbi(lp[first:stop], [e.token_id for w in mine for e in w], gap[first:stop])
            if aligned:
                mine = _split(_shift(aligned, first), [len(w) for w in mine])
            options = [_Choice(score + _lm_terms(mine, loaded, settings, vocab), mine)]
            if loaded is not None:  # a word the lexicon lacks, spelled greedily
                options.append(_Choice(greedy_score + _lm_terms(theirs, loaded, settings, vocab), theirs))
        for hot in hotwords:
            options += _hotword(hot, lp, gap, greedy, theirs, first, stop, loaded, settings, vocab)
        chosen.append(max(options, key=lambda c: c.score))
    return _transcript(chosen, lp, vocab, frame_seconds)


def _hotword(
    hot: Hotword,
    lp: np.ndarray,
    gap: np.ndarray,
    greedy: np.ndarray,
    theirs: list[list[Emitted]],
    first: int,
    stop: int,
    loaded: LoadedLM | None,
    settings: BeamSettings,
    vocab: Vocabulary,
) -> list[_Choice]:
    """`hot` in place of frames [first, stop); with a lexicon also spotted inside them, the greedy spelling around
    it, where that spelling is lexicon words ("thepicart" with the prompt "Picard": "the Picard"; "picart" with
    the prompt "art" stays whole: "pic" is no word)."""
    bonus = settings.hotword_score + (settings.word_score if loaded is not None else 0.0)
    span, span_gap = lp[first:stop], gap[first:stop]
    options = []
    score, aligned = viterbi(span, hot.spelling, span_gap)
    if aligned:
        options.append(_Choice(score + bonus, [_shift(aligned, first)], {0: hot.display}))
    if loaded is None:
        return options
    free = lp[np.arange(first, stop), greedy[first:stop]]  # (S,) each frame's best log-probability
    score, aligned = viterbi(span, hot.spelling, span_gap, free)
    if not aligned:
        return options
    start, end = aligned[0].start + first, aligned[-1].stop + first
    before = [w for w in ([e for e in word if e.stop <= start] for word in theirs) if w]
    after = [w for w in ([e for e in word if e.start >= end] for word in theirs) if w]
    if (before or after) and all(loaded.knows(_text([e.token_id for e in w], vocab)) for w in before + after):
        rest = _lm_terms(before + after, loaded, settings, vocab)
        words = [*before, _shift(aligned, first), *after]
        options.append(_Choice(score + bonus + rest, words, {len(before): hot.display}))
    return options


def _groups(
    beam_words: list[list[Emitted]], greedy_words: list[list[Emitted]]
) -> list[tuple[int, int, list[list[Emitted]], list[list[Emitted]]]]:
    """Stretches of frames that no word of either path crosses: (first frame, stop, beam words, greedy words),
    in time order. Within one, the two paths' words are alternatives for the same audio."""
    spans = sorted(
        [(w[0].start, w[-1].stop, 0, w) for w in beam_words] + [(w[0].start, w[-1].stop, 1, w) for w in greedy_words],
        key=lambda s: (s[0], s[1]),
    )
    groups: list[tuple[int, int, list[list[Emitted]], list[list[Emitted]]]] = []
    for start, stop, side, word in spans:
        if groups and start < groups[-1][1]:
            first, end, mine, theirs = groups[-1]
            groups[-1] = (first, max(end, stop), mine, theirs)
        else:
            groups.append((start, stop, [], []))
        (groups[-1][2] if side == 0 else groups[-1][3]).append(word)
    return groups


def _split(tokens: list[Emitted], lengths: list[int]) -> list[list[Emitted]]:
    out, at = [], 0
    for n in lengths:
        out.append(tokens[at : at + n])
        at += n
    return out


def _spell(words: list[list[Emitted]]) -> list[list[int]]:
    return [[e.token_id for e in w] for w in words]


def _lm_terms(words: list[list[Emitted]], loaded: LoadedLM | None, settings: BeamSettings, vocab: Vocabulary) -> float:
    return sum(_lm_term(_text([e.token_id for e in w], vocab), loaded, settings) for w in words)


def _lm_term(word: str, loaded: LoadedLM | None, settings: BeamSettings) -> float:
    """What the beam search adds for a word: the weighted LM score in the lexicon; outside it `unk_score` and
    `unk_char_score` per character (the evidence a lexicon word loses per character is what tells a made-up word
    from a misheard one: measured on the demo valid split, it separates them better than a per-word score)."""
    if not word:
        return 0.0
    if loaded is None:  # no language model: nothing to prefer one spelling of the audio over another
        return 0.0
    lm = loaded.score(word)
    if lm is not None:
        return settings.word_score + settings.lm_weight * lm
    return settings.word_score + settings.unk_score + settings.unk_char_score * len(word)


def _text(ids: list[int], vocab: Vocabulary) -> str:
    return "".join(vocab.tokens[i] for i in ids)


def _shift(tokens: list[Emitted], offset: int) -> list[Emitted]:
    return [Emitted(e.token_id, e.start + offset, e.stop + offset, e.logprob) for e in tokens]


def _transcript(chosen: list[_Choice], lp: np.ndarray, vocab: Vocabulary, frame_seconds: float) -> Transcript:
    words: list[TimedText] = []
    chars: list[TimedText] = []
    token_ids: list[int] = []
    emitting = np.zeros(lp.shape[0], dtype=bool)
    for choice in chosen:
        for k, run in enumerate(choice.words):
            if not run:
                continue
            timed = [
                TimedText(vocab.tokens[e.token_id], e.start * frame_seconds, e.stop * frame_seconds, e.logprob)
                for e in run
            ]
            text = choice.displays.get(k) or "".join(c.text for c in timed)
            words.append(TimedText(text, timed[0].start, timed[-1].end, sum(c.logprob for c in timed) / len(timed)))
            chars += timed
            if token_ids and vocab.word_delimiter_id is not None:
                token_ids.append(vocab.word_delimiter_id)
            token_ids += [e.token_id for e in run]
            for e in run:
                emitting[e.start : e.stop] = True
    # Frame log-probabilities of the chosen path: a character's own over its frames, the best gap elsewhere.
    chosen_lp = np.where(emitting, 0.0, lp[:, [vocab.blank_id, vocab.word_delimiter_id or 0]].max(axis=1))
    for c in chars:
        first, last = round(c.start / frame_seconds), round(c.end / frame_seconds)
        chosen_lp[first:last] = c.logprob
    return Transcript(
        text=" ".join(w.text for w in words),
        words=words,
        chars=chars,
        token_ids=token_ids,
        avg_logprob=float(chosen_lp.mean()),
        frames=lp.shape[0],
    )
