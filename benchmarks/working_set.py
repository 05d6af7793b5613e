"""Working set larger than the cache: Zipf traffic over many adapters vs one adapter, through `chorus serve`.

1,000 distinct houlsby r=16 adapters (random weights, one seed each) are published straight into the server's
local store before it starts; the adapter cache gets a byte budget for about 100 of them. Phases of Zipf traffic
(s = 1, seeded; adapter k has weight 1/k^s) and of single-adapter traffic (the most popular adapter) alternate
against the same server at the same client concurrency, so the throughput ratio Zipf / single (target >= 0.9) is
measured side by side: the median of the per-round ratios is reported. Also: p50/p95 latency of each, the cache
hit ratio and loads per second during the Zipf phases (from `/metrics`), and the CPU cores the server kept busy.

Before the timed phases the cache is filled with the most popular adapters (pin, then unpin), roughly the state a
long-running server is in, so the first Zipf phase does not pay for an empty cache. The store is a local directory
that fits in the page cache: a load is read + check + prepare, not a network fetch.

    python -m benchmarks.working_set [--adapters 1000] [--cache-adapters 100] [--zipf-s 1.0] [--concurrency 8]
                                     [--clip 4] [--requests 48] [--reps 3] [--quick] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.common import device_of, finish, model_dir, parser, percentile
from benchmarks.server_load import clip_bytes, process_cpu_seconds
from chorus_server.background import ServerProcess
from chorus_server.engine.adapter_format import save_adapter
from chorus_server.engine.checkpoint import fingerprint, load_backbone
from chorus_server.engine.random_model import PRESETS, random_adapter
from chorus_server.runtime import choose_dtype
from chorus_server.validation import BackboneValidator
from chorus_store import LocalStore

MiB = 1024 * 1024
OWNER = "anonymous"  # the tenant of a keyless loopback server's callers, so they may use these private adapters
# The cache budget is set in whole MiB: tiny-model adapters at r=16 (21 kB) would put ~50 in the smallest budget,
# so --quick widens the bottleneck until 5 of them fill one MiB (at 4 bytes a weight; twice as wide at 2).
QUICK_DIM = 180


def zipf_traffic(names: list[str], s: float, count: int, rng: random.Random) -> list[str]:
    """`count` adapter names, the k-th of `names` (from 1) drawn with weight 1/k^s."""
    return rng.choices(names, weights=[1 / k**s for k in range(1, len(names) + 1)], k=count)


def publish_adapters(
    store_dir: Path, model: Path, preset: str, count: int, dim: int, dtype: str
) -> tuple[list[str], int]:
    """Publish `count` random adapters into a local store; returns their IDs (most popular first) and the bytes one
    occupies in the cache (on the device, in the server's dtype)."""
    config = PRESETS[preset]
    fp = fingerprint(load_backbone(model, config)[0])
    store = LocalStore(store_dir, BackboneValidator(config.hidden_size, config.num_hidden_layers, fp))
    layers = list(range(config.num_hidden_layers))
    names = []
    with tempfile.TemporaryDirectory() as scratch:
        upload = Path(scratch) / "adapter.safetensors"
        for i in range(count):
            adapter = random_adapter(config, "houlsby", f"a{i}", dim, layers, 26, i, fp)
            save_adapter(adapter, upload)
            names.append(store.publish(f"{OWNER}/a{i:04d}", upload, visibility="private").id)
    return names, adapter.to(dtype=getattr(torch, dtype)).nbytes()  # all alike in size


def scrape(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} for the samples (comments skipped)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def delta(before: dict[str, float], after: dict[str, float], *names: str) -> float:
    return sum(after.get(n, 0.0) - before.get(n, 0.0) for n in names)


async def phase(client: httpx.AsyncClient, wav: bytes, sequence: list[str], concurrency: int) -> dict[str, Any]:
    """Closed loop: `concurrency` clients, each sending the next request of `sequence` as soon as its last one ends."""
    latencies: list[float] = []
    pending = iter(sequence)

    async def user() -> None:
        for adapter in pending:
            started = time.perf_counter()
            files = {"file": ("clip.wav", wav, "audio/wav")}
            response = await client.post("/v1/audio/transcriptions", files=files, data={"model": adapter})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return {"wall": time.perf_counter() - started, "latencies": latencies}


async def measured(
    client: httpx.AsyncClient, pid: int, work: Awaitable[dict[str, Any]], audio: float
) -> dict[str, Any]:
    """`work` (a phase of `audio` seconds, not yet started) with the server's counters and CPU seconds read before
    and after it."""
    before, cpu = scrape((await client.get("/metrics")).text), process_cpu_seconds(pid)
    result = await work
    after = scrape((await client.get("/metrics")).text)
    wall = result["wall"]
    cpu_seconds = process_cpu_seconds(pid) - cpu
    batches = delta(before, after, "chorus_batch_size_count")
    forward = delta(before, after, "chorus_inference_duration_seconds_sum")
    return {
        **result,
        "audio_per_second": audio / wall,
        "audio_per_cpu_second": audio / cpu_seconds,
        "cores": cpu_seconds / wall,
        "hits": delta(before, after, *(f'chorus_adapter_cache_hits_total{{tier="{t}"}}' for t in ("device", "host"))),
        "misses": delta(before, after, "chorus_adapter_cache_misses_total"),
        "loads": delta(before, after, 'chorus_adapter_loads_total{result="ok"}'),
        "load_seconds": delta(before, after, "chorus_adapter_load_seconds_total"),
        "items_per_batch": delta(before, after, "chorus_batch_size_sum") / max(batches, 1),
        "forward_seconds": forward / max(batches, 1),
        # Share of the wall time the inference thread spent in forward passes: a load that stalls batches shows
        # up as idle time here, not as slower forwards.
        "inference_busy": forward / wall,
    }


async def warm_cache(client: httpx.AsyncClient, names: list[str]) -> None:
    """Load `names` into the cache, least popular first so the LRU evicts those first, then let them go."""
    for name in reversed(names):
        (await client.post(f"/v1/adapters/{name}/pin")).raise_for_status()
    for name in names:
        (await client.post(f"/v1/adapters/{name}/unpin")).raise_for_status()


async def drive(url: str, pid: int, names: list[str], cached: int, args: argparse.Namespace) -> dict[str, list]:
    """Warm up, then `reps` rounds of (Zipf phase, single-adapter phase); returns the phases of each kind."""
    _, wav = clip_bytes(args.clip)
    rng = random.Random(0)
    phases: dict[str, list] = {"zipf": [], "single": []}
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await warm_cache(client, names[:cached])
        await phase(client, wav, names[:1] * args.concurrency, args.concurrency)  # kernels, connections
        for _ in range(args.reps):
            sequences = {
                "zipf": zipf_traffic(names, args.zipf_s, args.requests, rng),
                "single": names[:1] * args.requests,
            }
            for kind, sequence in sequences.items():
                work = phase(client, wav, sequence, args.concurrency)
                result = await measured(client, pid, work, len(sequence) * args.clip)
                phases[kind].append(result)
                print(
                    f"{kind:<6} {result['audio_per_second']:6.2f} audio s/s, {result['misses']:3.0f} misses, "
                    f"server cores {result['cores']:.2f}, inference busy {result['inference_busy']:.2f}",
                    flush=True,
                )
    return phases


def summary(phases: list[dict[str, Any]]) -> dict[str, float]:
    latencies = [s for p in phases for s in p["latencies"]]
    return {
        "audio_per_second": statistics.median(p["audio_per_second"] for p in phases),
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "server_cores": statistics.median(p["cores"] for p in phases),
        "audio_per_cpu_second": statistics.median(p["audio_per_cpu_second"] for p in phases),
        "inference_busy": statistics.median(p["inference_busy"] for p in phases),
        "items_per_batch": statistics.mean(p["items_per_batch"] for p in phases),
        "forward_seconds_per_batch": statistics.mean(p["forward_seconds"] for p in phases),
    }


def paired(phases: dict[str, list], key: str) -> float:
    """Median over the rounds of Zipf's `key` over the single phase's in the same round."""
    return statistics.median(z[key] / s[key] for z, s in zip(phases["zipf"], phases["single"], strict=True))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="base", help="random backbone (default base)")
    p.add_argument("--adapters", type=int, default=1000, help="distinct adapters in the store (default 1000)")
    p.add_argument("--cache-adapters", type=int, default=100, help="adapters the cache budget holds (default 100)")
    p.add_argument("--dim", type=int, default=16, help="houlsby bottleneck width (default 16)")
    p.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent (default 1.0)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--clip", type=float, default=4.0, help="clip seconds (default 4)")
    p.add_argument("--requests", type=int, default=48, help="requests per phase (default 48)")
    p.add_argument("--dtype", default="auto", help="server dtype (default auto)")
    p.set_defaults(reps=3)
    args = p.parse_args()
    if args.quick:
        args.preset, args.adapters, args.cache_adapters = "tiny", 50, 5
        args.clip, args.requests, args.reps = 1.0, 16, 2
    device = device_of(args)
    dtype = choose_dtype(args.dtype, device)
    if args.quick:
        args.dim = QUICK_DIM * 4 // getattr(torch, dtype).itemsize
    model = model_dir(args.models, args.preset)
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        started = time.perf_counter()
        names, size = publish_adapters(store, model, args.preset, args.adapters, args.dim, dtype)
        print(f"published {len(names)} adapters of {size / MiB:.2f} MiB in {time.perf_counter() - started:.0f} s")
        budget_mb = max(1, math.ceil(args.cache_adapters * size / MiB))
        cached = budget_mb * MiB // size
        env = {
            "CHORUS_BACKBONE": str(model.resolve()),
            "CHORUS_STORE": str(store),
            "CHORUS_DATA_DIR": scratch,
            "CHORUS_DEVICE": str(device),
            "CHORUS_DTYPE": dtype,
            "CHORUS_SEED_STORE": "false",
            "CHORUS_CACHE__DEVICE_BUDGET_MB": str(budget_mb),
            "CHORUS_CACHE__HOST_BUDGET_MB": str(budget_mb),
            # The benchmark is one tenant sending far more than a tenant's default share.
            "CHORUS_LIMITS__TENANT__REQUESTS_PER_MINUTE": "1000000",
            "CHORUS_LIMITS__TENANT__AUDIO_SECONDS_PER_MINUTE": "100000000",
            "CHORUS_VAD__ENABLED": "false",  # synthetic clips, not speech: with VAD on no backbone pass would run
        }
        with ServerProcess(env, Path(scratch), args=("--log-level", "warning")) as server:
            assert server.process is not None
            phases = asyncio.run(drive(server.url, server.process.pid, names, cached, args))
    report(args, phases, cached, budget_mb, size, dtype)


def report(
    args: argparse.Namespace, phases: dict[str, list], cached: int, budget_mb: int, size: int, dtype: str
) -> None:
    zipf = phases["zipf"]
    hits, misses = sum(p["hits"] for p in zipf), sum(p["misses"] for p in zipf)
    loads = sum(p["loads"] for p in zipf)
    result = {
        "zipf_over_single": paired(phases, "audio_per_second"),
        # The same per server CPU second: on a shared machine the CPU share the server gets drifts between phases.
        "zipf_over_single_per_cpu_second": paired(phases, "audio_per_cpu_second"),
        "hit_ratio": hits / max(hits + misses, 1),
        "loads_per_second": loads / sum(p["wall"] for p in zipf),
        "load_seconds_mean": sum(p["load_seconds"] for p in zipf) / max(loads, 1),
        "zipf": summary(zipf),
        "single": summary(phases["single"]),
        "adapters": args.adapters,
        "cache_adapters": cached,
        "cache_budget_mb": budget_mb,
        "adapter_bytes": size,
        "zipf_s": args.zipf_s,
        "concurrency": args.concurrency,
        "clip_seconds": args.clip,
        "requests_per_phase": args.requests,
        "rounds": args.reps,
        "preset": args.preset,
        "dtype": dtype,
        "phases": [
            {"kind": kind, **{k: round(v, 4) for k, v in p.items() if k != "latencies"}}
            for z, s in zip(zipf, phases["single"], strict=True)
            for kind, p in (("zipf", z), ("single", s))
        ],
    }
    print(
        f"Zipf/single {result['zipf_over_single']:.2f} (target >= 0.9), per server CPU second "
        f"{result['zipf_over_single_per_cpu_second']:.2f}; hit ratio {result['hit_ratio']:.2f}, "
        f"{result['loads_per_second']:.2f} loads/s ({result['load_seconds_mean'] * 1000:.0f} ms each)"
    )
    for kind in ("zipf", "single"):
        s = result[kind]
        print(
            f"{kind:<6} {s['audio_per_second']:6.2f} audio s/s  p50 {s['p50']:.3f} s  p95 {s['p95']:.3f} s  "
            f"server cores {s['server_cores']:.2f}  inference busy {s['inference_busy']:.2f}  "
            f"{s['items_per_batch']:.1f} items/batch, {s['forward_seconds_per_batch'] * 1000:.0f} ms/forward"
        )
    finish("working_set", args, result)


if __name__ == "__main__":
    main()
