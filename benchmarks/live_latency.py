"""Live transcription latency: audio in -> delta out, for 1, 4 and 16 realtime sessions, and beside file traffic.

Runs `chorus serve` (the bundled demo model) in its own process. Each session streams demo recordings at real
time in 100 ms appends (no server VAD: one turn per recording, committed at its end). A delta carries
`audio_end_ms`, the end of the audio its text accounts for; its latency is the time from sending the append
that completed that audio to receiving the delta. It includes the step's lookahead wait (CHORUS_REALTIME__
LOOKAHEAD_MS), queueing and compute, not the up-to-one-step wait of audio at the start of a step.

    python -m benchmarks.live_latency [--seconds 20] [--streams 1 4 16] [--file-clients 2] [--json out.json]

`--compare` measures the scheduler instead (docs/benchmarks.md, "Live transcription latency"): 4 sessions alone,
4 clients posting `--file-seconds` files alone, and both together, once with priority classes off (one queue,
as before they existed: CHORUS_BATCH__PRIORITIES=false) and once on, each in a server of its own. File throughput
is audio seconds transcribed per second of wall time, from the first post to the last answer.

    python -m benchmarks.live_latency --compare [--seconds 30] [--file-seconds 60] [--json out.json]

`--backbone base` runs the comparison on a random wav2vec2-base-sized backbone (its adapter uploaded as `en`)
instead of the demo model; its text is noise, its timing is a real base-sized model's. `--sessions N
--file-clients-beside M` set the mix of the comparison (default 4 and 4).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from benchmarks.adapter_cold_load import percentile
from chorus_server.background import ServerProcess
from chorus_server.demo_model import DEMO_DIR
from chorus_server.engine.random_model import write_random_model
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


def run_files(url: str, audio: bytes, stop_at: float, done: list[float], finished: list[float] | None = None) -> None:
    """Post `audio` again and again until `stop_at`; `done`: each answer's latency, `finished`: when it came."""
    with httpx.Client(timeout=300) as client:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            response = client.post(
                f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", audio)}, data={"model": "en"}
            )
            if response.status_code == 200:
                done.append(time.monotonic() - started)
                if finished is not None:
                    finished.append(time.monotonic())


def file_audio(clips: list[np.ndarray], seconds: float) -> bytes:
    """`seconds` of the demo recordings back to back, as a WAV file."""
    repeats = int(seconds * RATE // sum(len(clip) for clip in clips)) + 1
    buffer = io.BytesIO()
    soundfile.write(
        buffer, np.concatenate(clips * repeats)[: int(seconds * RATE)], RATE, format="WAV", subtype="PCM_16"
    )
    return buffer.getvalue()


def batch_seconds(url: str) -> tuple[float, float]:
    """(forward-pass seconds so far, batches so far), from /metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("chorus_inference_duration_seconds_sum", "chorus_inference_duration_seconds_count"):
            values[name] = float(value)
    return values.get("chorus_inference_duration_seconds_sum", 0.0), values.get(
        "chorus_inference_duration_seconds_count", 0.0
    )


def measure(
    url: str, streams: int, files: int, seconds: float, clips: list[np.ndarray], file_seconds_each: float = 20.0
) -> dict[str, Any]:
    latencies: list[float] = []
    file_seconds: list[float] = []
    finished: list[float] = []
    before = batch_seconds(url)
    started = time.monotonic()
    stop_at = started + seconds
    audio = file_audio(clips, file_seconds_each)
    threads = [
        threading.Thread(target=run_stream, args=(url, clips, stop_at, latencies, i)) for i in range(streams)
    ] + [threading.Thread(target=run_files, args=(url, audio, stop_at, file_seconds, finished)) for _ in range(files)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = batch_seconds(url)
    span = max(finished) - started if finished else None
    return {
        "streams": streams,
        "file_clients": files,
        "deltas": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "files_done": len(file_seconds),
        "file_p50_s": round(statistics.median(file_seconds), 2) if file_seconds else None,
        "file_audio_per_s": round(len(finished) * file_seconds_each / span, 2) if span else None,
        "batch_ms": round(1000 * (after[0] - before[0]) / max(1.0, after[1] - before[1]), 1),
    }


def wait_idle(url: str, timeout: float = 120.0) -> None:
    """Until the server has closed every session of the previous configuration (their final passes done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics").text
        if "\nchorus_realtime_sessions 0.0" in metrics and "\nchorus_queue_depth 0.0" in metrics:
            return
        time.sleep(0.5)


def random_base(folder: Path) -> tuple[dict[str, str], Callable[[str], None]]:
    """A random wav2vec2-base-sized backbone in `folder`: the servers' settings, and a setup that uploads its
    adapter as `en` (the name the sessions and file clients ask for)."""
    adapters = write_random_model(folder, "base", num_adapters=1, seed=0)

    def upload(url: str) -> None:
        httpx.put(f"{url}/v1/adapters/en", content=adapters[0].read_bytes(), timeout=120).raise_for_status()

    return {"CHORUS_BACKBONE": str(folder), "CHORUS_SEED_STORE": "false"}, upload


def compare(
    seconds: float,
    file_seconds: float,
    clips: list[np.ndarray],
    extra: dict[str, str],
    rounds: int = 2,
    warm_up: float = 15.0,
    sessions: int = 4,
    file_clients: int = 4,
    setup: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """4 sessions alone, 4 file clients alone, and both, with the priority classes off ("before") and on: two
    servers, measured in turn configuration by configuration, `rounds` times, so that load from elsewhere on a
    shared machine falls on both alike. Returns every row, then per scheduler and configuration the medians."""
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for scheduler, on in (("before", "false"), ("after", "true")):
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            env = {"CHORUS_DATA_DIR": str(scratch), **extra, "CHORUS_BATCH__PRIORITIES": on}
            servers[scheduler] = stack.enter_context(ServerProcess(env, scratch)).url
            if setup is not None:
                setup(servers[scheduler])
        configs = ((sessions, 0), (0, file_clients), (sessions, file_clients))
        for url in servers.values():
            # Untimed first: the first batches of each shape are slow on a CPU (kernels are built per shape).
            measure(url, sessions, file_clients, warm_up, clips, file_seconds)
        for _ in range(rounds):
            for streams, files in configs:
                for scheduler, url in servers.items():
                    wait_idle(url)
                    row = {"scheduler": scheduler, **measure(url, streams, files, seconds, clips, file_seconds)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = []
    for scheduler in ("before", "after"):
        for streams, files in configs:
            mine = [r for r in rows if (r["scheduler"], r["streams"], r["file_clients"]) == (scheduler, streams, files)]
            medians = {
                key: statistics.median(r[key] for r in mine if r[key] is not None)
                for key in ("p50_ms", "p95_ms", "file_audio_per_s", "batch_ms")
                if any(r[key] is not None for r in mine)
            }
            summary.append({"summary": scheduler, "streams": streams, "file_clients": files, **medians})
            print(json.dumps(summary[-1]), flush=True)
    return rows + summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per configuration")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--file-clients", type=int, default=2, help="file clients beside 4 streams (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--compare", action="store_true", help="the scheduler: priority classes off, then on")
    parser.add_argument("--file-seconds", type=float, default=60.0, help="with --compare: each posted file's length")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: measurements of each configuration")
    parser.add_argument("--env", nargs="*", default=[], help="with --compare: KEY=VALUE settings for both servers")
    parser.add_argument("--backbone", choices=["demo", "base"], default="demo", help="with --compare: the model")
    parser.add_argument("--sessions", type=int, default=4, help="with --compare: realtime sessions")
    parser.add_argument("--file-clients-beside", type=int, default=4, help="with --compare: file clients")
    args = parser.parse_args()
    clips = recordings()
    rows = []
    if args.compare:
        extra = dict(pair.split("=", 1) for pair in args.env)
        with tempfile.TemporaryDirectory() as models:
            setup = None
            if args.backbone == "base":
                settings, setup = random_base(Path(models) / "base")
                extra = {**settings, **extra}
            rows = compare(
                args.seconds,
                args.file_seconds,
                clips,
                extra,
                args.rounds,
                sessions=args.sessions,
                file_clients=args.file_clients_beside,
                setup=setup,
            )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
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
