"""Server-side turn detection for realtime sessions: speech starts, a long enough pause ends the turn.

Speech is found by `speech_frames` (per 20 ms frame); `SPEECH_DETECTOR` names the detector in use, so a better
one (a shared VAD module) can replace the energy rule without touching the turn logic. The energy rule: a frame
is speech when its RMS level is above a floor set by OpenAI's `threshold` (0..1; 0.5 -> -45 dBFS, higher is
stricter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FRAME = 320  # samples per decision at 16 kHz (20 ms)
SpeechDetector = Callable[[np.ndarray, float], np.ndarray]


def speech_frames(samples: np.ndarray, threshold: float) -> np.ndarray:
    """samples: (N * FRAME,) float32 -> (N,) bool, True where a frame is louder than the threshold's floor."""
    frames = samples[: len(samples) // FRAME * FRAME].reshape(-1, FRAME)  # (N, FRAME)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)  # (N,)
    floor_db = -70.0 + 50.0 * threshold
    return 20 * np.log10(rms) > floor_db


SPEECH_DETECTOR: SpeechDetector = speech_frames


@dataclass(frozen=True)
class TurnEvent:
    kind: str  # "started" | "stopped"
    sample: int  # where, in samples since the session's audio began (started: prefix padding included)


class TurnDetector:
    """Feed audio in any chunk sizes; get `started` when speech begins and `stopped` once `silence_ms` of quiet
    follow it. A turn needs `min_speech_ms` of speech, so a click does not open one."""

    def __init__(
        self,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_ms: int = 500,
        min_speech_ms: int = 60,
        rate: int = 16000,
        detector: SpeechDetector | None = None,
    ):
        ms = rate // 1000
        self.threshold, self.prefix = threshold, prefix_padding_ms * ms
        self.silence_frames = max(1, silence_ms * ms // FRAME)
        self.min_speech_frames = max(1, min_speech_ms * ms // FRAME)
        self.detector = detector or SPEECH_DETECTOR
        self.in_turn = False
        self._pending = np.zeros(0, np.float32)
        self._frame = 0  # index of the next frame to judge
        self._run = 0  # speech frames in a row (before a turn) or quiet frames in a row (in a turn)
        self._floor = 0  # a turn never starts before the end of the previous one

    def push(self, samples: np.ndarray) -> list[TurnEvent]:
        """samples: (L,) float32, continuing the audio pushed before."""
        self._pending = np.concatenate([self._pending, samples])
        usable = len(self._pending) // FRAME * FRAME
        flags = self.detector(self._pending[:usable], self.threshold) if usable else np.zeros(0, bool)
        self._pending = self._pending[usable:]
        events: list[TurnEvent] = []
        for speech in flags.tolist():
            self._frame += 1
            end = self._frame * FRAME
            if not self.in_turn:
                self._run = self._run + 1 if speech else 0
                if self._run >= self.min_speech_frames:
                    self.in_turn, self._run = True, 0
                    onset = end - self.min_speech_frames * FRAME
                    events.append(TurnEvent("started", max(self._floor, onset - self.prefix)))
            else:
                self._run = 0 if speech else self._run + 1
                if self._run >= self.silence_frames:
                    self.in_turn, self._run, self._floor = False, 0, end
                    events.append(TurnEvent("stopped", end))
        return events

    def reset(self, at: int) -> None:
        """A turn was ended from outside (a manual commit or clear at sample `at`): look for a new one."""
        self.in_turn, self._run, self._floor = False, 0, max(self._floor, at)
