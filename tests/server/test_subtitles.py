"""Segments, subtitle cues and timestamps (formats.py, subtitles.py): pauses end segments, cues keep to subtitle
conventions, every time is rounded to milliseconds."""

from __future__ import annotations

import re

from chorus_server import formats
from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import TimedText, Transcript
from chorus_server.subtitles import CUE_SECONDS, LINE_CHARS, MAX_LINES, cues_of, wrap


def words_at(*spans: tuple[str, float, float]) -> list[TimedText]:
    return [TimedText(text, start, end, -0.1) for text, start, end in spans]


def steady_speech(count: int, word: str = "word", step: float = 0.4, start: float = 0.0) -> list[TimedText]:
    """`count` words of 0.3 s every `step` seconds (gaps of step - 0.3 s)."""
    return [TimedText(f"{word}{i}", start + i * step, start + i * step + 0.3, -0.1) for i in range(count)]


def test_a_detected_pause_ends_a_segment_even_when_the_word_gap_is_short():
    words = words_at(("one", 0.0, 0.4), ("two", 0.5, 0.9), ("three", 1.2, 1.6))
    assert [s.text for s in formats.segments_of(words)] == ["one two three"]
    assert [s.text for s in formats.segments_of(words, pauses=[1.0])] == ["one two", "three"]
    assert [s.text for s in formats.segments_of(words, pauses=[5.0])] == ["one two three"]


def test_long_gaps_and_long_segments_still_split():
    words = words_at(("a", 0.0, 0.3), ("b", 1.4, 1.7))
    assert len(formats.segments_of(words)) == 2  # a gap of SEGMENT_PAUSE
    assert all(s.end - s.start <= formats.SEGMENT_MAX for s in formats.segments_of(steady_speech(100, step=0.35)))


def test_wrap_balances_two_lines_of_at_most_42_characters():
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "and",
        "keeps",
        "running",
        "far",
        "away",
    ]
    lines = wrap(words)
    assert len(lines) == 2 and all(len(line) <= LINE_CHARS for line in lines)
    assert abs(len(lines[0]) - len(lines[1])) <= 10
    assert wrap(["short", "text"]) == ["short text"]
    assert wrap(["x" * 50]) == ["x" * 50]  # a word longer than a line keeps its own line


def test_cues_keep_to_subtitle_limits():
    cues = cues_of([steady_speech(60)])  # 24 s of steady speech, no pause
    assert len(cues) > 3
    for cue in cues:
        assert cue.end - cue.start <= CUE_SECONDS
        assert len(cue.lines) <= MAX_LINES and all(len(line) <= LINE_CHARS for line in cue.lines)
    spoken = [w for cue in cues for line in cue.lines for w in line.split()]
    assert spoken == [f"word{i}" for i in range(60)]  # every word once, in order, split between words


def test_cues_split_at_the_longest_pause():
    words = [*steady_speech(10), *steady_speech(10, word="next", start=4.5)]  # a 0.6 s pause after word9
    cues = cues_of([words])
    assert cues[0].lines[-1].split()[-1] == "word9"


def test_one_cue_when_a_segment_fits():
    cues = cues_of([words_at(("hello", 0.5, 0.9), ("world", 1.0, 1.5))])
    assert [(c.start, c.end, c.lines) for c in cues] == [(0.5, 1.5, ["hello world"])]
    assert cues_of([]) == [] and cues_of([[]]) == []


NOISY = Transcript(
    "a b",
    words_at(("a", 0.8200000000000001, 1.2600000000000002), ("b", 2.0000000000000004, 2.34)),
)


def test_every_format_rounds_times_to_milliseconds():
    assert formats.words_json(NOISY) == [
        {"word": "a", "start": 0.82, "end": 1.26, "probability": 0.9048},  # exp(-0.1)
        {"word": "b", "start": 2.0, "end": 2.34, "probability": 0.9048},
    ]
    vocab = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, word_delimiter_id=1)
    body = formats.verbose_json(NOISY, vocab, "en", 3.0000000000000004, {"word", "segment"})
    assert body["duration"] == 3.0
    assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.82, 2.34)]
    assert body["words"][0] == {"word": "a", "start": 0.82, "end": 1.26, "probability": 0.9048}
    assert re.findall(r"\d\d:\d\d:\d\d,\d{3}", formats.srt(NOISY)) == ["00:00:00,820", "00:00:02,340"]
    assert re.findall(r"\d\d:\d\d:\d\d\.\d{3}", formats.vtt(NOISY)) == ["00:00:00.820", "00:00:02.340"]


def test_srt_lines_are_wrapped():
    words = steady_speech(6, word="longerword")  # 2.3 s, 71 characters: one cue of two lines
    srt = formats.srt(Transcript(" ".join(w.text for w in words), words))
    lines = srt.splitlines()
    assert lines[0] == "1" and len(lines) == 4 and all(len(line) <= LINE_CHARS for line in lines[2:])
