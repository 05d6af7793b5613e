"""chorus_server.speech: chunking_strategy parsing, frame-aligned regions, transcripts joined across regions."""

from __future__ import annotations

import numpy as np
import pytest

from chorus_server.engine.decode import TimedText, Transcript
from chorus_server.errors import ApiError
from chorus_server.settings import VadSettings
from chorus_server.speech import Speech, detect, join, options_from_form
from chorus_server.vad import Region, VadOptions
from tests.server.test_vad import RATE, quiet_noise, sample

DEFAULTS = VadOptions(0.5, 500, 200, 250)


@pytest.mark.parametrize(
    ("form", "enabled", "expected"),
    [
        ({}, True, DEFAULTS),
        ({}, False, None),
        ({"chunking_strategy": "auto"}, False, DEFAULTS),
        ({"chunking_strategy": '{"type": "server_vad"}'}, True, DEFAULTS),
        (
            {"chunking_strategy": '{"type": "server_vad", "threshold": 0.3, "silence_duration_ms": 800}'},
            True,
            VadOptions(0.3, 800, 200, 250),
        ),
        (  # what the OpenAI SDK sends for a dict: one form field per key
            {"chunking_strategy[type]": "server_vad", "chunking_strategy[prefix_padding_ms]": "300"},
            False,
            VadOptions(0.5, 500, 300, 250),
        ),
    ],
)
def test_chunking_strategy(form, enabled, expected):
    assert options_from_form(form, VadSettings(enabled=enabled)) == expected


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"chunking_strategy": "none"}, '"auto" or a JSON object'),
        ({"chunking_strategy": "[1, 2]"}, '"auto" or a JSON object'),
        ({"chunking_strategy": "[" * 100_000}, '"auto" or a JSON object'),  # too deep for the JSON parser
        ({"chunking_strategy": '{"threshold": 0.5}'}, '"type": "server_vad"'),
        ({"chunking_strategy": '{"type": "server_vad", "speed": 2}'}, "unknown chunking_strategy fields ['speed']"),
        ({"chunking_strategy": '{"type": "server_vad", "threshold": "high"}'}, "threshold must be a number"),
        ({"chunking_strategy": '{"type": "server_vad", "threshold": 1.5}'}, "threshold must be between 0 and 1"),
        ({"chunking_strategy": '{"type": "server_vad", "silence_duration_ms": -5}'}, "silence_ms must be between"),
        ({"chunking_strategy": "auto", "chunking_strategy[type]": "server_vad"}, "not both"),
    ],
)
def test_bad_chunking_strategy_is_a_400(form, message):
    with pytest.raises(ApiError) as caught:
        options_from_form(form, VadSettings())
    assert caught.value.status_code == 400
    assert caught.value.param == "chunking_strategy"
    assert message in caught.value.message


def test_regions_are_frame_aligned_and_skip_silence():
    audio = np.concatenate([np.zeros(RATE + 123, np.float32), sample("en-2"), quiet_noise(2.0), sample("it-4")])
    speech = detect(audio, RATE, DEFAULTS, hop=320, min_samples=400)
    assert len(speech.regions) == 2
    for region in speech.regions:
        assert region.start % 320 == 0 and (region.stop % 320 == 0 or region.stop == len(audio))
    covered = sum(r.stop - r.start for r in speech.regions)
    assert covered < len(audio) - 2 * RATE  # most of the 3 s of silence and noise is skipped
    (pause,) = speech.pauses()
    assert speech.regions[0].stop / RATE < pause < speech.regions[1].start / RATE
    assert speech.no_speech_prob(pause - 0.3, pause + 0.3) > 0.9
    first = speech.regions[0]
    assert speech.no_speech_prob(first.start / RATE + 0.3, first.stop / RATE - 0.3) < 0.1


def test_without_detection_the_whole_file_is_one_region():
    audio = np.zeros(2 * RATE, np.float32)
    speech = detect(audio, RATE, None, hop=320, min_samples=400)
    assert speech.regions == [Region(0, len(audio))]
    assert speech.pauses() == []
    assert speech.no_speech_prob(0.0, 2.0) > 0.9  # still measured
    unmeasured = detect(audio, RATE, None, hop=320, min_samples=400, probabilities=False)  # nobody reports it
    assert unmeasured.regions == speech.regions and len(unmeasured.probs) == 0
    assert unmeasured.no_speech_prob(0.0, 2.0) == 0.0
    detected = detect(audio, RATE, DEFAULTS, hop=320, min_samples=400, probabilities=False)
    assert detected.regions == [] and len(detected.probs) == len(speech.probs)  # detection needs them anyway


def test_other_rates_are_not_detected():
    speech = detect(np.zeros(8000, np.float32), 8000, DEFAULTS, hop=160, min_samples=200)
    assert speech.regions == [Region(0, 8000)] and speech.no_speech_prob(0.0, 1.0) == 0.0


def test_join_shifts_every_time_by_its_offset():
    one = Transcript("a b", [TimedText("a", 0.1, 0.2, -0.1), TimedText("b", 0.3, 0.4, -0.3)], [], [5, 4, 6], -0.2, 10)
    two = Transcript("c", [TimedText("c", 0.0, 0.1, -0.5)], [TimedText("c", 0.0, 0.1, -0.5)], [7], -0.6, 30)
    joined = join([(0.0, one), (2.5, Transcript("")), (10.0, two)])
    assert joined.text == "a b c"
    assert [(w.text, w.start, w.end) for w in joined.words] == [("a", 0.1, 0.2), ("b", 0.3, 0.4), ("c", 10.0, 10.1)]
    assert joined.chars == [TimedText("c", 10.0, 10.1, -0.5)]
    assert joined.token_ids == [5, 4, 6, 7]
    assert joined.frames == 40 and joined.avg_logprob == pytest.approx((-0.2 * 10 - 0.6 * 30) / 40)
    assert join([]) == Transcript("")


def test_speech_without_probabilities_reports_zero():
    assert Speech([Region(0, 100)], np.zeros(0, np.float32), RATE).no_speech_prob(0, 1) == 0.0
