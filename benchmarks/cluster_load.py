"""The Ray path against a single `chorus serve`, side by side in one run, on the embedded demo model.

For each setup — `chorus serve`, `chorus serve --ray` with 1 worker and with 2 workers — 5 s clips at
concurrency 1 (latency) and 4 (throughput). Then adapter affinity with 2 workers whose caches hold 3 adapters each
and 5 adapters requested in turn, by one sequential client and by 4 concurrent clients, for Chorus's router and
Ray's default (least-loaded of two) router: the share of an adapter's requests that reach the worker which served
its previous one, cold loads (the workers' `chorus_adapter_loads_total`, read in one scrape of the ingress) and
latency.

    python -m benchmarks.cluster_load [--requests 24] [--rounds 8] [--json out.json]
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


def stickiness(workers: list[tuple[str, str]]) -> float:
    """Share of requests served by the worker that served the previous request for their adapter."""
    last: dict[str, str] = {}
    same = total = 0
    for model, worker in workers:
        if model in last:
            total += 1
            same += worker == last[model]
        last[model] = worker
    return same / total if total else float("nan")


def cold_loads(url: str) -> float:
    """Adapter loads on every worker replica so far, from one scrape of the ingress."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=60).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "chorus_adapter_loads_total" and "replica" in s.labels and s.labels.get("result") == "ok"
    )


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


def measure_ray(tmp: Path, wav: bytes, requests: int, workers: int, router: str | None, rounds: int = 0) -> Any:
    """`rounds` > 0: the affinity runs (5 adapters, caches of 3 per worker), else the latency/throughput levels."""
    import ray

    from chorus_server.cluster.app import ROUTER, build, start_serve

    settings = Settings(store=str(tmp / f"ray-{workers}-{router}-store"), data_dir=tmp / "ray-data", _env_file=None)
    settings.vad.enabled = False  # as for the single process above
    if rounds:  # the demo's adapters are ~1.2 MB: 4 MB holds 3 of them (and the small `en` head)
        settings.cache.device_budget_mb = settings.cache.host_budget_mb = 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    start_serve("127.0.0.1", port)
    try:
        from ray import serve

        serve.run(build(settings, workers, ROUTER if router is None else None), name="chorus", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        if rounds:
            models = ["en", "fr", "de", "es", "it"]
            out = {}
            for clients in (1, 4):
                loads_before = cold_loads(url)
                result = asyncio.run(load(url, wav, rounds * len(models), clients, models))
                out[f"c{clients}"] = {
                    "same_worker": stickiness(result["workers"]),
                    "holder_share": holder_share(result["workers"]),
                    "cold_loads": cold_loads(url) - loads_before,
                    "p50_ms": result["p50_ms"],
                    "p95_ms": result["p95_ms"],
                    "x_real_time": result["x_real_time"],
                }
            return out
        return {
            "c1": asyncio.run(load(url, wav, requests, 1, ["en"])),
            "c4": asyncio.run(load(url, wav, requests, 4, ["en"])),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def without_workers(levels: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {m: v for m, v in r.items() if m != "workers"} for k, r in levels.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=8, help="affinity: requests per adapter and client setup")
    parser.add_argument("--slack", type=float, default=None, help="affinity: CHORUS_CLUSTER__AFFINITY_SLACK to use")
    parser.add_argument("--parts", nargs="+", choices=["overhead", "affinity"], default=["overhead", "affinity"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.slack is not None:
        os.environ["CHORUS_CLUSTER__AFFINITY_SLACK"] = str(args.slack)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    wav = clip()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        if "overhead" in args.parts:
            results["single"] = measure_single(tmp, wav, args.requests)
            print("single", json.dumps(without_workers(results["single"])), flush=True)
            for workers in (1, 2):
                results[f"ray_{workers}"] = measure_ray(tmp, wav, args.requests, workers, None)
                print(f"ray_{workers}", json.dumps(without_workers(results[f"ray_{workers}"])), flush=True)
        for router in ("chorus", "default") if "affinity" in args.parts else ():
            results[f"affinity_{router}"] = measure_ray(
                tmp, wav, args.requests, 2, None if router == "chorus" else "default", rounds=args.rounds
            )
            print(f"affinity_{router}", json.dumps(results[f"affinity_{router}"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
