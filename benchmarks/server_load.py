"""Server path: a bounded load generator against a real Chorus on 127.0.0.1, next to direct engine calls.

Runs `chorus serve` in its own process, as deployed. Measures, in one run and on the same backbone: throughput
(audio seconds per wall second) and p50/p95 latency at each concurrency, and the overhead of HTTP + decoding +
queueing over calling the engine directly for one clip at concurrency 1 (target: at most 5%). The direct engine
runs in a fresh process of its own that does nothing else, so a setting the server's other threads change
process-wide (a loader thread's `torch.set_num_threads(1)` once made the server 1.7x slower) shows up as overhead
instead of slowing both sides alike; both sides report the CPU cores they kept busy while inferring.

    python -m benchmarks.server_load [--preset base] [--clip 5] [--requests 24] [--concurrency 1 4 16]
                                     [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import soundfile

from benchmarks.adapter_cold_load import percentile
from chorus_server.background import ServerProcess
from chorus_server.engine import Adapter, Engine, load_adapter
from chorus_server.engine.random_model import write_random_model

T = TypeVar("T")


def clip_bytes(seconds: float, seed: int = 0) -> tuple[np.ndarray, bytes]:
    gen = np.random.default_rng(seed)
    audio = (0.1 * gen.standard_normal(int(seconds * 16000))).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="WAV", subtype="PCM_16")
    pcm = soundfile.read(io.BytesIO(buffer.getvalue()), dtype="float32")[0]
    return pcm, buffer.getvalue()


async def load(url: str, wav: bytes, adapters: list[str], requests: int, concurrency: int) -> dict[str, float]:
    """`requests` POSTs, at most `concurrency` at a time, adapters round-robin."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one(i: int) -> None:
            async with gate:
                started = time.perf_counter()
                files = {"file": ("clip.wav", wav, "audio/wav")}
                response = await client.post(
                    "/v1/audio/transcriptions", files=files, data={"model": adapters[i % len(adapters)]}
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    return {"wall": wall, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "n": requests}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_child(model: Path, adapter_path: Path, clip: float, dtype: str, device: str) -> None:
    """The direct engine in a process of its own: per line on stdin, one transcription of the clip on an
    inference thread (as in the server); prints its wall seconds and the cores busy meanwhile. Built on that
    thread too, so the process holds one OpenMP team, the best a direct caller gets (engine/threads.py)."""
    inference_thread = ThreadPoolExecutor(1)

    def build() -> tuple[Engine, Adapter]:
        engine = Engine.from_pretrained(model, device=device, dtype=dtype).engine
        return engine, engine.prepare(load_adapter(adapter_path))

    engine, adapter = inference_thread.submit(build).result()
    audio, _ = clip_bytes(clip)
    print("ready", flush=True)
    for _ in sys.stdin:
        cpu, started = time.process_time(), time.perf_counter()
        inference_thread.submit(engine.transcribe, [audio], [adapter]).result()
        wall = time.perf_counter() - started
        print(f"{wall} {(time.process_time() - cpu) / wall}", flush=True)


@contextmanager
def direct_engine(model: Path, adapter_path: Path, clip: float, dtype: str, device: str) -> Iterator[Any]:
    """A fresh `engine_child` process; yields `once() -> (wall seconds, busy cores)`."""
    args = [str(model), str(adapter_path), str(clip), dtype, device]
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server_load", "--child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the direct-engine process failed to start")

        def once() -> tuple[float, float]:
            child.stdin.write("go\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            wall, cores = child.stdout.readline().split()  # type: ignore[union-attr]
            return float(wall), float(cores)

        yield once
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def settle(value: T) -> T:
    """Pass `value` through after a pause: the two processes' OpenMP threads spin for a while after their work,
    and each half of a pair must start on an idle machine."""
    time.sleep(0.5)
    return value


def _sums(url: str) -> dict[str, float]:
    """Cumulative request and inference seconds from the server's /metrics."""
    names = {"chorus_request_duration_seconds_sum": "request", "chorus_inference_duration_seconds_sum": "inference"}
    sums = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            sums[names[name]] = float(value)
    return sums


@contextmanager
def server_process(model: Path, store: Path, dtype: str, device: str) -> Iterator[tuple[str, int]]:
    """`chorus serve` in its own process (as deployed), on a free port of 127.0.0.1; yields its URL and pid."""
    env = {
        "CHORUS_BACKBONE": str(model),
        "CHORUS_STORE": str(store),
        "CHORUS_DTYPE": dtype,
        "CHORUS_DEVICE": device,
        "CHORUS_DATA_DIR": str(store.parent),
        "CHORUS_VAD__ENABLED": "false",  # synthetic clips, not speech: measure serving, not detection
    }
    with ServerProcess(env, store.parent, args=("--log-level", "warning")) as server:
        assert server.process is not None
        yield server.url, server.process.pid


def run(
    preset: str, clip: float, requests: int, concurrency: list[int], dtype: str, device: str, pair_runs: int = 15
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model"
        paths = write_random_model(model, preset, num_adapters=4, seed=0)
        _, wav = clip_bytes(clip)
        results: dict[str, Any] = {"preset": preset, "clip_seconds": clip, "dtype": dtype, "levels": {}}
        with (
            direct_engine(model, paths[0], clip, dtype, device) as direct_once,
            server_process(model, Path(scratch) / "store", dtype, device) as (url, pid),
            httpx.Client(timeout=300) as client,
        ):
            for path in paths:
                client.put(f"{url}/v1/adapters/{path.stem}", content=path.read_bytes()).raise_for_status()
            names = [p.stem for p in paths]
            files = {"file": ("clip.wav", wav, "audio/wav")}

            def http_once() -> tuple[float, float]:
                cpu, started = process_cpu_seconds(pid), time.perf_counter()
                response = client.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": names[0]})
                response.raise_for_status()
                wall = time.perf_counter() - started
                return wall, (process_cpu_seconds(pid) - cpu) / wall

            http_once(), direct_once()  # warm-up: adapter resident, kernels primed
            # Pairs of (direct call, HTTP request) back to back; the median of the per-pair ratios is robust to
            # the slow drift of a shared machine, which hits both halves of a pair alike.
            before = _sums(url)
            pairs = [(settle(direct_once()), settle(http_once())) for _ in range(pair_runs)]
            results["direct_seconds"] = statistics.median(d[0] for d, _ in pairs)
            results["http_c1_seconds"] = statistics.median(h[0] for _, h in pairs)
            results["overhead"] = statistics.median(h[0] / d[0] for d, h in pairs) - 1
            results["direct_cores"] = statistics.median(d[1] for d, _ in pairs)
            results["server_cores"] = statistics.median(h[1] for _, h in pairs)
            # The server's own view, immune to client-side noise: request time beyond the forward passes; and the
            # split of the end-to-end overhead: HTTP outside the server's handler, the handler beyond the forward
            # passes, and the forward passes in the server against the same forward in a fresh process.
            after = _sums(url)
            request, inference = (after[k] - before[k] for k in ("request", "inference"))
            results["server_side_overhead"] = request / inference - 1
            results["outside_handler_overhead"] = sum(h[0] for _, h in pairs) / request - 1
            results["server_forward_ratio"] = inference / sum(d[0] for d, _ in pairs)
            for c in concurrency:
                level = asyncio.run(load(url, wav, names, requests, c))
                level["audio_per_second"] = requests * clip / level["wall"]
                results["levels"][c] = level
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=15, help="direct/HTTP pairs for the overhead ratio")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--child", nargs=5, metavar=("MODEL", "ADAPTER", "CLIP", "DTYPE", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        model, adapter, clip, dtype, device = args.child
        engine_child(Path(model), Path(adapter), float(clip), dtype, device)
        return
    results = run(args.preset, args.clip, args.requests, args.concurrency, args.dtype, args.device, args.pairs)
    print(f"{args.preset} {args.dtype}, {args.clip:.0f} s clip")
    print(
        f"direct engine {results['direct_seconds'] * 1000:.1f} ms, HTTP c=1 {results['http_c1_seconds'] * 1000:.1f}"
        f" ms, overhead {results['overhead'] * 100:+.1f}% end to end (target <= +5%), "
        f"{results['server_side_overhead'] * 100:+.1f}% inside the server; cores busy: engine "
        f"{results['direct_cores']:.2f}, server {results['server_cores']:.2f}"
    )
    print(
        f"split: HTTP outside the handler {results['outside_handler_overhead'] * 100:+.1f}%, handler beyond the"
        f" forward {results['server_side_overhead'] * 100:+.1f}%, the server's forward / a fresh process's"
        f" {results['server_forward_ratio']:.3f}"
    )
    for c, level in results["levels"].items():
        print(
            f"c={c:<3} {level['audio_per_second']:7.1f} audio s/s  p50 {level['p50']:.3f} s  p95 {level['p95']:.3f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
