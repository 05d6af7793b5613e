"""Cold load of an MMS-size adapter, store -> device-resident, and host bytes per resident adapter.

MMS geometry: hidden 1280, 48 layers, bottleneck 16, ~150-token head (about 2.3 M parameters). The backbone
itself is not needed: the store validates against its spec (hidden size, layers, fingerprint).

    python -m benchmarks.adapter_cold_load [--runs 50] [--dtype bfloat16] [--device cpu] [--out result.json]

Two phases: the cache *filling* (every adapter stays resident, so each load reads into memory the process never
had and pays its page faults) and the cache *full* (a budget for 8 adapters: each load evicts one, the steady state
of a working set larger than the cache, in which memory freed by evictions is reused). Wall times on a shared
machine include waiting for a core; the CPU time per load (all threads of the process) is the cost itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import sync
from chorus_server.engine.adapter_format import save_adapter
from chorus_server.engine.cache import AdapterCache
from chorus_server.engine.config import BackboneConfig
from chorus_server.engine.engine import resolve_device, resolve_dtype
from chorus_server.engine.random_model import random_adapter
from chorus_server.validation import BackboneValidator
from chorus_store import LocalStore
from chorus_store.loader import make_loader

MMS = BackboneConfig(hidden_size=1280, num_hidden_layers=48, num_attention_heads=16, intermediate_size=5120)
FINGERPRINT = "w2v2-benchmark000000000000"
EVICTING_BUDGET = 8  # adapters the cache holds in the evicting phase


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_loads(cache: AdapterCache, keys: list[str], device: torch.device) -> tuple[list[float], list[float]]:
    """Wall and CPU (all threads) ms of a cold load of each key, store -> resident."""
    times, cpu = [], []
    for key in keys:
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        with cache.acquire(key):
            sync(device)
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - start_cpu) * 1000)
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    validator = BackboneValidator(MMS.hidden_size, MMS.num_hidden_layers, FINGERPRINT)

    def prepare(adapter):  # as the server's Engine.prepare (the loader already checked the fit)
        return adapter.converted(device, dtype).eval().requires_grad_(False)

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store", validator, max_bytes=64 * 1024 * 1024)
        layers = list(range(MMS.num_hidden_layers))
        for i in range(args.runs):
            adapter = random_adapter(MMS, "mms", f"lang{i}", 16, layers, 150 - 4 - 5, i, FINGERPRINT)
            path = Path(tmp) / "upload.safetensors"
            save_adapter(adapter, path)
            store.publish(f"bench/lang{i}", path)
        params = adapter.num_parameters()
        file_bytes = path.stat().st_size
        tensor_bytes = adapter.to(dtype).nbytes()
        keys = [f"bench/lang{i}@1" for i in range(args.runs)]

        # Filling: every adapter stays resident, so each load reads into memory the process never had.
        cache = AdapterCache(make_loader(store, validator.load_version), prepare, device, 10**12, 10**12)
        with cache.acquire(keys[0]):  # warm-up: imports, allocator
            pass
        gc.collect()
        rss_before = rss_bytes()
        times, cpu = timed_loads(cache, keys[1:], device)
        gc.collect()
        rss_growth = rss_bytes() - rss_before
        stats = cache.stats()
        resident = stats.device_entries
        per_adapter = stats.device_bytes / resident
        loader_mean_ms = stats.load_seconds / stats.loads * 1000
        del cache
        gc.collect()

        # Full: a budget for EVICTING_BUDGET adapters, so each load evicts one (a working set larger than the
        # cache, the steady state in which cold loads recur) and memory freed by evictions is reused.
        held = max(1, min(EVICTING_BUDGET, args.runs - 1))
        cache = AdapterCache(
            make_loader(store, validator.load_version), prepare, device, held * tensor_bytes, held * tensor_bytes
        )
        timed_loads(cache, keys[:held], device)  # fill it
        full_times, full_cpu = timed_loads(cache, keys[held:] + keys[:held], device)

    result = {
        "comparison": "adapter_cold_load",
        "params": params,
        "file_bytes": file_bytes,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "p50_ms": statistics.median(times),
        "p95_ms": percentile(times, 0.95),
        "cpu_p50_ms": statistics.median(cpu),
        "evicting_p50_ms": statistics.median(full_times),
        "evicting_p95_ms": percentile(full_times, 0.95),
        "evicting_cpu_p50_ms": statistics.median(full_cpu),
        "cache_bytes_ratio": per_adapter / tensor_bytes,
        "rss_growth_ratio": rss_growth / (resident - 1) / tensor_bytes,
        "resident": resident,
        "loader_mean_ms": loader_mean_ms,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print_table(result)


def print_table(result: dict) -> None:
    size = f"{result['params'] / 1e6:.2f} M params, file {result['file_bytes'] / 1e6:.1f} MB"
    print(f"adapter: {size}, device {result['device']}, dtype {result['dtype']}")
    print("| metric | value |\n|---|---|")
    print(f"| cold load p50, cache full (each load evicts one) | {result['evicting_p50_ms']:.1f} ms |")
    print(f"| cold load p95, cache full | {result['evicting_p95_ms']:.1f} ms |")
    print(f"| CPU time per cold load, cache full (p50, all threads) | {result['evicting_cpu_p50_ms']:.1f} ms |")
    print(f"| cold load p50, cache filling (new memory each load) | {result['p50_ms']:.1f} ms |")
    print(f"| cold load p95, cache filling | {result['p95_ms']:.1f} ms |")
    print(f"| CPU time per cold load, cache filling (p50, all threads) | {result['cpu_p50_ms']:.1f} ms |")
    print(f"| cache bytes per resident adapter / tensor bytes | {result['cache_bytes_ratio']:.3f} |")
    print(f"| process RSS growth per loaded adapter / tensor bytes | {result['rss_growth_ratio']:.3f} |")
    print(f"| resident adapters | {result['resident']} |")
    print(f"| cache-reported load seconds (mean) | {result['loader_mean_ms']:.1f} ms |")


if __name__ == "__main__":
    main()
