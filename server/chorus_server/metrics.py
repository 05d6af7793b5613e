"""Prometheus metrics, defined once. Counters and histograms are recorded at a few points (request end, batch end);
queue, cache and device state is read when `/metrics` is scraped. Each app has its own registry."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chorus_server.engine.cache import AdapterCache

if TYPE_CHECKING:
    from chorus_server.batching import WorkItem

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer was complete
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
AUDIO_BUCKETS = (1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class _StateCollector(Collector):
    """Queue depth, adapter cache and device memory, read at scrape time."""

    def __init__(self) -> None:
        self.queue_state: Callable[[], tuple[int, float]] | None = None  # (items, audio seconds)
        self.adapters_info: Callable[[], tuple[list[str], list[str]]] | None = None  # (running, waiting)
        self.max_adapters = 0  # most adapters one batch can hold
        self.cache: AdapterCache | None = None
        self.device: torch.device | None = None

    def collect(self) -> Iterable[Metric]:
        if self.queue_state is not None:
            items, seconds = self.queue_state()
            yield GaugeMetricFamily("chorus_queue_depth", "Audio windows waiting for the inference thread", items)
            yield GaugeMetricFamily("chorus_queue_audio_seconds", "Audio seconds waiting in the queue", seconds)
        if self.adapters_info is not None:
            running, waiting = self.adapters_info()
            # Shaped like vLLM's lora_requests_info, so LoRA-affinity endpoint pickers can route to Chorus too.
            info = GaugeMetricFamily(
                "chorus_lora_requests_info",
                "Adapters running and waiting (public ones), like vLLM's lora_requests_info",
                labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
            )
            info.add_metric([",".join(running), ",".join(waiting), str(self.max_adapters)], time.time())
            yield info
        if self.cache is not None:
            yield from _cache_metrics(self.cache)
        if self.device is not None and self.device.type == "cuda":
            memory = GaugeMetricFamily("chorus_device_memory_bytes", "CUDA memory of the process", labels=["kind"])
            memory.add_metric(["allocated"], torch.cuda.memory_allocated(self.device))
            memory.add_metric(["reserved"], torch.cuda.memory_reserved(self.device))
            yield memory


def _cache_metrics(cache: AdapterCache) -> Iterable[Metric]:
    """Per tier. On a CPU the device bank is host RAM, the only tier: everything is reported as `tier="host"`."""
    s = cache.stats()
    tiers = {
        "host": (s.device_hits + s.host_hits, s.device_evictions + s.host_evictions, s.device_bytes, s.device_entries)
    }
    if not cache.shared_memory:
        tiers = {
            "device": (s.device_hits, s.device_evictions, s.device_bytes, s.device_entries),
            "host": (s.host_hits, s.host_evictions, s.host_bytes, s.host_entries),
        }
    hits = CounterMetricFamily("chorus_adapter_cache_hits", "Adapter lookups served from memory", labels=["tier"])
    evictions = CounterMetricFamily("chorus_adapter_evictions", "Adapters evicted from a tier", labels=["tier"])
    resident = GaugeMetricFamily("chorus_adapter_resident_bytes", "Adapter bytes resident", labels=["tier"])
    entries = GaugeMetricFamily("chorus_adapters_resident", "Adapters resident", labels=["tier"])
    for tier, (hit, evicted, size, count) in tiers.items():
        hits.add_metric([tier], hit)
        evictions.add_metric([tier], evicted)
        resident.add_metric([tier], size)
        entries.add_metric([tier], count)
    yield hits
    yield CounterMetricFamily("chorus_adapter_cache_misses", "Adapter lookups that had to load", s.misses)
    loads = CounterMetricFamily("chorus_adapter_loads", "Adapter loads from the store", labels=["result"])
    loads.add_metric(["ok"], s.loads)  # `loads` counts finished loads only; failures are counted apart
    loads.add_metric(["error"], s.load_failures)
    yield loads
    yield CounterMetricFamily("chorus_adapter_load_seconds", "Time spent loading adapters", s.load_seconds)
    yield evictions
    yield resident
    yield entries


class Metrics:
    def __init__(self, max_adapter_labels: int = 50):
        self.registry = CollectorRegistry()
        self.state = _StateCollector()
        self.registry.register(self.state)
        self._labels: set[str] = set()
        self._tenant_labels: set[str] = set()
        self._language_labels: set[str] = set()
        self._max_labels = max_adapter_labels
        self._lock = threading.Lock()
        r = self.registry
        self.requests = Counter("chorus_requests", "Finished requests", ["status", "adapter"], registry=r)
        self.request_seconds = Histogram(
            "chorus_request_duration_seconds", "Request latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "chorus_queue_wait_seconds", "Time a window waited before its batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "chorus_inference_duration_seconds", "Forward pass per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("chorus_batch_size", "Windows per batch", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_audio = Histogram(
            "chorus_batch_audio_seconds", "Audio seconds per batch", buckets=AUDIO_BUCKETS, registry=r
        )
        self.audio_seconds = Counter("chorus_audio_seconds", "Audio seconds run through the backbone", registry=r)
        self.device_oom = Counter(
            "chorus_device_oom", "Batches that ran out of device memory (split and retried)", registry=r
        )
        self.device_faults = Counter(
            "chorus_device_faults", "Sticky device errors (the worker turns not ready)", registry=r
        )
        self.batch_budget = Gauge(
            "chorus_batch_budget_ratio", "Share of the batch limits in use (below 1 after out-of-memory)", registry=r
        )
        self.batch_budget.set(1.0)
        self.in_flight = Gauge("chorus_requests_in_flight", "Transcription requests being served", registry=r)
        self.tenant_audio = Counter(
            "chorus_tenant_audio_seconds", "Audio seconds admitted per tenant", ["tenant"], registry=r
        )
        self.tenant_refusals = Counter(
            "chorus_tenant_refusals",
            "Requests refused by a tenant's limits or the queue",
            ["tenant", "code"],
            registry=r,
        )

        self.auto_routes = Counter(
            "chorus_auto_routes",
            "model=auto requests by the language chosen, how (detected or the request's hint) and backbone passes",
            ["language", "source", "passes"],
            registry=r,
        )
        self.realtime_sessions = Gauge("chorus_realtime_sessions", "Open realtime transcription sessions", registry=r)
        self.realtime_refusals = Counter(
            "chorus_realtime_refusals", "Realtime sessions or appends refused by a limit", ["code"], registry=r
        )
        self.realtime_delta_seconds = Histogram(
            "chorus_realtime_delta_latency_seconds",
            "From a realtime step's audio being in to its text being sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observe_auto_route(self, language: str, source: str, passes: int) -> None:
        """Language labels come from the language-ID adapter's labels or a hint; bounded apart from adapter IDs, so
        languages never take an adapter's label."""
        language = self._bounded(self._language_labels, language)
        self.auto_routes.labels(language=language, source=source, passes=str(passes)).inc()

    def observe_realtime_refusal(self, code: str) -> None:
        self.realtime_refusals.labels(code=code).inc()

    def observe_realtime_delta(self, seconds: float) -> None:
        self.realtime_delta_seconds.observe(seconds)

    def requests_in_flight(self) -> int:
        """Transcription and classification requests being served now (the `chorus_requests_in_flight` gauge)."""
        return int(self.in_flight._value.get())

    def adapter_label(self, adapter_id: str) -> str:
        """Bounded label cardinality: the first N adapter IDs seen get their own label, the rest share 'other'."""
        return self._bounded(self._labels, adapter_id)

    def _bounded(self, seen: set[str], value: str) -> str:
        with self._lock:
            if value in seen:
                return value
            if len(seen) < self._max_labels:
                seen.add(value)
                return value
        return "other"

    def observe_tenant_audio(self, tenant: str, seconds: float) -> None:
        self.tenant_audio.labels(tenant=self._bounded(self._tenant_labels, tenant)).inc(seconds)

    def observe_refusal(self, tenant: str, code: str) -> None:
        self.tenant_refusals.labels(tenant=self._bounded(self._tenant_labels, tenant), code=code).inc()

    def observe_request(self, status: int, adapter_id: str, seconds: float) -> None:
        self.requests.labels(status=str(status), adapter=self.adapter_label(adapter_id) if adapter_id else "").inc()
        self.request_seconds.observe(seconds)

    def observe_batch(self, batch: Sequence[WorkItem], seconds: float, audio: float, started: float) -> None:
        """`seconds`: the forward pass; `audio`: seconds of audio in the batch; `started`: when it began."""
        self.batch_size.observe(len(batch))
        self.batch_audio.observe(audio)
        self.audio_seconds.inc(audio)
        self.inference_seconds.observe(seconds)
        for item in batch:
            self.queue_wait.observe(max(0.0, started - item.enqueued))


class RequestMetrics:
    """ASGI middleware: latency, status and in-flight count of the audio endpoints (transcriptions and
    classifications), whatever the outcome (validation errors and disconnects included). Routes put the adapter ID
    in `request.state.adapter_id`. A client that disconnects before the answer is complete counts as 499, also
    when the status line had already gone out (a `stream=true` answer sends 200 before the transcript)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None], paths: Collection[str]):
        self.app, self.metrics, self.paths = app, metrics, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics() if scope["type"] == "http" and scope["path"] in self.paths else None
        if metrics is None:
            await self.app(scope, receive, send)
            return
        status = 500
        complete = gone = False
        started = time.perf_counter()

        async def watch_disconnect() -> Message:
            nonlocal gone
            message = await receive()
            # Servers also answer http.disconnect once the response is complete: only a disconnect before counts.
            gone = gone or (message["type"] == "http.disconnect" and not complete)
            return message

        async def record_status(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, watch_disconnect, record_status)
        finally:
            metrics.in_flight.dec()
            if gone and status != CLIENT_CLOSED:
                # The server's access log line, written with the status line, says `status`; this says what became.
                logger.info("%s %s: client disconnected after %d was sent; counted as 499", scope["method"],
                            scope["path"], status)  # fmt: skip
                status = CLIENT_CLOSED
            adapter_id = scope.get("state", {}).get("adapter_id", "")
            metrics.observe_request(status, adapter_id, time.perf_counter() - started)
