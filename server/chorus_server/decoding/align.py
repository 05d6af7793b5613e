"""CTC paths and alignments: a frame path (one token id per frame) -> timed characters and words, and the best
(Viterbi) alignment of a given spelling to a stretch of frames, used to weigh one spelling of a word against
another over the same audio.

Frame `t` covers `[t, t + 1) * frame_seconds`; a token's run of frames `[a, b]` spans `[a, b + 1) * frame_seconds`,
as in greedy decoding (`engine/decode.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import is_special


@dataclass(frozen=True)
class Emitted:
    """A token emitted over frames `[start, stop)`, its mean log-probability over those frames."""

    token_id: int
    start: int
    stop: int
    logprob: float


def path_tokens(path: list[int], logprobs: np.ndarray, blank_id: int) -> list[Emitted]:
    """A frame path (T ids) -> its runs of non-blank tokens (a repeated id is one token unless a blank splits it)."""
    ids = np.asarray(path, dtype=np.int64)
    frames = ids.size
    if frames == 0:
        return []
    starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    stops = np.append(starts[1:], frames)
    sums = np.concatenate(([0.0], np.cumsum(logprobs[np.arange(frames), ids], dtype=np.float64)))
    return [
        Emitted(int(ids[a]), a, b, float((sums[b] - sums[a]) / (b - a)))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
        if ids[a] != blank_id
    ]


def word_runs(tokens: list[Emitted], vocab: Vocabulary, ends: set[int] | None = None) -> list[list[Emitted]]:
    """Emitted tokens -> words: characters between delimiters (special tokens such as `<unk>` dropped). `ends`:
    frames at which a word also ends (a lexicon search may join words with no delimiter between them)."""
    words: list[list[Emitted]] = []
    current: list[Emitted] = []
    for token in tokens:
        if token.token_id == vocab.word_delimiter_id:
            if current:
                words.append(current)
            current = []
        elif not is_special(vocab.tokens[token.token_id]):
            current.append(token)
            if ends and any(t in ends for t in range(token.start, token.stop)):
                words.append(current)
                current = []
    if current:
        words.append(current)
    return words


def viterbi(
    logprobs: np.ndarray, spelling: list[int], gap: np.ndarray, free: np.ndarray | None = None
) -> tuple[float, list[Emitted]]:
    """The best CTC alignment of `spelling` (token ids) to `logprobs` (S, V): its log-probability and the frames of
    each token. Between and around the tokens a frame may be a "gap": blank or word delimiter, scored `gap` (S,).
    `free` (S,): the spelling may also start late and end early, the frames before and after it scored `free`
    (word spotting: a hotword inside a longer stretch). Returns (-inf, []) when the stretch is too short."""
    frames, n = logprobs.shape[0], len(spelling)
    if n == 0:
        return float(gap.sum() if free is None else np.maximum(gap, free).sum()), []
    core = 2 * n + 1  # gap, token 0, gap, token 1, ..., gap
    lead = 0 if free is None else 1  # a free state before the core (and one after it)
    states = core + 2 * lead
    token_of = np.full(states, -1)
    token_of[lead + 1 : lead + core : 2] = spelling
    emit = np.empty((frames, states))
    emit[:, lead : lead + core : 2] = gap[:, None]
    emit[:, lead + 1 : lead + core : 2] = logprobs[:, spelling]
    # a token state may be entered from two states back when the tokens differ (a repeat needs a gap between)
    skip = np.zeros(states, dtype=bool)
    skip[lead + 3 : lead + core : 2] = np.asarray(spelling[1:]) != np.asarray(spelling[:-1])
    if free is not None:
        emit[:, 0] = emit[:, -1] = free
        skip[2] = skip[-1] = True  # free -> first token, last token -> free
    jumps = np.flatnonzero(skip)  # states that may be entered from two back
    scores = np.empty((frames, states))  # best score of each state at each frame; backtracking re-derives the moves
    scores[0] = -np.inf
    scores[0, : 2 + lead] = emit[0, : 2 + lead]
    for t in range(1, frames):
        prev, score = scores[t - 1], scores[t]
        score[:] = prev
        np.maximum(score[1:], prev[:-1], out=score[1:])
        score[jumps] = np.maximum(score[jumps], prev[jumps - 2])
        score += emit[t]
    ends = range(states - 2 - lead, states)  # the last token, the gap after it (and the free state)
    end = max(ends, key=lambda k: scores[-1, k])
    best = float(scores[-1, end])
    if not np.isfinite(best):
        return best, []
    state, path = end, np.empty(frames, dtype=np.int64)
    for t in range(frames - 1, 0, -1):
        path[t] = state
        prev = scores[t - 1]
        moves = [state, state - 1] + ([state - 2] if skip[state] else [])
        state = max((m for m in moves if m >= 0), key=lambda m: prev[m])
    path[0] = state
    out: list[Emitted] = []
    t = 0
    while t < frames:
        stop = t + 1
        while stop < frames and path[stop] == path[t]:
            stop += 1
        if token_of[path[t]] >= 0:
            token = int(token_of[path[t]])
            out.append(Emitted(token, t, stop, float(logprobs[t:stop, token].mean())))
        t = stop
    return best, out
