"""One turn's audio cut into steps as it arrives: each step's frames are computed with left context (so they
match what a longer pass would give) and a little lookahead, and are final once computed.

Every step boundary is a multiple of the 320-sample hop, so frame `j` of a window starting at sample `s` is
frame `s / hop + j` of the turn, as in `chunking.py`. A window's last frame needs 80 samples beyond the step, so
the lookahead is at least one hop. `finish()` computes what is left at the end of the turn.

Each step recomputes its left context, so fewer, longer steps cost less backbone time for the same audio: audio
for several steps that is in at once (a client sending ahead of real time) becomes one step, and `extend` may be
asked for a longer least step (the session asks while file work waits for the backbone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOP = 320
MIN_WINDOW = 400  # one frame's receptive field


@dataclass(frozen=True)
class Step:
    samples: np.ndarray  # (L,) float32: left context, the step, lookahead
    keep_from: int  # first frame of the window that belongs to the step
    keep_to: int | None  # one past its last frame (None: to the window's end)
    end: int  # the step ends at this sample of the turn (what its text accounts for)
    fresh: int  # samples of the turn the step adds (its length without context)


class TurnSteps:
    def __init__(self, step: int, left: int, lookahead: int):
        self.step = max(HOP, step // HOP * HOP)
        self.left = left // HOP * HOP
        self.lookahead = max(HOP, -(-lookahead // HOP) * HOP)
        self._audio = np.zeros(0, np.float32)  # the turn's samples from `_base` on
        self._base = 0
        self.received = 0  # samples of the turn so far
        self.done = 0  # samples whose frames have been planned (a multiple of HOP)

    @property
    def pending(self) -> int:
        """Samples received but not yet planned into a step."""
        return self.received - self.done

    def extend(self, samples: np.ndarray, least: int = 0) -> list[Step]:
        """Add (L,) float32 samples -> the step that became computable, if any: every whole step whose audio and
        lookahead are in, as one step, once that is at least `least` samples (and one step) of new audio."""
        self._audio = np.concatenate([self._audio, samples])
        self.received += len(samples)
        ready = (self.received - self.lookahead - self.done) // self.step * self.step
        steps = []
        if ready >= max(self.step, least):
            steps.append(self._window(self.done + ready + self.lookahead, ready))
            self.done += ready
        self._trim()
        return steps

    def finish(self) -> Step | None:
        """The rest of the turn, to its last sample (None when it is too short to hold a frame)."""
        if self.received <= self.done:
            return None
        start = self._start()
        if self.received - start < MIN_WINDOW:
            self.done = self.received
            return None
        step = self._window(self.received, self.received - self.done, last=True)
        self.done = self.received
        return step

    def _start(self) -> int:
        return max(0, self.done - self.left)

    def _window(self, stop: int, fresh: int, last: bool = False) -> Step:
        """The step of `fresh` new samples from `done`, computed over the window up to sample `stop`."""
        start = self._start()
        samples = self._audio[start - self._base : stop - self._base]
        keep_to = None if last else (self.done + fresh - start) // HOP
        return Step(np.ascontiguousarray(samples), (self.done - start) // HOP, keep_to, self.done + fresh, fresh)

    def _trim(self) -> None:
        """Keep only what future windows can read: the left context before `done` and everything after it."""
        keep_from = self._start()
        if keep_from > self._base:
            self._audio = self._audio[keep_from - self._base :]
            self._base = keep_from
