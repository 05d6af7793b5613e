"""Subtitle cues from transcript segments, by the usual conventions (Netflix's and the BBC's timed-text guides):
a cue shows at most `MAX_LINES` lines of at most `LINE_CHARS` characters for at most `CUE_SECONDS` seconds, and
is split only between words, preferring the longest pause and otherwise the middle."""

from __future__ import annotations

from dataclasses import dataclass

from chorus_server.engine.decode import TimedText

CUE_SECONDS = 7.0
LINE_CHARS = 42
MAX_LINES = 2


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: list[str]


def wrap(words: list[str]) -> list[str]:
    """Words -> the fewest lines of at most `LINE_CHARS` characters (a longer word gets a line of its own); two
    lines are balanced (the break that makes the longer line shortest)."""
    text = " ".join(words)
    if len(text) <= LINE_CHARS or len(words) == 1:
        return [text]
    best: tuple[int, int] | None = None  # (longer line, break index)
    for k in range(1, len(words)):
        longer = max(len(" ".join(words[:k])), len(" ".join(words[k:])))
        if longer <= LINE_CHARS and (best is None or longer < best[0]):
            best = (longer, k)
    if best is not None:
        return [" ".join(words[: best[1]]), " ".join(words[best[1] :])]
    lines: list[str] = []  # more than two lines: fill greedily
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= LINE_CHARS:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _fits(words: list[TimedText]) -> bool:
    if len(words) == 1:
        return True
    return words[-1].end - words[0].start <= CUE_SECONDS and len(wrap([w.text for w in words])) <= MAX_LINES


def _split_point(words: list[TimedText]) -> int:
    """The word index to split before: the longest pause, ties broken towards the middle (in time)."""
    middle = (words[0].start + words[-1].end) / 2
    total = max(words[-1].end - words[0].start, 1e-9)

    def score(k: int) -> float:
        gap = words[k].start - words[k - 1].end
        return gap - 0.25 * abs(words[k].start - middle) / total

    return max(range(1, len(words)), key=score)


def cues_of(groups: list[list[TimedText]]) -> list[Cue]:
    """Each group of words (a segment) -> cues; a group that does not fit one cue is split until every part does."""
    cues: list[Cue] = []
    pending = [group for group in reversed(groups) if group]
    while pending:
        words = pending.pop()
        if _fits(words):
            cues.append(Cue(words[0].start, words[-1].end, wrap([w.text for w in words])))
            continue
        k = _split_point(words)
        pending += [words[k:], words[:k]]
    return cues
