"""The scheduler on a simulated clock: 4 realtime sessions beside 4 clients posting 60 s files, priority classes
off and on, run through the server's own `collect_batch` with a batch cost model instead of a backbone.

A batch of n windows padded to L seconds costs `overhead + per_second * n * L` (defaults: the demo model on 2
quiet CPU cores, from `live_latency --compare`'s batch times: 17 ms for one 2.42 s step, about 300 ms for two 20 s
windows). A session queues a step (2 s left context + 320 ms + 100 ms lookahead) every 320 ms; its latency here
is queueing + compute (the live benchmark adds the 100 ms lookahead and transport). A file client posts its next
file when the last window of the previous one is done. Deterministic: the same numbers on any machine, so it
shows what the scheduler does apart from load on a shared machine. `--per-second` scales the model (a
wav2vec2-base-sized backbone is several times the demo model); latencies are also given in slices (one 20 s
window's pass).

    python -m benchmarks.scheduler_sim [--seconds 60] [--per-second 0.006] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.adapter_cold_load import percentile
from chorus_server.batching import BatchLimits, Priority, WorkItem, collect_batch, passes_over
from chorus_server.chunking import plan_windows

RATE = 16000
STEP, STEP_WINDOW = 0.32, 2.42  # seconds
FILE_SECONDS, CHUNK, STRIDE, HOP = 60.0, 20.0, 2.0, 320
LIMITS = BatchLimits(4, 60 * RATE, 0.010, interactive_bulk_samples=20 * RATE)  # the CPU defaults


def simulate(
    sessions: int, clients: int, priorities: bool, seconds: float, overhead: float, per_second: float
) -> dict[str, Any]:
    limits = dataclasses.replace(LIMITS, priorities=priorities)
    windows = [
        w.stop - w.start for w in plan_windows(int(FILE_SECONDS * RATE), int(CHUNK * RATE), int(STRIDE * RATE), HOP)
    ]
    arrivals: list[tuple[float, int, str]] = []  # (time, order, who)
    for k in range(sessions):
        t = k * STEP / max(1, sessions)
        while t < seconds:
            heapq.heappush(arrivals, (t, len(arrivals), f"s{k}"))
            t += STEP
    for k in range(clients):
        heapq.heappush(arrivals, (0.0, len(arrivals), f"f{k}"))
    queue: list[WorkItem] = []
    pending: dict[str, int] = {}  # file client -> windows of its file not yet done
    served: dict[str, float] = {}
    latencies: list[float] = []
    files_done, passed, now, live_seen = 0, 0, 0.0, -1e9

    def arrive(who: str, at: float) -> None:
        nonlocal live_seen
        if who.startswith("s"):
            queue.append(
                WorkItem(np.zeros(int(STEP_WINDOW * RATE), np.float32), None, at, 1e9, who, priority=Priority.LIVE)
            )  # type: ignore[arg-type]
            live_seen = at
        elif at < seconds:
            pending[who] = len(windows)
            queue.extend(WorkItem(np.zeros(n, np.float32), None, at, 1e9, who) for n in windows)  # type: ignore[arg-type]

    while now < seconds or queue:
        while arrivals and arrivals[0][0] <= now:
            at, _, who = heapq.heappop(arrivals)
            arrive(who, at)
        if not queue:
            if not arrivals:
                break
            now = arrivals[0][0]
            continue
        collected = collect_batch(
            queue, limits, now, served=served, passed_over=passed, interactive_recent=now - live_seen < 1.0
        )
        batch = collected.batch
        if not batch:
            now = min(now + (collected.wait or 0.001), arrivals[0][0] if arrivals else 1e9)
            continue
        queue = [item for item in queue if item not in batch]
        passed = passed + 1 if passes_over(batch, queue) else 0
        for item in batch:
            served[item.tenant] = served.get(item.tenant, 0.0) + len(item)
        if not queue:
            served.clear()
        now += overhead + per_second * len(batch) * max(len(item) for item in batch) / RATE
        for item in batch:
            if item.priority == Priority.LIVE:
                latencies.append(now - item.enqueued)
            else:
                pending[item.tenant] -= 1
                if pending[item.tenant] == 0:
                    files_done += 1
                    heapq.heappush(arrivals, (now, len(arrivals) + 10**6, item.tenant))
    slice_seconds = overhead + per_second * CHUNK
    return {
        "scheduler": "after" if priorities else "before",
        "streams": sessions,
        "file_clients": clients,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "p95_slices": round(percentile(latencies, 0.95) / slice_seconds, 2) if latencies else None,
        "file_audio_per_s": round(files_done * FILE_SECONDS / now, 2) if clients else None,
        "slice_ms": round(1000 * slice_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds")
    parser.add_argument("--overhead", type=float, default=0.002, help="seconds per batch")
    parser.add_argument("--per-second", type=float, default=0.006, help="seconds per padded audio second")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [
        simulate(streams, files, on, args.seconds, args.overhead, args.per_second)
        for on in (False, True)
        for streams, files in ((4, 0), (0, 4), (4, 4))
    ]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
