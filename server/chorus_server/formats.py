"""Transcripts -> OpenAI's response formats: json, text, srt, vtt and verbose_json.

CTC gives word timings and per-character log-probabilities, not Whisper's decoder statistics, so in verbose_json
`temperature` is always 0, `seek` is the segment start in centiseconds, `avg_logprob` is the mean log-probability
of the segment's characters, and `no_speech_prob` is one minus the voice activity detector's mean speech
probability over the segment. Segments end at the detector's pauses, at word gaps of `SEGMENT_PAUSE` and after
`SEGMENT_MAX`; SRT and WebVTT cues further split segments by subtitle conventions (`subtitles.py`). Every time is
rounded to milliseconds.
"""

from __future__ import annotations

import bisect
import math
import zlib
from dataclasses import dataclass
from typing import Any

from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.decode import TimedText, Transcript
from chorus_server.speech import Speech
from chorus_server.subtitles import Cue, cues_of

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


def ms(seconds: float) -> float:
    """Seconds rounded to milliseconds (frame arithmetic leaves float noise such as 0.8200000000000001)."""
    return round(seconds, 3)


def segments_of(words: list[TimedText], pauses: list[float] | None = None) -> list[Segment]:
    """Split words where a detected pause (a time in seconds) lies between two words, at word gaps of
    `SEGMENT_PAUSE` seconds, or when a segment would pass `SEGMENT_MAX` seconds."""
    breaks = sorted(pauses or [])
    segments: list[Segment] = []
    current: list[TimedText] = []
    for word in words:
        # a detected pause between the previous word's end and this word's start
        pause = bool(current) and bisect.bisect_left(breaks, current[-1].end) < bisect.bisect_right(breaks, word.start)
        if current and (
            pause or word.start - current[-1].end >= SEGMENT_PAUSE or word.end - current[0].start > SEGMENT_MAX
        ):
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
    transcript: Transcript,
    vocab: Vocabulary,
    language: str,
    duration: float,
    granularities: set[str],
    speech: Speech | None = None,
    logprobs: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language,
        "duration": ms(duration),
        "text": transcript.text,
    }
    if "segment" in granularities or not granularities:
        pauses = speech.pauses() if speech else None
        body["segments"] = [
            {
                "id": i,
                "seek": round(seg.start * 100),
                "start": ms(seg.start),
                "end": ms(seg.end),
                "text": seg.text,
                "tokens": _token_ids(seg.text, vocab),
                "temperature": 0.0,
                "avg_logprob": sum(w.logprob for w in seg.words) / len(seg.words),
                "compression_ratio": _compression_ratio(seg.text),
                "no_speech_prob": speech.no_speech_prob(seg.start, seg.end) if speech else 0.0,
            }
            for i, seg in enumerate(segments_of(transcript.words, pauses))
        ]
    if "word" in granularities:
        body["words"] = words_json(transcript)
    if logprobs:
        body["logprobs"] = token_logprobs(transcript)
    body["usage"] = usage(duration)
    return body


def words_json(transcript: Transcript) -> list[dict[str, Any]]:
    """Words with their times and `probability`: exp of the mean log-probability of the word's characters'
    frames (as Whisper's word probabilities, a confidence in (0, 1])."""
    return [
        {"word": w.text, "start": ms(w.start), "end": ms(w.end), "probability": round(w.probability, 4)}
        for w in transcript.words
    ]


def token_logprobs(transcript: Transcript) -> list[dict[str, Any]]:
    """OpenAI's `include[]=logprobs`: `[{token, logprob, bytes}]`. A CTC token is one character; a word's first
    character carries the space before it, so the tokens joined are the text. `logprob`: the mean log-probability
    of the frames that emitted the character."""
    out: list[dict[str, Any]] = []
    chars, at = transcript.chars, 0
    for n, word in enumerate(transcript.words):
        mine = []
        while at < len(chars) and chars[at].end <= word.end + 1e-9:
            mine.append(chars[at])
            at += 1
        # the word as written (a hotword keeps the prompt's case) where it spells one character per token
        texts = list(word.text) if len(word.text) == len(mine) else [c.text for c in mine]
        for k, (text, char) in enumerate(zip(texts, mine, strict=True)):
            token = (" " if n and k == 0 else "") + text
            out.append({"token": token, "logprob": char.logprob, "bytes": list(token.encode())})
    return out


def usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration)}


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def cues(transcript: Transcript, pauses: list[float] | None = None) -> list[Cue]:
    return cues_of([seg.words for seg in segments_of(transcript.words, pauses)])


def srt(transcript: Transcript, pauses: list[float] | None = None) -> str:
    return "\n".join(
        f"{i}\n{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}\n" + "\n".join(cue.lines) + "\n"
        for i, cue in enumerate(cues(transcript, pauses), start=1)
    )


def vtt(transcript: Transcript, pauses: list[float] | None = None) -> str:
    body = "\n".join(
        f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}\n" + "\n".join(cue.lines) + "\n"
        for cue in cues(transcript, pauses)
    )
    return "WEBVTT\n\n" + body
