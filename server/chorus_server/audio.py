"""Uploaded bytes -> mono float32 audio at the backbone's sampling rate.

libsndfile (via soundfile) reads wav/flac/ogg/opus/mp3; containers it lacks (m4a/mp4/webm, …) go through PyAV when
it is installed (`pip install chorus-asr[av]`). Length limits are checked from the header before samples are
decoded, so a long file is refused without decoding it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from chorus_server.errors import ApiError

logger = logging.getLogger(__name__)

Source = bytes | BinaryIO  # an upload: its bytes, or a seekable file (a spooled upload stays on disk)
MIN_SAMPLES = 400  # one wav2vec 2.0 frame (25 ms at 16 kHz)
MAX_SAMPLE = 1e4  # full scale is ±1; float files beyond this carry no sound, only overflow risk


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # (L,) float32 at `rate`
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def _too_long(seconds: float, max_seconds: float) -> ApiError:
    return ApiError(
        413, f"audio is {seconds:.1f} s long; the limit is {max_seconds:.0f} s", "audio_too_long", param="file"
    )


def _open(source: Source) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    source.seek(0)
    return source


def _read_soundfile(source: Source, max_seconds: float) -> tuple[np.ndarray, int]:
    """(L,) mono float32 and its rate; mixed down block by block into one array, so neither multichannel audio nor
    a list of blocks beside their concatenation ever sits in memory whole."""
    with soundfile.SoundFile(_open(source)) as f:
        if f.frames > 0 and f.samplerate > 0 and f.frames / f.samplerate > max_seconds:
            raise _too_long(f.frames / f.samplerate, max_seconds)
        samples = np.empty(max(f.frames, 0), np.float32)  # (frames,) filled in place
        filled, extra = 0, []
        for block in f.blocks(blocksize=max(1, f.samplerate) * 10, dtype="float32", always_2d=True):
            mono = block.mean(axis=1, dtype=np.float64).astype(
                np.float32
            )  # (block,); float64: huge samples stay finite
            room = min(len(mono), len(samples) - filled)
            samples[filled : filled + room] = mono[:room]
            filled += room
            if room < len(mono):  # the header under-counted its frames
                extra.append(mono[room:])
        if extra:
            return np.concatenate([samples[:filled], *extra]), int(f.samplerate)
        return (samples if filled == len(samples) else samples[:filled].copy()), int(f.samplerate)


@dataclass(frozen=True)
class Probe:
    """What a file's header says: its length, and the most bytes decoding it to `rate` holds at once."""

    seconds: float
    frames: int
    source_rate: int

    def decode_bytes(self, rate: int) -> int:
        """Source-rate mono float32 (filled in place), plus the resampled copy when the rates differ."""
        resampled = int(self.seconds * rate) + 1 if rate != self.source_rate else 0
        return 4 * (self.frames + resampled)


def probe(source: Source) -> Probe | None:
    """The audio's length from its header alone (None: unknown without decoding, or not a readable file)."""
    try:
        info = soundfile.info(_open(source))
    except (soundfile.LibsndfileError, RuntimeError, ValueError):
        return None
    if info.frames > 0 and info.samplerate > 0:
        return Probe(info.frames / info.samplerate, info.frames, info.samplerate)
    return None


def probe_seconds(data: Source) -> float | None:
    """The audio's duration from its header alone (None: unknown without decoding, or not a readable file)."""
    found = probe(data)
    return found.seconds if found else None


def _read_av(source: Source, max_seconds: float) -> tuple[np.ndarray, int]:
    """(L,) mono float32 and its rate, through FFmpeg's decoders (PyAV)."""
    import av  # optional dependency

    with av.open(_open(source), mode="r") as container:
        if not container.streams.audio:
            raise ApiError(415, "the file has no audio stream", "unsupported_audio", param="file")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate or 16000)
        pieces: list[np.ndarray] = []
        total = 0
        rate = stream.rate or 16000
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                piece = out.to_ndarray().reshape(-1)
                pieces.append(piece)
                total += len(piece)
                if total / rate > max_seconds:  # enforced while decoding: containers may not declare a duration
                    raise _too_long(total / rate, max_seconds)
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return samples.astype(np.float32, copy=False), int(rate)


def _av_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def decode_audio(data: Source, rate: int, max_seconds: float) -> Audio:
    """Decode, mix to mono and resample to `rate`. Raises `ApiError` 400/413/415 with a message for the caller."""
    if _empty(data):
        raise ApiError(400, "the uploaded file is empty", "empty_audio", param="file")
    try:
        samples, source_rate = _read_soundfile(data, max_seconds)
    except soundfile.LibsndfileError as sf_error:
        if not _av_available():
            raise ApiError(
                415,
                f"cannot decode the audio ({sf_error}); send wav, flac, ogg, opus or mp3 "
                "(m4a/mp4/webm need the server's optional PyAV extra)",
                "unsupported_audio",
                param="file",
            ) from None
        try:
            samples, source_rate = _read_av(data, max_seconds)
        except ApiError:
            raise
        except Exception as av_error:  # PyAV raises many types for garbage input
            raise ApiError(
                415,
                f"cannot decode the file as audio ({type(av_error).__name__}): is it a sound file? "
                "Send wav, flac, ogg, opus, mp3, m4a, mp4 or webm",
                "unsupported_audio",
                param="file",
            ) from None
    mono = samples  # (L,) at source_rate
    del samples  # so the source-rate array is freed as soon as its resampled copy replaces `mono`
    if not np.isfinite(mono).all():
        raise ApiError(400, "the audio contains NaN or infinite samples", "invalid_audio", param="file")
    if len(mono) and np.abs(mono).max() > MAX_SAMPLE:
        # Float files may exceed ±1 a little; values this large are not sound and would overflow resampling.
        raise ApiError(400, f"the audio has samples beyond ±{MAX_SAMPLE:g}", "invalid_audio", param="file")
    if source_rate != rate and len(mono):
        mono = soxr.resample(mono, source_rate, rate).astype(np.float32, copy=False)
    if len(mono) < MIN_SAMPLES:
        raise ApiError(
            400,
            f"the audio is too short: {len(mono)} samples at {rate} Hz; at least {MIN_SAMPLES} (25 ms) are needed",
            "audio_too_short",
            param="file",
        )
    return Audio(np.ascontiguousarray(mono, dtype=np.float32), rate)


def _empty(source: Source) -> bool:
    if isinstance(source, bytes):
        return not source
    source.seek(0, io.SEEK_END)
    return source.tell() == 0
