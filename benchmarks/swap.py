"""vs swap-per-request: transformers' `Wav2Vec2ForCTC` + `load_adapter(lang)` before every request (the MMS way)
against Chorus's batching worker on the same traffic, with 1, 4 and 16 concurrent clients.

Traffic: 4 s clips, a random language per request among the model's `adapter.<lang>.safetensors` (local
files). transformers mutates one model per swap, so its requests run one at a time behind a lock; Chorus's
clients submit to the worker the server uses (`chorus_server.worker.Worker`) and share batches. Closed loop: each
client sends its next request when the previous one returns. Latency counts from submission to result.

    python -m benchmarks.swap [--requests 16] [--device cpu] [--out result.json]
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2ForCTC

from benchmarks.common import clip, device_of, finish, median, model_dir, parser, percentile, sync
from chorus_server.batching import BatchLimits, WorkItem
from chorus_server.engine import Engine
from chorus_server.engine.adapters import Adapter
from chorus_server.metrics import Metrics
from chorus_server.worker import Worker

CONCURRENCY = (1, 4, 16)


def closed_loop(serve: Callable[[int, str], None], langs: list[str], clients: int, requests: int) -> dict:
    """`clients` threads share `requests` requests; returns throughput (requests/s) and latency percentiles."""
    latencies: list[float] = []
    todo = iter(range(requests))
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            start = time.perf_counter()
            serve(i, rng.choice(langs))
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests_per_s": requests / wall, "p50_s": median(latencies), "p95_s": percentile(latencies, 0.95)}


def transformers_server(path: Path, device: torch.device, audio: np.ndarray, swap: bool) -> Callable[[int, str], None]:
    model = Wav2Vec2ForCTC.from_pretrained(path).to(device).eval()
    lock = threading.Lock()
    x = torch.from_numpy(audio)[None].to(device)

    def serve(_: int, lang: str) -> None:
        with lock, torch.inference_mode():  # one mutable model: one request at a time
            if swap:
                model.load_adapter(lang)
            model(x).logits.argmax(-1).cpu()
            sync(device)

    return serve


def chorus_server(worker: Worker, adapters: dict[str, Adapter], audio: np.ndarray) -> Callable[[int, str], None]:
    def serve(_: int, lang: str) -> None:
        item = WorkItem(audio, adapters[lang], time.monotonic(), float("inf"))
        worker.submit([item])
        item.future.result().argmax(-1)

    return serve


def throughput_ratio(levels: dict[str, dict], system: str) -> float:
    """`system`'s throughput over transformers' swap-per-request at the same number of clients, median over the
    levels (one noisy level cannot decide it)."""
    ours, theirs = levels[system], levels["transformers_swap"]
    return median([ours[c]["requests_per_s"] / theirs[c]["requests_per_s"] for c in ours])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency level (default 16)")
    p.add_argument("--max-batch", type=int, default=8, help="worker batch limit (default 8)")
    args = p.parse_args()
    device = device_of(args)
    path = model_dir(args.models, "tiny-mms" if args.quick else "base-mms")
    requests, seconds = (4, 1.0) if args.quick else (args.requests, 4.0)
    langs = sorted(f.name.split(".")[1] for f in path.glob("adapter.*.safetensors"))
    vocab_json = json.loads((path / "vocab.json").read_text())
    audio = clip(seconds)[0].numpy()
    results: dict[str, dict] = {}
    for name, swap in (("transformers_swap", True), ("transformers_no_swap", False)):
        serve = transformers_server(path, device, audio, swap)
        levels = CONCURRENCY if swap else (1,)
        results[name] = {str(c): closed_loop(serve, langs, c, requests) for c in levels}
    for dtype in ("float32", "bfloat16"):
        engine = Engine.from_pretrained(path, device=str(device), dtype=dtype).engine
        adapters = {
            lang: engine.load_mms_adapter(path / f"adapter.{lang}.safetensors", vocab_json, lang) for lang in langs
        }
        worker = Worker(engine, BatchLimits(args.max_batch, 60 * 16000, 0.005), Metrics())
        worker.start()
        serve = chorus_server(worker, adapters, audio)
        serve(0, langs[0])  # warm-up
        results[f"chorus_{dtype}"] = {str(c): closed_loop(serve, langs, c, requests) for c in CONCURRENCY}
        worker.stop()
    hf = results["transformers_swap"]["1"]["requests_per_s"]
    finish(
        "swap",
        args,
        {
            "clip_seconds": seconds,
            "languages": langs,
            "max_batch": args.max_batch,
            "levels": results,
            "swap_vs_no_swap": hf / results["transformers_no_swap"]["1"]["requests_per_s"],
            "chorus_fp32_vs_transformers": throughput_ratio(results, "chorus_float32"),
            "chorus_bf16_vs_transformers": throughput_ratio(results, "chorus_bfloat16"),
        },
    )


if __name__ == "__main__":
    main()
