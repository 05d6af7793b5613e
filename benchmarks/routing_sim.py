"""Which worker should a request go to? A discrete-event simulation of request routing across Chorus workers.

    python -m benchmarks.routing_sim [--quick] [--json out.json] [--plot out.png] [--hardware cpu|gpu]
                                     [--workers 1 2 4 ...] [--zipf 0.8 1.0 ...] [--loads 0.5 0.8 ...]
                                     [--cache 64 ...] [--policies random least_loaded ...] [--requests N]

The model. A cluster of N workers (one Chorus server process per device). Each worker has:

- an **adapter cache** of C adapters, LRU, that never evicts an adapter a queued request holds (a lease); when
  every entry is leased the cache exceeds C until a lease is released, as `AdapterCache` does (docs/store.md);
- a **loader** running at most L cold loads at once (`CHORUS_CACHE__LOADER_THREADS`); concurrent misses for one
  adapter share one load (single flight). A request whose adapter is not resident waits for its load, then
  joins the inference queue. Loads run beside inference and do not slow it (measured: no dip, see below);
- one **inference loop** running one mixed-adapter batch at a time, as `collect_batch` does (docs/server.md):
  the oldest ready item, then up to B - 1 queued items closest to it in length (among the next 4·B), within
  the padded-audio limit; dispatched when full or when the oldest item has waited `max_wait`. A batch takes
  `overhead + per_audio_s × (⅓ × real audio + ⅔ × items × longest item)`: the conv front end, a third of the
  FLOPs, runs on real audio only and the encoder on the padded batch (docs/engine.md). The mix of adapters
  costs nothing extra (measured 0.97× of single-adapter throughput with 64 distinct adapters).

Traffic: Poisson arrivals at `load` × the cluster's capacity, where capacity is N × what one saturated worker
serves (full, length-matched batches from a deep queue; `worker_capacity`); each request names one of 10,000
adapters with Zipf(s) popularity (rank k has weight 1/k^s) and carries lognormal audio (median 5 s, σ 0.6,
clipped to 0.5–20 s, so it is one window: `CHORUS_BATCH__CHUNK_SECONDS` = 20).

Policies (`POLICIES`): random; least-loaded (fewest queued audio seconds, i.e. admitted and not finished, ties
broken at random); consistent hashing of the adapter ID on a ring with 100 virtual nodes per worker; affinity +
power of two choices (two random workers among those holding the adapter, resident or loading, topped up from
the adapter's two ring candidates when fewer hold it; the less loaded wins unless its load is above a bound,
then least-loaded), with three bounds: `affinity_p2c` 1.25 × mean load + one full batch of audio (B × mean
length); `affinity_p2c_tight` 1.25 × mean load + the audio one worker serves during one cold load (p50);
`affinity_p2c_delay` the least-loaded worker's load + that same allowance, i.e. a holder wins unless a cold load
on the least-loaded worker is expected to finish the request sooner. `affinity_p2c_ray` (mean load + 2 requests,
the first bound `chorus_server/cluster/router.py` used, with exact loads here; it now implements
`affinity_p2c_delay`) runs only when named in `--policies`.

Simplifications: the router sees every worker's exact load instantly (no staleness, no network hop, one
router); one request is one window; no tenant fairness (deficit round robin), deadlines, admission limits or
failures; the cache counts adapters of one size; a cold load's time does not depend on how busy the store is,
and its CPU and store bandwidth are not charged to anything (the run reports cold loads per second instead).

Numbers (defaults; all are options):

- cold load: lognormal with p50 23.5 ms and p95 42.3 ms (mean 25 ms) — docs/benchmarks.md, "Adapter cold
  load" (MMS-size adapter, 8.9 MB, from a LocalStore on a 2-core CPU; loader mean 25.9 ms). "Throughput during
  10 cold loads / quiet: 0.945 (noise ±0.078)" in the same file is why loads do not slow inference here;
- CPU-like worker: B = 4 items and 60 padded s (docs/server.md, CPU defaults); overhead 0.10 s per batch and
  0.0463 s per audio second, the line through Chorus bf16 at B=1 (562 ms) and B=4 (1952 ms) on 10 s clips
  (docs/benchmarks.md, "Backbone speed and batch curve"; random-weight base model, 2 shared cores);
- GPU-like worker (`--hardware gpu`): B = 64 and 1200 padded s (docs/server.md, GPU defaults); 15 ms per batch
  and 0.02 s per audio second are assumptions: docs/benchmarks.md has no GPU measurement;
- L = 2 loader threads and `max_wait` 10 ms: docs/server.md defaults. C = 64 adapters is deliberately small
  (the default 2048 MB device budget holds about 230 MMS-size adapters); sweep it with `--cache`.

Output per (policy, N, s, load, C): throughput (audio s per s), p50/p95 latency (arrival to result), cache hit
ratio (requests whose adapter was resident on arrival), cold loads per second. The first 20% of requests warm
the caches and are left out of every statistic; throughput counts audio finished while the rest arrived, so
throughput/offered below 1 means a backlog was still growing. Runs are deterministic for a seed, and all
policies of one (N, s, load, C) see the same traffic and the same cold-load durations.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import math
import os
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Hardware:
    """One worker's speed and limits."""

    name: str
    max_items: int  # B
    max_padded_s: float  # most items × longest item in one batch
    batch_overhead_s: float
    per_audio_s: float  # compute seconds per audio second
    padded_fraction: float = 2 / 3  # share of that cost paid on padding too (the encoder; the front end is not)
    max_wait_s: float = 0.010
    cold_load_p50_s: float = 0.0235
    cold_load_p95_s: float = 0.0423
    loader_slots: int = 2  # L


CPU = Hardware("cpu", max_items=4, max_padded_s=60.0, batch_overhead_s=0.100, per_audio_s=0.0463)
GPU = Hardware("gpu", max_items=64, max_padded_s=1200.0, batch_overhead_s=0.015, per_audio_s=0.02)
HARDWARE = {"cpu": CPU, "gpu": GPU}


@dataclass(frozen=True)
class Workload:
    """The traffic offered to the cluster."""

    zipf_s: float = 1.0
    load: float = 0.8  # fraction of the cluster's capacity
    n_requests: int = 20_000
    n_adapters: int = 10_000
    audio_median_s: float = 5.0
    audio_sigma: float = 0.6
    audio_min_s: float = 0.5
    audio_max_s: float = 20.0
    warmup_fraction: float = 0.2


@dataclass(frozen=True)
class Scenario:
    policy: str
    n_workers: int
    cache_capacity: int = 64  # C, adapters per worker
    workload: Workload = field(default_factory=Workload)
    hardware: Hardware = CPU
    seed: int = 0


@dataclass(frozen=True)
class Result:
    policy: str
    n_workers: int
    zipf_s: float
    load: float
    cache_capacity: int
    hardware: str
    n_requests: int
    measured_requests: int
    capacity_audio_per_s: float
    offered_audio_per_s: float
    throughput_audio_per_s: float
    p50_s: float
    p95_s: float
    hit_ratio: float
    cold_loads_per_s: float
    mean_batch_items: float
    sim_seconds: float  # simulated time covered by the measurement window


# ---------------------------------------------------------------------------------------------------------------
# Traffic


@dataclass(frozen=True)
class Traffic:
    arrivals: np.ndarray  # seconds, increasing
    adapters: np.ndarray  # popularity rank, 0 = most popular
    audio_s: np.ndarray
    load_durations: np.ndarray  # the k-th cold load of a run takes load_durations[k]
    capacity_audio_per_s: float  # whole cluster


def audio_lengths(rng: np.random.Generator, wl: Workload, n: int) -> np.ndarray:
    raw = rng.lognormal(math.log(wl.audio_median_s), wl.audio_sigma, n)
    return np.clip(raw, wl.audio_min_s, wl.audio_max_s)


def zipf_ranks(rng: np.random.Generator, wl: Workload, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, wl.n_adapters + 1) ** wl.zipf_s
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(n)), wl.n_adapters - 1)


def worker_capacity(hw: Hardware, wl: Workload) -> float:
    """Audio seconds per second one worker sustains when its queue never runs dry (same batching rule)."""
    return _capacity(hw, replace(wl, zipf_s=0.0, load=0.0, n_requests=0))  # only the lengths matter


def mean_audio(wl: Workload) -> float:
    return _mean_audio(replace(wl, zipf_s=0.0, load=0.0, n_requests=0))


@functools.cache
def _mean_audio(wl: Workload) -> float:
    return float(np.mean(audio_lengths(np.random.default_rng(1), wl, 200_000)))


@functools.cache
def _capacity(hw: Hardware, wl: Workload, samples: int = 40_000) -> float:
    """A saturated worker: its queue never runs dry, so every batch is full and length-matched."""
    lengths = audio_lengths(np.random.default_rng(12345), wl, samples)
    queue: deque[int] = deque(range(samples))
    audio = busy = 0.0
    while len(queue) >= 5 * hw.max_items:
        batch = take_batch(queue, lengths, hw)
        audio += float(lengths[batch].sum())
        busy += batch_seconds(hw, lengths, batch)
    return audio / busy


def cold_load_durations(rng: np.random.Generator, hw: Hardware, n: int) -> np.ndarray:
    sigma = math.log(hw.cold_load_p95_s / hw.cold_load_p50_s) / 1.6449
    return rng.lognormal(math.log(hw.cold_load_p50_s), sigma, n)


def make_traffic(sc: Scenario) -> Traffic:
    """The same traffic for every policy of one (seed, N, s, load, C, hardware)."""
    wl, hw = sc.workload, sc.hardware
    key = [sc.seed, sc.n_workers, round(wl.zipf_s * 1000), round(wl.load * 1000), sc.cache_capacity, wl.n_requests]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    capacity = sc.n_workers * worker_capacity(hw, wl)
    audio = audio_lengths(rng, wl, wl.n_requests)
    rate = wl.load * capacity / mean_audio(wl)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, wl.n_requests))
    adapters = zipf_ranks(rng, wl, wl.n_requests)
    return Traffic(arrivals, adapters, audio, cold_load_durations(rng, hw, wl.n_requests), capacity)


# ---------------------------------------------------------------------------------------------------------------
# Batching (one worker's inference loop)


def take_batch(queue: deque[int], lengths: np.ndarray, hw: Hardware) -> list[int]:
    """Oldest item first, then the queued items closest to it in length, within the item and padding limits."""
    first = queue.popleft()
    window = [queue.popleft() for _ in range(min(len(queue), 4 * hw.max_items))]
    base = lengths[first]
    batch, longest = [first], base
    taken: set[int] = set()
    for pos in sorted(range(len(window)), key=lambda p: abs(lengths[window[p]] - base)):
        if len(batch) == hw.max_items:
            break
        longer = max(longest, lengths[window[pos]])
        if (len(batch) + 1) * longer <= hw.max_padded_s:
            batch.append(window[pos])
            longest = longer
            taken.add(pos)
    queue.extendleft(reversed([r for p, r in enumerate(window) if p not in taken]))
    return batch


def batch_seconds(hw: Hardware, lengths: np.ndarray, batch: Sequence[int]) -> float:
    """Overhead, the front end over real audio, the encoder over the padded batch (items × longest)."""
    real = sum(float(lengths[r]) for r in batch)
    padded = len(batch) * max(float(lengths[r]) for r in batch)
    return hw.batch_overhead_s + hw.per_audio_s * ((1 - hw.padded_fraction) * real + hw.padded_fraction * padded)


# ---------------------------------------------------------------------------------------------------------------
# Consistent hashing


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a stable 64-bit hash of integers (Python's hash() is salted per process)."""
    x = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ring_candidates(n_workers: int, n_adapters: int, vnodes: int = 100) -> list[tuple[int, int]]:
    """Each adapter's first two distinct workers clockwise on a ring of `vnodes` points per worker."""
    owners = np.repeat(np.arange(n_workers), vnodes)
    points = _mix64(owners * 1_000_003 + np.tile(np.arange(vnodes), n_workers) + 7)
    order = np.argsort(points)
    points, owners = points[order], owners[order]
    starts = np.searchsorted(points, _mix64(np.arange(n_adapters) + 0x5EED)) % len(points)
    result = []
    for start in starts.tolist():
        first = second = int(owners[start])
        step = start
        while second == first and n_workers > 1:
            step = (step + 1) % len(points)
            second = int(owners[step])
        result.append((first, second))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Cluster state the policies read


class Cluster:
    """What a router may look at: each worker's queued audio seconds and which workers hold which adapter."""

    def __init__(self, n_workers: int, n_adapters: int, allowances: dict[str, float], rng: random.Random) -> None:
        self.n = n_workers
        self.load = np.zeros(n_workers)  # audio seconds admitted and not finished, per worker
        self.total_load = 0.0
        self.holders: dict[int, list[int]] = {}  # adapter -> workers where it is resident or loading
        self.ring = ring_candidates(n_workers, n_adapters)
        self.allowances = allowances  # audio seconds: "batch" (one full batch), "cold_load" (served during a load)
        self.rng = rng

    def mean_load(self) -> float:
        return self.total_load / self.n

    def least_loaded(self) -> int:
        lowest = np.flatnonzero(self.load == self.load.min())
        return int(lowest[self.rng.randrange(len(lowest))])

    def two_holders(self, adapter: int) -> list[int]:
        held = self.holders.get(adapter, ())
        if len(held) <= 2:
            return list(held)
        i = self.rng.randrange(len(held))
        j = self.rng.randrange(len(held) - 1)
        return [held[i], held[j + (j >= i)]]


# ---------------------------------------------------------------------------------------------------------------
# Policies


class Policy(Protocol):
    def choose(self, adapter: int, cluster: Cluster) -> int: ...


class RandomPolicy:
    def choose(self, adapter: int, cluster: Cluster) -> int:
        return cluster.rng.randrange(cluster.n)


class LeastLoaded:
    def choose(self, adapter: int, cluster: Cluster) -> int:
        return cluster.least_loaded()


class ConsistentHash:
    def choose(self, adapter: int, cluster: Cluster) -> int:
        return cluster.ring[adapter][0]


@dataclass
class AffinityP2C:
    """Two random holders of the adapter (topped up from its ring candidates), the less loaded one; least-loaded
    instead when that one is above the bound: `slack` × mean load, or the least load when `slack` is None, plus
    an allowance in audio seconds (`Cluster.allowances`)."""

    slack: float | None = 1.25
    allowance: str = "batch"

    def choose(self, adapter: int, cluster: Cluster) -> int:
        candidates = cluster.two_holders(adapter)
        for w in cluster.ring[adapter]:
            if len(candidates) < 2 and w not in candidates:
                candidates.append(w)
        best = min(candidates, key=lambda w: cluster.load[w])
        base = float(cluster.load.min()) if self.slack is None else self.slack * cluster.mean_load()
        return best if cluster.load[best] <= base + cluster.allowances[self.allowance] else cluster.least_loaded()


POLICIES: dict[str, Callable[[], Policy]] = {
    "random": RandomPolicy,
    "least_loaded": LeastLoaded,
    "consistent_hash": ConsistentHash,
    # bound: 1.25 × mean load + one full batch of audio (B × mean length)
    "affinity_p2c": AffinityP2C,
    # bound: 1.25 × mean load + the audio one worker serves while a cold load (p50) runs
    "affinity_p2c_tight": functools.partial(AffinityP2C, allowance="cold_load"),
    # bound: the least-loaded worker's load + that same allowance (a holder wins unless a cold load elsewhere is
    # expected to finish sooner)
    "affinity_p2c_delay": functools.partial(AffinityP2C, slack=None, allowance="cold_load"),
    # bound: mean load + 2 requests, the rule of chorus_server/cluster/router.py (SLACK = 2); not in the default
    # sweep, run it with --policies
    "affinity_p2c_ray": functools.partial(AffinityP2C, slack=1.0, allowance="two_requests"),
}
DEFAULT_POLICIES = tuple(name for name in POLICIES if name != "affinity_p2c_ray")


# ---------------------------------------------------------------------------------------------------------------
# Workers and the event loop


class Worker:
    __slots__ = ("busy", "cache", "leases", "load_queue", "loading", "loads_running", "queue", "ready_at", "timer")

    def __init__(self) -> None:
        self.cache: OrderedDict[int, None] = OrderedDict()  # resident adapters, least recently used first
        self.loading: dict[int, list[int]] = {}  # adapter -> requests waiting for its load
        self.leases: dict[int, int] = {}  # adapter -> requests on this worker that hold it
        self.load_queue: deque[int] = deque()  # adapters waiting for a loader slot
        self.loads_running = 0
        self.queue: deque[int] = deque()  # requests ready for inference, oldest first
        self.ready_at: dict[int, float] = {}
        self.busy = False
        self.timer = False  # a max-wait dispatch is scheduled


LOAD_DONE, BATCH_DONE, DISPATCH = 0, 1, 2


@dataclass
class Trace:
    """Everything a run records, per request and in total."""

    finish: np.ndarray
    worker: np.ndarray
    hit: np.ndarray
    completions: np.ndarray  # how many times each request completed (must be 1)
    load_starts: list[float]
    batch_sizes: list[int]
    busy_s: np.ndarray  # per worker
    traffic: Traffic


class Simulation:
    def __init__(self, sc: Scenario) -> None:
        self.sc, self.hw = sc, sc.hardware
        self.traffic = make_traffic(sc)
        n = sc.workload.n_requests
        allowances = {
            "batch": self.hw.max_items * mean_audio(sc.workload),
            "cold_load": self.hw.cold_load_p50_s * worker_capacity(self.hw, sc.workload),
            "two_requests": 2 * mean_audio(sc.workload),
        }
        policy_rng = random.Random(f"{sc.seed}/{sc.n_workers}/{sc.workload.zipf_s}/{sc.workload.load}")
        self.cluster = Cluster(sc.n_workers, sc.workload.n_adapters, allowances, policy_rng)
        self.policy = POLICIES[sc.policy]()
        self.workers = [Worker() for _ in range(sc.n_workers)]
        self.audio = self.traffic.audio_s
        self.audio_list = self.audio.tolist()
        self.events: list[tuple[float, int, int, int, object]] = []
        self.seq = itertools.count()
        self.trace = Trace(
            finish=np.full(n, np.nan),
            worker=np.full(n, -1),
            hit=np.zeros(n, dtype=bool),
            completions=np.zeros(n, dtype=int),
            load_starts=[],
            batch_sizes=[],
            busy_s=np.zeros(sc.n_workers),
            traffic=self.traffic,
        )

    def push(self, at: float, kind: int, worker: int, payload: object) -> None:
        heapq.heappush(self.events, (at, next(self.seq), kind, worker, payload))

    def run(self) -> Trace:
        arrivals = self.traffic.arrivals.tolist()
        adapters = self.traffic.adapters.tolist()
        i, n = 0, len(arrivals)
        while i < n or self.events:
            if i < n and (not self.events or arrivals[i] <= self.events[0][0]):
                self.arrive(i, adapters[i], arrivals[i])
                i += 1
                continue
            now, _, kind, w, payload = heapq.heappop(self.events)
            if kind == LOAD_DONE:
                self.load_done(w, payload, now)  # type: ignore[arg-type]
            elif kind == BATCH_DONE:
                self.batch_done(w, payload, now)  # type: ignore[arg-type]
            else:
                self.workers[w].timer = False
                self.maybe_dispatch(w, now)
        return self.trace

    # Requests and the cache

    def arrive(self, r: int, adapter: int, now: float) -> None:
        cluster = self.cluster
        w = self.policy.choose(adapter, cluster)
        ws = self.workers[w]
        cluster.load[w] += self.audio_list[r]
        cluster.total_load += self.audio_list[r]
        self.trace.worker[r] = w
        ws.leases[adapter] = ws.leases.get(adapter, 0) + 1
        if adapter in ws.cache:
            ws.cache.move_to_end(adapter)
            self.trace.hit[r] = True
            self.ready(w, r, now)
        elif adapter in ws.loading:
            ws.loading[adapter].append(r)
        else:
            self.start_cold_load(w, adapter, r, now)

    def start_cold_load(self, w: int, adapter: int, r: int, now: float) -> None:
        ws = self.workers[w]
        self.make_room(w)
        ws.loading[adapter] = [r]
        self.cluster.holders.setdefault(adapter, []).append(w)
        ws.load_queue.append(adapter)
        self.start_loads(w, now)

    def make_room(self, w: int) -> None:
        """Evict least recently used adapters nobody holds until one more fits (or none can go)."""
        ws = self.workers[w]
        excess = len(ws.cache) + len(ws.loading) + 1 - self.sc.cache_capacity
        if excess <= 0:
            return
        victims = [a for a in ws.cache if not ws.leases.get(a)][:excess]
        for adapter in victims:
            del ws.cache[adapter]
            self.cluster.holders[adapter].remove(w)

    def start_loads(self, w: int, now: float) -> None:
        ws = self.workers[w]
        while ws.load_queue and ws.loads_running < self.hw.loader_slots:
            adapter = ws.load_queue.popleft()
            ws.loads_running += 1
            k = len(self.trace.load_starts)
            self.trace.load_starts.append(now)
            self.push(now + float(self.traffic.load_durations[k]), LOAD_DONE, w, adapter)

    def load_done(self, w: int, adapter: int, now: float) -> None:
        ws = self.workers[w]
        ws.loads_running -= 1
        ws.cache[adapter] = None
        for r in ws.loading.pop(adapter):
            self.ready(w, r, now)
        self.start_loads(w, now)

    # Inference

    def ready(self, w: int, r: int, now: float) -> None:
        ws = self.workers[w]
        ws.queue.append(r)
        ws.ready_at[r] = now
        self.maybe_dispatch(w, now)

    def maybe_dispatch(self, w: int, now: float) -> None:
        ws = self.workers[w]
        if ws.busy or not ws.queue:
            return
        due = ws.ready_at[ws.queue[0]] + self.hw.max_wait_s
        if len(ws.queue) >= self.hw.max_items or now >= due - 1e-12:
            self.dispatch(w, now)
        elif not ws.timer:
            ws.timer = True
            self.push(due, DISPATCH, w, None)

    def dispatch(self, w: int, now: float) -> None:
        ws = self.workers[w]
        batch = take_batch(ws.queue, self.audio, self.hw)
        for r in batch:
            del ws.ready_at[r]
        seconds = batch_seconds(self.hw, self.audio, batch)
        ws.busy = True
        self.trace.busy_s[w] += seconds
        self.trace.batch_sizes.append(len(batch))
        self.push(now + seconds, BATCH_DONE, w, batch)

    def batch_done(self, w: int, batch: list[int], now: float) -> None:
        ws, cluster = self.workers[w], self.cluster
        adapters = self.traffic.adapters
        for r in batch:
            self.trace.finish[r] = now
            self.trace.completions[r] += 1
            cluster.load[w] -= self.audio_list[r]
            cluster.total_load -= self.audio_list[r]
            adapter = int(adapters[r])
            ws.leases[adapter] -= 1
            if not ws.leases[adapter]:
                del ws.leases[adapter]
        ws.busy = False
        self.maybe_dispatch(w, now)


def run_trace(sc: Scenario) -> Trace:
    return Simulation(sc).run()


def summarise(sc: Scenario, trace: Trace) -> Result:
    traffic, wl = trace.traffic, sc.workload
    start = int(wl.n_requests * wl.warmup_fraction)
    t0, t1 = float(traffic.arrivals[start]), float(traffic.arrivals[-1])
    window = t1 - t0
    latency = trace.finish[start:] - traffic.arrivals[start:]
    in_window = (trace.finish >= t0) & (trace.finish <= t1)
    loads = np.asarray(trace.load_starts)
    return Result(
        policy=sc.policy,
        n_workers=sc.n_workers,
        zipf_s=wl.zipf_s,
        load=wl.load,
        cache_capacity=sc.cache_capacity,
        hardware=sc.hardware.name,
        n_requests=wl.n_requests,
        measured_requests=wl.n_requests - start,
        capacity_audio_per_s=traffic.capacity_audio_per_s,
        offered_audio_per_s=float(traffic.audio_s[start:].sum()) / window,
        throughput_audio_per_s=float(traffic.audio_s[in_window].sum()) / window,
        p50_s=float(np.percentile(latency, 50)),
        p95_s=float(np.percentile(latency, 95)),
        hit_ratio=float(trace.hit[start:].mean()),
        cold_loads_per_s=float(((loads >= t0) & (loads <= t1)).sum()) / window,
        mean_batch_items=float(np.mean(trace.batch_sizes)),
        sim_seconds=window,
    )


def simulate(sc: Scenario) -> Result:
    return summarise(sc, run_trace(sc))


# ---------------------------------------------------------------------------------------------------------------
# Sweeps, tables, plot, CLI


@dataclass(frozen=True)
class Sweep:
    policies: tuple[str, ...] = DEFAULT_POLICIES
    workers: tuple[int, ...] = (1, 2, 4, 16, 64, 256)
    zipf: tuple[float, ...] = (0.8, 1.0, 1.2)
    loads: tuple[float, ...] = (0.5, 0.8, 0.95)
    caches: tuple[int, ...] = (64,)
    hardware: Hardware = CPU
    requests: int | None = None  # None: requests_for(N)
    seed: int = 0


QUICK = Sweep(workers=(1, 4, 16), zipf=(1.0, 1.2), loads=(0.8, 0.95), requests=3_000)


REQUESTS = {1: 8_000, 2: 8_000, 4: 8_000, 16: 12_000, 64: 24_000, 256: 48_000}


def requests_for(n_workers: int) -> int:
    """Simulated requests per run in the full sweep (`REQUESTS`), sized to finish in ~3 min on 2 cores.

    That is 190–8,000 requests per worker (190 at N = 256): small clusters reach steady state, large ones are
    measured with caches still warming and, at load 0.95, queues still growing (see throughput/offered)."""
    return REQUESTS.get(n_workers, min(48_000, max(8_000, 190 * n_workers)))


def scenarios(sweep: Sweep) -> list[Scenario]:
    out = []
    for n, s, load, cache, policy in itertools.product(
        sweep.workers, sweep.zipf, sweep.loads, sweep.caches, sweep.policies
    ):
        wl = Workload(zipf_s=s, load=load, n_requests=sweep.requests or requests_for(n))
        out.append(Scenario(policy, n, cache, wl, sweep.hardware, sweep.seed))
    return out


def run_all(items: Sequence[Scenario], jobs: int) -> list[Result]:
    if jobs <= 1:
        return [simulate(sc) for sc in items]
    # Largest first, so a big run does not start last; results keep the scenarios' order.
    order = sorted(range(len(items)), key=lambda k: -items[k].workload.n_requests)
    with ProcessPoolExecutor(jobs) as pool:
        done = dict(zip(order, pool.map(simulate, [items[k] for k in order], chunksize=1), strict=True))
    return [done[k] for k in range(len(items))]


def table(results: Iterable[Result]) -> str:
    head = "| policy | N | s | load | C | throughput (audio s/s) | vs offered | p50 | p95 | hit ratio | cold loads/s |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        lines.append(
            f"| {r.policy} | {r.n_workers} | {r.zipf_s} | {r.load} | {r.cache_capacity} | "
            f"{r.throughput_audio_per_s:.1f} | {r.throughput_audio_per_s / r.offered_audio_per_s:.3f} | "
            f"{_seconds(r.p50_s)} | {_seconds(r.p95_s)} | {r.hit_ratio:.3f} | {r.cold_loads_per_s:.2f} |"
        )
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def plot(results: Sequence[Result], path: Path) -> None:
    """Against N, one column per s: p95 latency at the two highest loads, cache hit ratio at the second highest,
    throughput/offered at the highest."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}", file=sys.stderr)
        return
    loads, cache = sorted({r.load for r in results}), min(r.cache_capacity for r in results)
    high, second = loads[-1], loads[-2] if len(loads) > 1 else loads[-1]
    zipfs = sorted({r.zipf_s for r in results})
    rows: list[tuple[str, float, Callable[[Result], float], str]] = [
        (f"p95 latency (s), load {second}", second, lambda r: r.p95_s, "log"),
        (f"p95 latency (s), load {high}", high, lambda r: r.p95_s, "log"),
        (f"cache hit ratio, load {second}", second, lambda r: r.hit_ratio, "linear"),
        (
            f"throughput / offered, load {high}",
            high,
            lambda r: r.throughput_audio_per_s / r.offered_audio_per_s,
            "linear",
        ),
    ]
    fig, axes = plt.subplots(len(rows), len(zipfs), figsize=(4.4 * len(zipfs), 11), squeeze=False, sharex=True)
    for col, s in enumerate(zipfs):
        for row, (label, load, value, scale) in enumerate(rows):
            ax = axes[row][col]
            for policy in dict.fromkeys(r.policy for r in results):
                pts = sorted(
                    (r.n_workers, value(r))
                    for r in results
                    if r.policy == policy and r.zipf_s == s and r.load == load and r.cache_capacity == cache
                )
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=policy)
            ax.set_xscale("log", base=2)
            ax.set_yscale(scale)
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
            if row == 0:
                ax.set_title(f"Zipf s={s}, C={cache}, {results[0].hardware}-like workers")
            if row == len(rows) - 1:
                ax.set_xlabel("workers N")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small sweep (N 1/4/16, s 1.0/1.2, load 0.8/0.95), seconds")
    p.add_argument("--json", type=Path, help="write every result as JSON here")
    p.add_argument("--plot", type=Path, help="draw p95, hit ratio and throughput against N here (needs matplotlib)")
    p.add_argument("--hardware", choices=sorted(HARDWARE), default="cpu", help="worker profile (default cpu)")
    p.add_argument("--workers", type=int, nargs="+", help="cluster sizes N")
    p.add_argument("--zipf", type=float, nargs="+", help="Zipf exponents s")
    p.add_argument("--loads", type=float, nargs="+", help="offered load, fractions of cluster capacity")
    p.add_argument("--cache", type=int, nargs="+", help="adapter cache capacity per worker C (default 64)")
    p.add_argument("--policies", nargs="+", choices=list(POLICIES), help="default: all but affinity_p2c_ray")
    p.add_argument("--requests", type=int, help="simulated requests per run (default: by N, see requests_for)")
    p.add_argument("--batch-items", type=int, help="B, most items per batch")
    p.add_argument("--batch-overhead-ms", type=float, help="fixed cost per batch")
    p.add_argument("--per-audio-second", type=float, help="compute seconds per padded audio second")
    p.add_argument("--cold-load-ms", type=float, help="median cold load (p95 scales with it)")
    p.add_argument("--loader-slots", type=int, help="L, concurrent cold loads per worker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    return p.parse_args(argv)


def hardware_from(args: argparse.Namespace) -> Hardware:
    hw = HARDWARE[args.hardware]
    if args.batch_items is not None:
        hw = replace(hw, max_items=args.batch_items)
    if args.batch_overhead_ms is not None:
        hw = replace(hw, batch_overhead_s=args.batch_overhead_ms / 1000)
    if args.per_audio_second is not None:
        hw = replace(hw, per_audio_s=args.per_audio_second)
    if args.cold_load_ms is not None:
        ratio = hw.cold_load_p95_s / hw.cold_load_p50_s
        hw = replace(hw, cold_load_p50_s=args.cold_load_ms / 1000, cold_load_p95_s=ratio * args.cold_load_ms / 1000)
    if args.loader_slots is not None:
        hw = replace(hw, loader_slots=args.loader_slots)
    return hw


def sweep_from(args: argparse.Namespace) -> Sweep:
    base = QUICK if args.quick else Sweep()
    return replace(
        base,
        policies=tuple(args.policies or base.policies),
        workers=tuple(args.workers or base.workers),
        zipf=tuple(args.zipf or base.zipf),
        loads=tuple(args.loads or base.loads),
        caches=tuple(args.cache or base.caches),
        hardware=hardware_from(args),
        requests=args.requests or base.requests,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sweep = sweep_from(args)
    items = scenarios(sweep)
    total = sum(sc.workload.n_requests for sc in items)
    print(f"{len(items)} runs, {total:,} simulated requests, hardware {sweep.hardware}, {args.jobs} processes")
    started = time.perf_counter()
    results = run_all(items, args.jobs)
    print(table(results))
    print(f"\n{len(items)} runs in {time.perf_counter() - started:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"hardware": asdict(sweep.hardware), "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"results written to {args.json}")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
