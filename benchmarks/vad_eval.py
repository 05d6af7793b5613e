"""Voice activity detection measured on synthetic files with known pauses (docs/server.md, "Silence, pauses and
segments").

    python -m benchmarks.vad_eval [--files 40] [--seed 0]

1. Detectors: Silero VAD v6 (what the server runs), WebRTC VAD (`webrtcvad-wheels`, if installed; mode 3) and an
   energy detector (frame RMS above a threshold relative to the file's loudest frame), each through the same
   region rules (`chorus_server.vad.regions_from_probabilities`). Per 32 ms chunk against the truth: recall
   (speech kept), and the share of silence/noise kept; whole-file false alarms on silence and noise alone.
2. Segments through the server (demo model, in-process): for files of 3-5 utterances (the demo model's espeak-ng
   recordings) separated by pauses of 0.3-3 s (digital silence or noise), whether a segment boundary falls in each
   pause of >= 0.5 s, spurious boundaries, and how far segment edges lie from the speech edges. With VAD off for
   comparison (the old behaviour).
3. Throughput on half-silent audio: 120 s alternating 5 s of speech and 5 s of silence, VAD on vs off.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from chorus_server.demo_model import DEMO_DIR
from chorus_server.vad import CHUNK, VadOptions, regions_from_probabilities, speech_probabilities

RATE = 16000
SAMPLES = DEMO_DIR / "samples"
PAUSES = (0.3, 0.7, 1.5, 3.0)
Detector = Callable[[np.ndarray], np.ndarray]  # (L,) -> (ceil(L / CHUNK),) speech score in [0, 1]


def utterances() -> list[np.ndarray]:
    names = [json.loads(line)["audio"] for line in (SAMPLES / "samples.jsonl").read_text().splitlines()]
    return [soundfile.read(SAMPLES / name, dtype="float32")[0] for name in names]


def pause(seconds: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * RATE)
    if kind == "silence":
        return np.zeros(n, np.float32)
    level = {"quiet noise": 0.003, "noise": 0.02}[kind]
    return (level * rng.standard_normal(n)).astype(np.float32)


@dataclass
class File:
    audio: np.ndarray
    speech: list[tuple[int, int]]  # true utterance spans (samples)
    pauses: list[tuple[int, int]]  # spans between utterances


def make_file(pool: list[np.ndarray], rng: np.random.Generator, kind: str) -> File:
    pieces, speech, pauses, position = [pause(0.5, kind, rng)], [], [], int(0.5 * RATE)
    for i in range(int(rng.integers(3, 6))):
        if i:
            gap = pause(float(rng.choice(PAUSES)), kind, rng)
            pauses.append((position, position + len(gap)))
            pieces.append(gap)
            position += len(gap)
        utterance = pool[int(rng.integers(len(pool)))]
        speech.append((position, position + len(utterance)))
        pieces.append(utterance)
        position += len(utterance)
    pieces.append(pause(0.5, kind, rng))
    return File(np.concatenate(pieces), speech, pauses)


def energy_detector(samples: np.ndarray) -> np.ndarray:
    """1 where a chunk's RMS is within 35 dB of the file's loudest chunk and above -60 dBFS, else 0."""
    count = -(-len(samples) // CHUNK)
    padded = np.pad(samples, (0, count * CHUNK - len(samples))).reshape(count, CHUNK)
    db = 20 * np.log10(np.sqrt((padded**2).mean(axis=1)) + 1e-9)
    return ((db > db.max() - 35) & (db > -60)).astype(np.float32)


def webrtc_detector() -> Detector | None:
    try:
        import webrtcvad
    except ImportError:
        return None
    vad = webrtcvad.Vad(3)

    def detect(samples: np.ndarray) -> np.ndarray:
        count = -(-len(samples) // CHUNK)
        pcm = (np.clip(np.pad(samples, (0, count * CHUNK - len(samples))), -1, 1) * 32767).astype(np.int16)
        frames = pcm[: len(pcm) // 480 * 480].reshape(-1, 480)  # 30 ms frames
        flags = np.array([vad.is_speech(f.tobytes(), RATE) for f in frames], np.float32)
        centres = (np.arange(count) * CHUNK + CHUNK // 2) // 480
        return flags[np.minimum(centres, len(flags) - 1)] if len(flags) else np.zeros(count, np.float32)

    return detect


def truth_mask(file: File) -> np.ndarray:
    count = -(-len(file.audio) // CHUNK)
    mask = np.zeros(count, bool)
    for start, stop in file.speech:
        mask[start // CHUNK : -(-stop // CHUNK)] = True
    return mask


def compare_detectors(files: list[File], detectors: dict[str, Detector]) -> dict[str, dict[str, float]]:
    options = VadOptions(padding_ms=0)
    results = {}
    rng = np.random.default_rng(1)
    for name, detector in detectors.items():
        kept_speech = kept_other = speech_total = other_total = 0
        seconds = 0.0
        detector(files[0].audio)  # warm-up (Silero loads its weights on first use)
        started = time.perf_counter()
        for file in files:
            scores = detector(file.audio)
            kept = np.zeros(len(scores), bool)
            for region in regions_from_probabilities(scores, len(file.audio), options):
                kept[region.start // CHUNK : -(-region.stop // CHUNK)] = True
            truth = truth_mask(file)
            kept_speech += int((kept & truth).sum())
            kept_other += int((kept & ~truth).sum())
            speech_total += int(truth.sum())
            other_total += int((~truth).sum())
            seconds += len(file.audio) / RATE
        elapsed = time.perf_counter() - started
        alarms = 0
        for kind in ("silence", "quiet noise", "noise"):
            for _ in range(5):
                audio = pause(10.0, kind, rng)
                alarms += bool(regions_from_probabilities(detector(audio), len(audio), options))
        results[name] = {
            "speech_recall": kept_speech / speech_total,
            "non_speech_kept": kept_other / other_total,
            "false_alarm_files": alarms / 15,
            "x_real_time": seconds / elapsed,
        }
    return results


def measure_segments(files: list[File], vad: bool) -> dict[str, float]:
    from tests.server.conftest import encode, make_settings, running_app, transcribe

    found = missed = spurious = 0
    by_length: dict[float, list[bool]] = {length: [] for length in PAUSES}
    end_errors: list[float] = []
    start_errors: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, running_app(make_settings(Path(tmp), None, vad={"enabled": vad})) as c:  # type: ignore[arg-type]
        for file in files:
            body = transcribe(c, encode(file.audio), "en", response_format="verbose_json").json()
            segments = body["segments"]
            bounds = [(a["end"], b["start"]) for a, b in itertools.pairwise(segments)]
            for start, stop in file.pauses:
                split = any(start / RATE - 0.7 <= end and begin <= stop / RATE + 0.3 for end, begin in bounds)
                by_length[round((stop - start) / RATE, 1)].append(split)
                if (stop - start) / RATE >= 0.5:
                    found, missed = found + split, missed + (not split)
            inside = [
                (end, begin)
                for end, begin in bounds
                if not any(a / RATE - 0.7 <= end and begin <= b / RATE + 0.3 for a, b in file.pauses)
            ]
            spurious += len(inside)
            for seg in segments:
                start_errors.append(min(abs(seg["start"] - a / RATE) for a, _ in file.speech))
                end_errors.append(min(abs(seg["end"] - b / RATE) for _, b in file.speech))
    return {
        "pauses_split": found / max(1, found + missed),
        **{f"split_{length}s": sum(v) / max(1, len(v)) for length, v in by_length.items()},
        "spurious_boundaries": spurious,
        "start_error_ms_median": 1000 * statistics.median(start_errors),
        "end_error_ms_median": 1000 * statistics.median(end_errors),
    }


def half_silent(pool: list[np.ndarray], seconds: int = 120) -> np.ndarray:
    pieces, total = [], 0
    speech = np.concatenate(pool)
    while total < seconds * RATE:
        take = speech[(total // 2) % (len(speech) - 5 * RATE) :][: 5 * RATE]
        pieces += [take, np.zeros(5 * RATE, np.float32)]
        total += 10 * RATE
    return np.concatenate(pieces)


def measure_throughput(audio: np.ndarray, runs: int = 3) -> dict[str, float]:
    from tests.server.conftest import encode, make_settings, running_app, transcribe

    data, seconds = encode(audio), len(audio) / RATE
    result = {}
    for vad in (False, True):
        with (
            tempfile.TemporaryDirectory() as tmp,
            running_app(make_settings(Path(tmp), None, vad={"enabled": vad})) as c,
        ):  # type: ignore[arg-type]
            transcribe(c, data, "en")  # warm-up
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                assert transcribe(c, data, "en").status_code == 200
                times.append(time.perf_counter() - started)
        result["vad_on" if vad else "vad_off"] = seconds / min(times)
    started = time.perf_counter()
    speech_probabilities(audio)
    result["detector_x_real_time"] = seconds / (time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="synthetic files per pause kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--throughput-seconds", type=int, default=120, help="length of the half-silent file")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    pool, rng = utterances(), np.random.default_rng(args.seed)
    detectors: dict[str, Detector] = {"silero": speech_probabilities, "energy": energy_detector}
    webrtc = webrtc_detector()
    if webrtc is not None:
        detectors["webrtc"] = webrtc
    report: dict[str, object] = {}
    for kind in ("silence", "quiet noise", "noise"):
        files = [make_file(pool, rng, kind) for _ in range(args.files)]
        report[f"detectors, pauses of {kind}"] = compare_detectors(files, detectors)
        report[f"segments, pauses of {kind}"] = {
            "vad": measure_segments(files, vad=True),
            "no vad": measure_segments(files, vad=False),
        }
    report["throughput on half-silent audio (x real time)"] = measure_throughput(
        half_silent(pool, args.throughput_seconds)
    )
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
