"""Step planning covers a turn's frames exactly once; turn detection finds speech and the pauses after it."""

from __future__ import annotations

import numpy as np
import pytest

from chorus_server.live.steps import HOP, TurnSteps
from chorus_server.live.turns import FRAME, TurnDetector, speech_frames


def frames_of(n: int) -> int:
    """wav2vec 2.0's frame count for n samples (400-sample receptive field, 320 hop)."""
    return 0 if n < 400 else (n - 400) // HOP + 1


@pytest.mark.parametrize("total", [0, 300, 5000, 16000, 16000 * 7 + 123])
@pytest.mark.parametrize("chunk", [160, 1600, 7000])
@pytest.mark.parametrize("least", [0, 12800])
def test_steps_cover_every_frame_of_one_pass_once(total, chunk, least):
    steps = TurnSteps(step=5120, left=32000, lookahead=1600)
    audio = np.arange(total, dtype=np.float32)  # sample i holds i: windows show where they come from
    kept: list[int] = []
    planned = []
    for start in range(0, total, chunk):
        planned += steps.extend(audio[start : start + chunk], least)
    final = steps.finish()
    planned += [final] if final is not None else []
    for step in planned:
        first = int(step.samples[0])
        assert first % HOP == 0 and step.keep_from * HOP <= 32000
        window_frames = range(first // HOP, first // HOP + frames_of(len(step.samples)))
        kept += list(window_frames)[step.keep_from : step.keep_to]
    assert kept == list(range(frames_of(total)))
    assert sum(step.fresh for step in planned) == (total if total >= 400 else 0)  # shorter: no frame at all


def test_a_step_waits_for_its_lookahead_and_keeps_little_audio():
    steps = TurnSteps(step=3200, left=6400, lookahead=320)
    assert steps.extend(np.zeros(3200, np.float32)) == []  # the step is in, its lookahead is not
    [step] = steps.extend(np.zeros(320, np.float32))
    assert (len(step.samples), step.keep_from, step.keep_to, step.end, step.fresh) == (3520, 0, 10, 3200, 3200)
    for _ in range(10):
        steps.extend(np.zeros(3200, np.float32))
    assert len(steps._audio) <= 6400 + 3200 + 320  # left context + what is not planned yet


def test_audio_for_several_steps_is_one_step_and_a_longer_least_step_waits_for_more_audio():
    steps = TurnSteps(step=3200, left=6400, lookahead=320)
    [step] = steps.extend(np.zeros(3 * 3200 + 320, np.float32))  # three steps' audio at once: one window
    assert (len(step.samples), step.keep_from, step.keep_to, step.end, step.fresh) == (9920, 0, 30, 9600, 9600)
    assert steps.extend(np.zeros(3200, np.float32), least=6400) == []  # one step is in, two were asked for
    [step] = steps.extend(np.zeros(3200, np.float32), least=6400)
    assert (len(step.samples), step.keep_from, step.keep_to, step.end, step.fresh) == (13120, 20, 40, 16000, 6400)


def tone_with_pauses(pattern: list[tuple[float, bool]], rate: int = 16000) -> np.ndarray:
    gen = np.random.default_rng(0)
    parts = [
        (0.3 * np.sin(np.arange(int(s * rate)) * 0.2) if loud else 0.0005 * gen.standard_normal(int(s * rate)))
        for s, loud in pattern
    ]
    return np.concatenate(parts).astype(np.float32)


def test_turns_start_with_padding_and_stop_after_the_pause():
    audio = tone_with_pauses([(1.0, False), (1.0, True), (0.2, False), (0.5, True), (1.0, False), (0.6, True)])
    detector = TurnDetector(threshold=0.5, prefix_padding_ms=300, silence_ms=500)
    events = [event for start in range(0, len(audio), 777) for event in detector.push(audio[start : start + 777])]
    assert [(e.kind, round(e.sample / 16000, 2)) for e in events] == [
        ("started", 0.7),  # speech at 1.0 s minus 300 ms of padding
        ("stopped", 3.2),  # the 0.2 s gap is not a pause; speech ends at 2.7 s, plus 500 ms
        ("started", 3.4),
    ]
    assert detector.in_turn


def test_quiet_audio_opens_no_turn_and_a_reset_starts_over():
    detector = TurnDetector()
    assert detector.push(np.zeros(32000, np.float32)) == []
    detector.push(tone_with_pauses([(0.5, True)]))
    assert detector.in_turn
    detector.reset(at=40000)
    assert not detector.in_turn


def test_the_energy_rule_and_its_threshold():
    loud = np.full(FRAME, 0.01, np.float32)  # -40 dBFS
    assert speech_frames(np.concatenate([loud, loud * 0]), 0.5).tolist() == [True, False]
    assert speech_frames(loud, 0.9).tolist() == [False]  # stricter: -25 dBFS floor
