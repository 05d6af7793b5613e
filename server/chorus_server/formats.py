"""Transcripts -> OpenAI's response formats: json, text, srt, vtt and verbose_json.

CTC gives word timings and per-character log-probabilities, not Whisper's decoder statistics, so in verbose_json
`temperature` is always 0, `seek` is the segment start in centiseconds, `avg_logprob` is the mean log-probability
of the segment's characters, and `no_speech_prob` is 0 (CTC has no such estimate).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import TimedText, Transcript

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
SEGMENT_PAUSE = 1.0  # seconds of silence between words that start a new segment
SEGMENT_MAX = 30.0  # longest segment, seconds


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    words: list[TimedText]

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


def segments_of(words: list[TimedText]) -> list[Segment]:
    """Split words at pauses of `SEGMENT_PAUSE` seconds or when a segment would pass `SEGMENT_MAX` seconds."""
    segments: list[Segment] = []
    current: list[TimedText] = []
    for word in words:
        if current and (word.start - current[-1].end >= SEGMENT_PAUSE or word.end - current[0].start > SEGMENT_MAX):
            segments.append(Segment(current[0].start, current[-1].end, current))
            current = []
        current.append(word)
    if current:
        segments.append(Segment(current[0].start, current[-1].end, current))
    return segments


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _token_ids(text: str, vocab: Vocabulary) -> list[int]:
    index = {token: i for i, token in enumerate(vocab.tokens)}
    ids = []
    for char in text:
        if char == " " and vocab.word_delimiter_id is not None:
            ids.append(vocab.word_delimiter_id)
        elif char in index:
            ids.append(index[char])
    return ids


def verbose_json(
    transcript: Transcript, vocab: Vocabulary, language: str, duration: float, granularities: set[str]
) -> dict[str, Any]:
    body: dict[str, Any] = {"task": "transcribe", "language": language, "duration": duration, "text": transcript.text}
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": round(seg.start * 100),
                "start": seg.start,
                "end": seg.end,
                "text": seg.text,
                "tokens": _token_ids(seg.text, vocab),
                "temperature": 0.0,
                "avg_logprob": sum(w.logprob for w in seg.words) / len(seg.words),
                "compression_ratio": _compression_ratio(seg.text),
                "no_speech_prob": 0.0,
            }
            for i, seg in enumerate(segments_of(transcript.words))
        ]
    if "word" in granularities:
        body["words"] = words_json(transcript)
    body["usage"] = usage(duration)
    return body


def words_json(transcript: Transcript) -> list[dict[str, Any]]:
    return [{"word": w.text, "start": w.start, "end": w.end} for w in transcript.words]


def usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration)}


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(transcript: Transcript) -> str:
    cues = [
        f"{i}\n{_timestamp(seg.start, ',')} --> {_timestamp(seg.end, ',')}\n{seg.text}\n"
        for i, seg in enumerate(segments_of(transcript.words), start=1)
    ]
    return "\n".join(cues)


def vtt(transcript: Transcript) -> str:
    cues = [
        f"{_timestamp(seg.start, '.')} --> {_timestamp(seg.end, '.')}\n{seg.text}\n"
        for seg in segments_of(transcript.words)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
