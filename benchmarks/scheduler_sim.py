"""The scheduler on a simulated clock: 4 realtime sessions beside 4 clients posting 60 s files, run through the
server's own `collect_batch` and the sessions' own step planning (`TurnSteps`) with a batch cost model instead of
a backbone.

A batch of n windows padded to L seconds costs `overhead + per_second * n * L` (defaults: the demo model on 2
quiet CPU cores, from `live_latency --compare`'s batch times: 17 ms for one 2.42 s step, about 300 ms for two 20 s
windows). As in `live_latency`, a session sends the demo recordings (3.5, 2.9, 4.4, 1.3, 3.8 s) back to back in
100 ms appends at real time, one turn per recording; each turn ends with a final pass over it (file work), and
a step's latency is the time from the append that completed its audio to its delta (queueing + compute; the
benchmark adds transport). All work is one tenant's, as in the benchmark. A file client posts its next file when
the last window of the previous one is done. Deterministic: the same numbers on any machine, so it shows what
the scheduler does apart from load on a shared machine. `--per-second` scales the model (wav2vec2-base is about
`--per-second 0.03`); latencies are also given in slices (one 20 s window's pass, the bound on a step's wait).

Policies (`POLICIES`), each adding one change to the one before: `before` (one queue), `classes` (priority
classes, file batches capped within LIVE_LINGER_MS of a step, a turn's final pass holding back the next turn's
deltas: the server before issue 35's second round), `final aside` (the next turn's deltas no longer wait for the
final pass), `cap open` (the cap holds while any session is open), `busy step` (steps cover at least 640 ms
while file work waits, and audio for several steps becomes one).

    python -m benchmarks.scheduler_sim [--seconds 60] [--per-second 0.006] [--pause 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.adapter_cold_load import percentile
from chorus_server.batching import BatchLimits, Priority, WorkItem, collect_batch, passes_over
from chorus_server.chunking import plan_windows
from chorus_server.live.steps import TurnSteps

RATE = 16000
APPEND = 1600  # samples: 100 ms
TURNS = (3.54, 2.87, 4.44, 1.34, 3.76)  # seconds: the demo's en-1..5 recordings
FILE_SECONDS, CHUNK, STRIDE, HOP = 60.0, 20.0, 2.0, 320
LIMITS = BatchLimits(4, 60 * RATE, 0.010, interactive_bulk_samples=20 * RATE)  # the CPU defaults
LINGER = 1.0


@dataclass(frozen=True)
class Policy:
    name: str
    priorities: bool = True
    final_blocks: bool = True  # a turn's final pass holds back the next turn's deltas
    cap_while_open: bool = False  # the bulk cap holds while a session is open (not only after a recent step)
    busy_step: float = 0.0  # seconds: least new audio per step while file work waits (0: one step)


POLICIES = (
    Policy("before", priorities=False),
    Policy("classes"),
    Policy("final aside", final_blocks=False),
    Policy("cap open", final_blocks=False, cap_while_open=True),
    Policy("busy step", final_blocks=False, cap_while_open=True, busy_step=0.64),
)


@dataclass(eq=False)
class Job:
    """One thing a session delivers in order: a step (one item) or a turn's final pass (its windows)."""

    items: list[WorkItem]
    sent: float  # when the append that completed its audio was sent (steps only)
    first_sent: float  # when the append holding its first new sample was sent (steps only)
    final: bool = False


def _session_appends(k: int, seconds: float, pause: float) -> list[tuple[float, Any]]:
    """Session k's appends as (time, (its turn's steps, samples, whether it ends the turn, the turn's length, when
    the turn started)); turns back to back, `pause` seconds apart."""
    events: list[tuple[float, Any]] = []
    t, turn = k * 0.32 / 4, k
    while t < seconds:
        length = int(TURNS[turn % len(TURNS)] * RATE)
        steps, t0 = TurnSteps(int(0.32 * RATE), 2 * RATE, int(0.1 * RATE)), t
        for start in range(0, length, APPEND):
            n = min(APPEND, length - start)
            last = start + n >= length
            events.append((t, (steps, n, last, length, t0)))
            t += n / RATE
        t += pause
        turn += 1
    return events


def simulate(
    policy: Policy, sessions: int, clients: int, seconds: float, overhead: float, per_second: float, pause: float
) -> dict[str, Any]:
    limits = dataclasses.replace(LIMITS, priorities=policy.priorities)
    windows = [
        w.stop - w.start for w in plan_windows(int(FILE_SECONDS * RATE), int(CHUNK * RATE), int(STRIDE * RATE), HOP)
    ]
    arrivals: list[tuple[float, int, str, Any]] = []  # (time, order, who, what)
    for k in range(sessions):
        for at, what in _session_appends(k, seconds, pause):
            heapq.heappush(arrivals, (at, len(arrivals), f"s{k}", what))
    for k in range(clients):
        heapq.heappush(arrivals, (0.0, len(arrivals), f"f{k}", None))
    queue: list[WorkItem] = []
    done_at: dict[int, float] = {}  # id(item) -> when its batch ended
    jobs: dict[str, list[Job]] = {f"s{k}": [] for k in range(sessions)}
    pending: dict[str, int] = {}  # file client -> windows of its file not yet done
    file_items: dict[int, str] = {}
    files_done, passed, now, live_seen, busy_cost = 0, 0, 0.0, -1e9, 0.0

    def enqueue(items: list[WorkItem]) -> None:
        nonlocal live_seen
        queue.extend(items)
        if any(item.priority == Priority.LIVE for item in items):
            live_seen = now

    def arrive(who: str, at: float, what: Any) -> None:
        if who.startswith("s"):
            steps, n, last, length, t0 = what
            bulk = any(item.priority != Priority.LIVE for item in queue)
            least = int(policy.busy_step * RATE) if bulk else 0
            planned = steps.extend(np.zeros(n, np.float32), least)
            final = steps.finish() if last else None
            for step in [*planned, *([final] if final is not None else [])]:
                item = WorkItem(step.samples, None, at, 1e9, "t", priority=Priority.LIVE)  # type: ignore[arg-type]
                # as live_latency: from the append that completed the step's audio (so its lookahead wait counts)
                sent = t0 + (-(-step.end // APPEND) - 1) * APPEND / RATE
                jobs[who].append(Job([item], sent, t0 + (step.end - step.fresh) // APPEND * APPEND / RATE))
                enqueue([item])
            if last:  # the final pass: file windows over the whole turn
                plan = plan_windows(length, int(CHUNK * RATE), int(STRIDE * RATE), HOP)
                items = [WorkItem(np.zeros(w.stop - w.start, np.float32), None, at, 1e9, "t") for w in plan]  # type: ignore[arg-type]
                jobs[who].append(Job(items, at, at, final=True))
                enqueue(items)
        elif at < seconds:
            pending[who] = len(windows)
            items = [WorkItem(np.zeros(n, np.float32), None, at, 1e9, "t") for n in windows]  # type: ignore[arg-type]
            file_items.update((id(item), who) for item in items)
            enqueue(items)

    while now < seconds or queue:
        while arrivals and arrivals[0][0] <= now:
            at, _, who, what = heapq.heappop(arrivals)
            arrive(who, at, what)
        if not queue:
            if not arrivals:
                break
            now = arrivals[0][0]
            continue
        recent = now - live_seen < LINGER or (policy.cap_while_open and sessions > 0 and now < seconds)
        collected = collect_batch(queue, limits, now, passed_over=passed, interactive_recent=recent)
        batch = collected.batch
        if not batch:
            now = min(now + (collected.wait or 0.001), arrivals[0][0] if arrivals else 1e9)
            continue
        queue[:] = [item for item in queue if item not in batch]
        passed = passed + 1 if passes_over(batch, queue) else 0
        cost = overhead + per_second * len(batch) * max(len(item) for item in batch) / RATE
        now += cost
        if batch[0].priority == Priority.LIVE:
            busy_cost += cost
        for item in batch:
            done_at[id(item)] = now
            who = file_items.pop(id(item), None)
            if who is not None:
                pending[who] -= 1
                if pending[who] == 0:
                    files_done += 1
                    heapq.heappush(arrivals, (now, len(arrivals) + 10**6, who, None))
    latencies, from_first = _latencies(jobs, done_at, policy.final_blocks)
    slice_seconds = overhead + per_second * CHUNK
    return {
        "policy": policy.name,
        "streams": sessions,
        "file_clients": clients,
        "steps": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "p95_slices": round(percentile(latencies, 0.95) / slice_seconds, 2) if latencies else None,
        "p95_first_ms": round(1000 * percentile(from_first, 0.95), 1) if from_first else None,
        "file_audio_per_s": round(files_done * FILE_SECONDS / now, 2) if clients else None,
        "step_share": round(busy_cost / now, 3),
        "slice_ms": round(1000 * slice_seconds, 1),
    }


def _latencies(
    jobs: dict[str, list[Job]], done_at: dict[int, float], final_blocks: bool
) -> tuple[list[float], list[float]]:
    """Each step's delivery time minus when its audio was in (as live_latency measures), and minus when its first
    new audio was sent (what the first word of a step waits). Results are delivered in order: a step after
    everything queued before it; a final pass holds back what follows only when `final_blocks`."""
    latencies, from_first = [], []
    for session in jobs.values():
        delivered = 0.0
        for job in session:
            if any(id(item) not in done_at for item in job.items):
                break  # still running at the end of the simulation
            finished = max(delivered, *(done_at[id(item)] for item in job.items))
            if job.final:
                if final_blocks:
                    delivered = finished
                continue
            delivered = finished
            latencies.append(finished - job.sent)
            from_first.append(finished - job.first_sent)
    return latencies, from_first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds")
    parser.add_argument("--overhead", type=float, default=0.002, help="seconds per batch")
    parser.add_argument("--per-second", type=float, default=0.006, help="seconds per padded audio second")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of silence between a session's turns")
    parser.add_argument("--streams", type=int, default=4, help="realtime sessions")
    parser.add_argument("--file-clients", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for policy in POLICIES:
        for streams, files in ((args.streams, 0), (0, args.file_clients), (args.streams, args.file_clients)):
            rows.append(simulate(policy, streams, files, args.seconds, args.overhead, args.per_second, args.pause))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
