"""Shared helpers for the benchmark modules: arguments, random models, interleaved timing, results.

Every comparison runs in its own process (`python -m benchmarks.<name> --out result.json`) and times the
systems it compares *side by side*: round-robin, so drift on a shared machine hits all of them alike, and the
median of the rounds is reported. Absolute numbers drift; ratios within one run are the result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from chorus_server.engine.engine import resolve_device
from chorus_server.engine.random_model import write_random_model

SAMPLE_RATE = 16_000
DEFAULT_MODELS = Path(".bench/models")


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--quick", action="store_true", help="tiny model, one round: checks the harness, not speed")
    p.add_argument("--reps", type=int, default=5, help="timed rounds per system (median reported)")
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="where random models are cached")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    return p


def model_dir(root: Path, preset: str) -> Path:
    """A random-weight model of `preset`, written once and reused (`chorus dev random-model`)."""
    path = root / preset
    if not (path / "model.safetensors").is_file():
        write_random_model(path, preset, 0)
    return path


def sync(device: torch.device) -> None:
    """Wait for `device` itself (a bare `torch.cuda.synchronize()` waits for the current GPU, maybe another)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(systems: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Wall seconds of each system, `reps` rounds round-robin after one warm-up call each.

    Every call runs on one dedicated thread, as inference does in the server: on a busy machine the main
    thread's OpenMP team was seen to run the same model up to ~2x slower (benchmarks/server_load.py)."""
    times: dict[str, list[float]] = {name: [] for name in systems}

    def timed(fn: Callable[[], object]) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    with ThreadPoolExecutor(1, thread_name_prefix="bench-inference") as runner:
        for fn in systems.values():
            runner.submit(timed, fn).result()
        for _ in range(reps):
            for name, fn in systems.items():
                times[name].append(runner.submit(timed, fn).result())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def clip(seconds: float, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """(batch, samples) float32 noise: random weights make content irrelevant to speed."""
    return torch.randn(batch, int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed))


def device_of(args: argparse.Namespace) -> torch.device:
    return resolve_device(args.device)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def finish(name: str, args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """Stamp and write a comparison's result; print it for the terminal."""
    result = {"comparison": name, "device": describe(device_of(args)), "quick": args.quick, **result}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return result
