"""Load test: tenants sharing one `chorus serve` — the capacity curve, a noisy neighbour, 3x overload, slow and idle
connections. Every scenario is bounded in time. Run against this checkout and, for comparison in the same run,
against another one (`--before DIR`, e.g. a `git worktree` of an older commit).

    python -m benchmarks.loadtest [--seconds 30] [--before /tmp/chorus-before] [--json out.json]
    make loadtest

Tenant B sends the demo's 3.54 s English sample every 0.25 s; tenant A sends 64.5 s clips (the demo samples
joined) from N concurrent workers. Client and server share the machine, as in the measurements they are
compared with (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.adapter_cold_load import percentile
from chorus_server.background import ServerProcess
from chorus_server.demo_model import DEMO_DIR

KEYS = {"ka": "tenant-a", "kb": "tenant-b"}
ADMIN = "root"
SAMPLES = DEMO_DIR / "samples"
B_EVERY = 0.25  # seconds between B's requests


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def clips() -> tuple[bytes, bytes]:
    """(B's clip, A's 64.5 s clip)."""
    b = (SAMPLES / "en-1.wav").read_bytes()
    pieces, rate = [], 16000
    for path in sorted(SAMPLES.glob("*.wav")):
        audio, rate = soundfile.read(path, dtype="float32")
        pieces.append(audio)
    joined = np.concatenate(pieces)
    a = np.resize(joined, int(64.5 * rate))
    return b, wav_bytes(a, rate)


def batch_seconds_p95(before: str, after: str) -> float | None:
    """p95 of the forward-pass time over the batches between two /metrics scrapes (bucket interpolation)."""

    def buckets(text: str) -> dict[float, float]:
        for family in text_string_to_metric_families(text):
            if family.name == "chorus_inference_duration_seconds":
                return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
        return {}

    first, second = buckets(before), buckets(after)
    counts = sorted((le, second[le] - first.get(le, 0.0)) for le in second)
    total = counts[-1][1] if counts else 0
    if not total:
        return None
    previous_le, previous_count = 0.0, 0.0
    for le, count in counts:
        if count >= 0.95 * total:
            if le == float("inf"):
                return previous_le
            share = (0.95 * total - previous_count) / max(count - previous_count, 1e-9)
            return previous_le + share * (le - previous_le)
        previous_le, previous_count = le, count
    return None


async def tenant_b(client: httpx.AsyncClient, clip: bytes, seconds: float) -> dict[str, Any]:
    """Open loop: one request every B_EVERY s for `seconds`, whatever the answers."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def one() -> None:
        started = time.perf_counter()
        try:
            response = await client.post(
                "/v1/audio/transcriptions",
                files={"file": ("b.wav", clip, "audio/wav")},
                data={"model": "en"},
                headers={"Authorization": "Bearer kb"},
            )
            status = str(response.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        statuses[status] = statuses.get(status, 0) + 1
        if status == "200":
            latencies.append(time.perf_counter() - started)

    tasks = []
    begin = time.perf_counter()
    for i in range(int(seconds / B_EVERY)):
        await asyncio.sleep(max(0.0, begin + i * B_EVERY - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    sent = len(tasks)
    return {
        "sent": sent,
        "ok": len(latencies),
        "statuses": statuses,
        "p50_ms": 1000 * percentile(latencies, 0.5) if latencies else None,
        "p95_ms": 1000 * percentile(latencies, 0.95) if latencies else None,
        "throughput_ratio": len(latencies) / sent,
    }


async def tenant_a(client: httpx.AsyncClient, clip: bytes, workers: int, stop: asyncio.Event) -> dict[str, int]:
    """Closed loop: `workers` concurrent posters of A's long clip until `stop`."""
    statuses: dict[str, int] = {}

    async def worker() -> None:
        while not stop.is_set():
            try:
                response = await client.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("a.wav", clip, "audio/wav")},
                    data={"model": "en"},
                    headers={"Authorization": "Bearer ka"},
                )
                status = str(response.status_code)
                if response.status_code in (429, 503):
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


async def scenario(url: str, b_clip: bytes, a_clip: bytes, seconds: float, a_workers: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=a_workers + 200, max_keepalive_connections=a_workers + 200)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        before = (await client.get("/metrics", headers=admin)).text
        stop = asyncio.Event()
        flood = asyncio.ensure_future(tenant_a(client, a_clip, a_workers, stop)) if a_workers else None
        if flood is not None:
            await asyncio.sleep(3.0)  # A's backlog builds up first
        b = await tenant_b(client, b_clip, seconds)
        stop.set()
        a = await flood if flood is not None else {}
        after = (await client.get("/metrics", headers=admin)).text
    return {"a_workers": a_workers, "b": b, "a": a, "batch_p95_s": batch_seconds_p95(before, after)}


async def idle_connections(url: str, b_clip: bytes, count: int, seconds: float) -> dict[str, Any]:
    """`count` idle sockets held open, then B's latency, then how many the server has closed."""
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:
            break
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        b = await tenant_b(client, b_clip, seconds)
    closed = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return {"opened": len(sockets), "closed_by_server": closed, "b": b}


def run_server(checkout: Path | None, scratch: Path) -> ServerProcess:
    env = {
        "CHORUS_STORE": str(scratch / "store"),
        "CHORUS_DATA_DIR": str(scratch / "data"),
        "CHORUS_AUTH__KEYS": json.dumps(KEYS),
        "CHORUS_AUTH__ADMIN_KEYS": json.dumps([ADMIN]),
        "CHORUS_VAD__ENABLED": "false",  # synthetic clips, not speech: measure serving, not detection
    }
    if checkout is not None:  # an older checkout's code, imported ahead of this one's
        paths = [checkout / "server", checkout / "adapter_store", checkout / "clients"]
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    scratch.mkdir(parents=True, exist_ok=True)
    return ServerProcess(env, scratch)


def measure(checkout: Path | None, seconds: float) -> dict[str, Any]:
    b_clip, a_clip = clips()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        server = stack.enter_context(run_server(checkout, Path(tmp) / "run"))
        results: dict[str, Any] = {}
        for name, workers in (("b_alone", 0), ("a_12_concurrent", 12), ("a_64_concurrent", 64)):
            results[name] = asyncio.run(scenario(server.url, b_clip, a_clip, seconds, workers))
            print(name, json.dumps(results[name]), flush=True)
        results["idle_1000"] = asyncio.run(idle_connections(server.url, b_clip, 1000, min(seconds, 15)))
        print("idle_1000", json.dumps(results["idle_1000"]), flush=True)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each scenario's measurement")
    parser.add_argument("--before", type=Path, help="another checkout to measure first, for comparison")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.before:
        print(f"== before: {args.before}", flush=True)
        results["before"] = measure(args.before, args.seconds)
    print("== this checkout", flush=True)
    results["after"] = measure(None, args.seconds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
