"""Fuzzing `decode_audio`: uploaded bytes decode to finite mono float32 at the requested rate, or fail with a 4xx.

Inputs stay under 64 KB: random bytes (bare or behind a container's magic), and short random signals encoded by
soundfile as WAV, FLAC and OGG, then mutated (header fields overwritten, bytes flipped, inserted, deleted, truncated)
or spliced together. Valid files must decode to the expected number of samples (duration x rate, within one sample
after resampling) and, at their own rate, to their own samples; too short and too long ones get their 400 and 413.
"""

from __future__ import annotations

import io
import struct
from typing import Any, NamedTuple

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from chorus_server.audio import MIN_SAMPLES, Audio, decode_audio
from chorus_server.errors import ApiError

# Hostile float samples (NaN, 3.4e38) make the decoder's mixdown warn on its way to a 400; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = [
    ("WAV", "PCM_16"),
    ("WAV", "PCM_U8"),
    ("WAV", "PCM_24"),
    ("WAV", "FLOAT"),
    ("FLAC", "PCM_16"),
    ("OGG", "VORBIS"),
]
STEP = {"PCM_16": 2**-15, "PCM_U8": 2**-7, "PCM_24": 2**-23, "FLOAT": 0.0}  # quantisation of the lossless subtypes
RATES = [8000, 11025, 16000, 22050, 44100, 48000]
MAGIC = [b"RIFF", b"RIFF\xff\xff\xff\xffWAVEfmt ", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"FORM", b"caff", b".snd"]
rates = st.sampled_from([8000, 16000, 22050])  # rates a backbone may ask for
limits = st.sampled_from([0.05, 0.25, 1.0, 30.0])


class Signal(NamedTuple):
    """A short random signal and how it is stored; `scale` multiplies uniform noise in [-1, 1)."""

    format: str
    subtype: str
    rate: int
    channels: int
    frames: int
    seed: int
    scale: float = 0.5

    def samples(self) -> np.ndarray:
        """(frames, channels) float32."""
        noise = np.random.default_rng(self.seed).uniform(-1, 1, (self.frames, self.channels))
        return (noise * self.scale).astype(np.float32)

    def encode(self) -> bytes:
        out = io.BytesIO()
        soundfile.write(out, self.samples(), self.rate, format=self.format, subtype=self.subtype)
        return out.getvalue()


@st.composite
def signals(draw: st.DrawFn, max_frames: int = 4000, extreme: bool = False) -> Signal:
    """Any format; float WAVs may hold samples far outside [-1, 1] (up to float32's largest when `extreme`)."""
    fmt, subtype = draw(st.sampled_from(FORMATS))
    scales = [0.0, 0.5, 1.0] + ([1e10, 3.4e38] if extreme else [1e10]) * (subtype == "FLOAT")
    return Signal(
        fmt,
        subtype,
        draw(st.sampled_from(RATES)),
        draw(st.integers(1, 2)),
        draw(st.integers(0, max_frames)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.sampled_from(scales)),
    )


def _check_decode(data: bytes, rate: int, max_seconds: float) -> Audio | ApiError:
    """Decode `data`: a 4xx `ApiError` (any other exception propagates), or audio keeping every promise."""
    assert len(data) < 64 * 1024
    try:
        audio = decode_audio(data, rate, max_seconds)
    except ApiError as exc:
        event(f"ApiError {exc.status_code} {exc.code}")
        assert 400 <= exc.status_code < 500, f"{exc.status_code}: {exc.message}"
        return exc
    event("decoded")
    samples = audio.samples
    assert audio.rate == rate and samples.dtype == np.float32 and samples.ndim == 1
    assert samples.flags.c_contiguous and len(samples) >= MIN_SAMPLES
    assert np.isfinite(samples).all(), "decoded audio holds NaN or infinite samples"
    assert audio.seconds <= max_seconds + 0.01, f"{audio.seconds} s decoded with a {max_seconds} s limit"
    return audio


Mutation = tuple[str, int, Any]
FIELDS = [0, 1, 2, 255, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 8000, 16000, 44100]
mutations = st.lists(
    st.tuples(st.just("u16"), st.integers(0, 63), st.sampled_from(FIELDS))
    | st.tuples(st.just("u32"), st.integers(0, 63), st.sampled_from(FIELDS))
    | st.tuples(st.just("flip"), st.integers(0), st.integers(1, 255))
    | st.tuples(st.just("insert"), st.integers(0), st.binary(min_size=1, max_size=16))
    | st.tuples(st.just("delete"), st.integers(0), st.integers(1, 64))
    | st.tuples(st.just("truncate"), st.integers(0), st.none()),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, ops: list[Mutation]) -> bytes:
    """Apply edits: u16/u32 overwrite a little-endian header field, the rest work anywhere (positions wrap)."""
    out = bytearray(data)
    for op, pos, arg in ops:
        at = pos % (len(out) + 1)
        if op in ("u16", "u32"):
            field = struct.pack("<H" if op == "u16" else "<I", arg & (0xFFFF if op == "u16" else 0xFFFFFFFF))
            out[at : at + len(field)] = field
        elif op == "flip" and at < len(out):
            out[at] ^= arg
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at : at + arg]
        elif op == "truncate":
            del out[at:]
    return bytes(out)


@FUZZ
@given(st.binary(max_size=4096) | st.tuples(st.sampled_from(MAGIC), st.binary(max_size=4096)).map(b"".join), rates)
@example(b"", 16000)
def test_random_bytes_decode_or_raise_4xx(data: bytes, rate: int) -> None:
    _check_decode(data, rate, 30.0)


@FUZZ
@given(signals(max_frames=2000), mutations, rates, limits)
@example(Signal("WAV", "FLOAT", 44100, 1, 2000, 0), [("insert", 100, b"\xff\xff\x7f\x7f" * 4)], 16000, 30.0)  # all NaN
def test_mutated_files_decode_or_raise_4xx(signal: Signal, ops: list[Mutation], rate: int, limit: float) -> None:
    _check_decode(_mutate(signal.encode(), ops), rate, limit)


@FUZZ
@given(signals(max_frames=2000), signals(max_frames=2000), st.integers(0), st.integers(0), rates)
@example(Signal("WAV", "FLOAT", 22050, 1, 2000, 0), Signal("WAV", "FLOAT", 8000, 1, 2000, 1, 3.4e38), 44, 44, 8000)
def test_spliced_files_decode_or_raise_4xx(first: Signal, second: Signal, cut: int, resume: int, rate: int) -> None:
    """The head of one file followed by the tail of another (possibly of another format), as a broken upload is."""
    head, tail = first.encode(), second.encode()
    _check_decode(head[: cut % (len(head) + 1)] + tail[resume % (len(tail) + 1) :], rate, 30.0)


@FUZZ
@given(signals(extreme=True), rates, limits)
@example(Signal("WAV", "FLOAT", 44100, 1, 2000, 0, 3.4e38), 16000, 30.0)  # finite in, NaN out of soxr.resample
def test_valid_files_decode_to_their_length(signal: Signal, rate: int, limit: float) -> None:
    """A valid file gives frames x rate / its rate samples (+-1), its own mixed-down samples at its own rate, or the
    400 (too short) and 413 (too long) its length calls for; float samples far outside [-1, 1] may get a 400."""
    result = _check_decode(signal.encode(), rate, limit)
    expected = signal.frames * rate / signal.rate
    if signal.scale > 1 and isinstance(result, ApiError) and result.code == "invalid_audio":
        return  # samples far outside [-1, 1] may be refused (a stereo mixdown of 3.4e38 overflows float32)
    if signal.frames / signal.rate > limit:
        assert isinstance(result, ApiError) and (result.status_code, result.code) == (413, "audio_too_long")
    elif expected < MIN_SAMPLES - 1:
        assert isinstance(result, ApiError) and result.status_code == 400
        assert result.code in ("audio_too_short", "empty_audio")  # libsndfile writes no bytes for an empty FLAC
    elif expected > MIN_SAMPLES + 1:
        assert isinstance(result, Audio), f"a valid {signal} was refused: {result}"
        assert abs(len(result.samples) - expected) <= 1
        if signal.rate == rate and signal.subtype in STEP:  # lossless, not resampled: its own samples, mixed down
            mono = signal.samples().astype(np.float64).mean(axis=1)
            np.testing.assert_allclose(result.samples, mono, rtol=1e-6, atol=STEP[signal.subtype] + 1e-7)
