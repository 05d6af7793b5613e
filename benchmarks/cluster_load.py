"""The Ray path against a single `chorus serve`, side by side in one run, on the embedded demo model.

For each setup — `chorus serve`, `chorus serve --ray` with 1 worker and with 2 workers — 5 s clips at
concurrency 1 (latency) and 4 (throughput). Then adapter affinity with 2 workers and 5 adapters requested in
turn by 2 concurrent clients, for Chorus's router and Ray's default router: cold loads (distinct adapter-worker
pairs; 5 at best) and the share of requests that reach a worker which had served their adapter before.

    python -m benchmarks.cluster_load [--requests 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

from benchmarks.adapter_cold_load import percentile
from chorus_server.background import ServerProcess, free_port
from chorus_server.demo_model import DEMO_DIR
from chorus_server.settings import Settings

CLIP_SECONDS = 5.0


def clip() -> bytes:
    pieces = [soundfile.read(p, dtype="float32")[0] for p in sorted((DEMO_DIR / "samples").glob("en-*.wav"))]
    audio = np.resize(np.concatenate(pieces), int(CLIP_SECONDS * 16000))
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


async def load(url: str, wav: bytes, requests: int, concurrency: int, models: list[str]) -> dict[str, Any]:
    latencies: list[float] = []
    workers: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one(i: int) -> None:
            async with gate:
                model = models[i % len(models)]
                started = time.perf_counter()
                response = await client.post(
                    "/v1/audio/transcriptions", files={"file": ("c.wav", wav, "audio/wav")}, data={"model": model}
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                workers.append((model, response.headers.get("x-chorus-worker", "")))

        await one(-1)  # warm-up
        latencies.clear()
        workers.clear()
        begin = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - begin
    return {
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "x_real_time": requests * CLIP_SECONDS / wall,
        "workers": workers,
    }


def holder_share(workers: list[tuple[str, str]]) -> float:
    """Share of requests served by a worker that had already served their adapter (after each adapter's first)."""
    seen: dict[str, set[str]] = {}
    hits = total = 0
    for model, worker in workers:
        if model in seen:
            total += 1
            hits += worker in seen[model]
        seen.setdefault(model, set()).add(worker)
    return hits / total if total else float("nan")


def measure_single(tmp: Path, wav: bytes, requests: int) -> dict[str, Any]:
    env = {
        "CHORUS_STORE": str(tmp / "single-store"),
        "CHORUS_DATA_DIR": str(tmp / "single-data"),
        "CHORUS_VAD__ENABLED": "false",  # synthetic clips, not speech: measure serving, not detection
    }
    (tmp / "single").mkdir()
    with ServerProcess(env, tmp / "single") as server:
        return {
            "c1": asyncio.run(load(server.url, wav, requests, 1, ["en"])),
            "c4": asyncio.run(load(server.url, wav, requests, 4, ["en"])),
        }


def measure_ray(tmp: Path, wav: bytes, requests: int, workers: int, router: str | None, affinity: bool) -> Any:
    import ray
    from ray import serve

    from chorus_server.cluster.app import ROUTER, build

    settings = Settings(store=str(tmp / f"ray-{workers}-{router}-store"), data_dir=tmp / "ray-data", _env_file=None)
    settings.vad.enabled = False  # as for the single process above
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build(settings, workers, ROUTER if router is None else None), name="chorus", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        if affinity:
            models = ["en", "fr", "de", "es", "it"]
            result = asyncio.run(load(url, wav, 6 * len(models), 2, models))
            pairs = len(set(result["workers"]))  # (adapter, worker) pairs: every one is a cold load
            return {
                "holder_share": holder_share(result["workers"]),
                "cold_loads": pairs,
                "minimum_cold_loads": len(models),
                "x_real_time": result["x_real_time"],
            }
        return {
            "c1": asyncio.run(load(url, wav, requests, 1, ["en"])),
            "c4": asyncio.run(load(url, wav, requests, 4, ["en"])),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    wav = clip()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        results["single"] = measure_single(tmp, wav, args.requests)
        print(
            "single",
            json.dumps({k: {m: v for m, v in r.items() if m != "workers"} for k, r in results["single"].items()}),
            flush=True,
        )
        for workers in (1, 2):
            results[f"ray_{workers}"] = measure_ray(tmp, wav, args.requests, workers, None, affinity=False)
            shown = {k: {m: v for m, v in r.items() if m != "workers"} for k, r in results[f"ray_{workers}"].items()}
            print(f"ray_{workers}", json.dumps(shown), flush=True)
        for router in ("chorus", "default"):
            results[f"affinity_{router}"] = measure_ray(
                tmp, wav, args.requests, 2, None if router == "chorus" else "default", affinity=True
            )
            print(f"affinity_{router}", json.dumps(results[f"affinity_{router}"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
