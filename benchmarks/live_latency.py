"""Live transcription latency: audio in -> delta out, for 1, 4 and 16 realtime sessions, and beside file traffic.

Runs `chorus serve` (the bundled demo model) in its own process. Each session streams demo recordings at real
time in 100 ms appends (no server VAD: one turn per recording, committed at its end). A delta carries
`audio_end_ms`, the end of the audio its text accounts for; its latency is the time from sending the append
that completed that audio to receiving the delta. It includes the step's lookahead wait (CHORUS_REALTIME__
LOOKAHEAD_MS), queueing and compute, not the up-to-one-step wait of audio at the start of a step.

    python -m benchmarks.live_latency [--seconds 20] [--streams 1 4 16] [--file-clients 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from benchmarks.adapter_cold_load import percentile
from chorus_server.background import ServerProcess
from chorus_server.demo_model import DEMO_DIR
from chorus_server.live.wsclient import configure, open_session, send

RATE = 16000
APPEND = 1600  # samples per append: 100 ms


def recordings() -> list[np.ndarray]:
    return [soundfile.read(path, dtype="float32")[0] for path in sorted((DEMO_DIR / "samples").glob("en-*.wav"))]


def run_stream(url: str, clips: list[np.ndarray], stop_at: float, latencies: list[float], offset: int) -> None:
    """One session: recordings back to back, paced at real time, until `stop_at`."""
    sent_at: list[tuple[int, float]] = []  # (session sample where the append ends, when it was sent)
    position = 0
    with open_session(url) as ws:
        configure(ws, "en", rate=RATE, vad=None)

        def receive() -> None:
            try:
                for message in ws:
                    event = json.loads(message)
                    if event["type"] == "conversation.item.input_audio_transcription.delta":
                        end = event["audio_end_ms"] * RATE // 1000
                        sent = next((t for sample, t in sent_at if sample >= end), None)
                        if sent is not None:
                            latencies.append(time.monotonic() - sent)
            except Exception:  # the socket closed at the end of the run
                return

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        k = offset
        while time.monotonic() < stop_at:
            clip = clips[k % len(clips)]
            k += 1
            for start in range(0, len(clip), APPEND):
                chunk = clip[start : start + APPEND]
                pcm = (np.clip(chunk, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
                position += len(chunk)
                sent_at.append((position, time.monotonic()))
                send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
                time.sleep(len(chunk) / RATE)
            send(ws, {"type": "input_audio_buffer.commit"})
        time.sleep(2.0)  # the last turn's deltas
    reader.join(5)


def run_files(url: str, audio: bytes, stop_at: float, done: list[float]) -> None:
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            response = client.post(
                f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", audio)}, data={"model": "en"}
            )
            if response.status_code == 200:
                done.append(time.monotonic() - started)


def measure(url: str, streams: int, files: int, seconds: float, clips: list[np.ndarray]) -> dict[str, Any]:
    latencies: list[float] = []
    file_seconds: list[float] = []
    stop_at = time.monotonic() + seconds
    long_clip = np.concatenate(clips * 3)[: 20 * RATE]
    buffer = io.BytesIO()
    soundfile.write(buffer, long_clip, RATE, format="WAV", subtype="PCM_16")
    threads = [
        threading.Thread(target=run_stream, args=(url, clips, stop_at, latencies, i)) for i in range(streams)
    ] + [threading.Thread(target=run_files, args=(url, buffer.getvalue(), stop_at, file_seconds)) for _ in range(files)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "streams": streams,
        "file_clients": files,
        "deltas": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "files_done": len(file_seconds),
        "file_p50_s": round(statistics.median(file_seconds), 2) if file_seconds else None,
    }


def wait_idle(url: str, timeout: float = 120.0) -> None:
    """Until the server has closed every session of the previous configuration (their final passes done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics").text
        if "\nchorus_realtime_sessions 0.0" in metrics and "\nchorus_queue_depth 0.0" in metrics:
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per configuration")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--file-clients", type=int, default=2, help="file clients beside 4 streams (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    clips = recordings()
    rows = []
    with tempfile.TemporaryDirectory() as scratch, ServerProcess({"CHORUS_DATA_DIR": scratch}, Path(scratch)) as server:
        configs = [(n, 0) for n in args.streams] + ([(4, args.file_clients)] if args.file_clients else [])
        for streams, files in configs:
            wait_idle(server.url)
            row = measure(server.url, streams, files, args.seconds, clips)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
