"""One transcription request from admission to transcript: resolve the adapter, find the speech (VAD), hold the
adapter resident, cut each speech region into windows, queue them for the inference thread, wait (bounded by the
deadline and the caller's presence), stitch each region's logits, decode, and join the regions' transcripts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from chorus_server.audio import MIN_SAMPLES, Audio
from chorus_server.audio_memory import AudioMemory, Hold
from chorus_server.auth import Principal
from chorus_server.batching import Priority, WorkItem
from chorus_server.chunking import Window, plan_windows, stitch
from chorus_server.decoding.beam import decode
from chorus_server.decoding.options import DecodeRequest
from chorus_server.decoding.pool import FairPool
from chorus_server.decoding.request import for_adapter
from chorus_server.decoding.resources import DecoderUnavailable
from chorus_server.engine import Engine, Transcript
from chorus_server.engine.adapters import CLASSIFIER, Adapter, Vocabulary
from chorus_server.engine.cache import AdapterCache, Lease
from chorus_server.engine.routing import Routing
from chorus_server.errors import ApiError
from chorus_server.queue_budget import QueueBudget, QueueFull, TooLarge
from chorus_server.settings import Settings
from chorus_server.speech import Speech, detect, join
from chorus_server.tenancy import resolve
from chorus_server.vad import Region, VadOptions
from chorus_server.worker import DeadlineExceeded, Worker
from chorus_store.base import AdapterRecord, AdapterStore, split_ref
from chorus_store.errors import AdapterRejected

logger = logging.getLogger(__name__)

OPENAI_DEFAULT_MODEL = "whisper-1"
AUTO_MODEL = "auto"  # the language picks the adapter (auto_route.py; file transcriptions only)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Piece:
    """One window's share of a streamed transcription: its core logits (T, V); `starts_region` on the first
    window of a speech region (regions are decoded apart and joined with a space, as `transcribe` does). Plain
    data (no adapter module), so a cluster worker can send it to the ingress."""

    vocab: Vocabulary
    logits: torch.Tensor
    starts_region: bool


@dataclass(frozen=True)
class Result:
    record: AdapterRecord
    vocab: Vocabulary
    transcript: Transcript
    speech: Speech
    worker: str = ""  # the cluster worker that transcribed it (x-chorus-worker); "" on one process


class Intake:
    """A request's way in, before any backbone work: which adapter version it means, and whether its audio may
    queue now (the tenant's queued-audio budget and decoded-audio memory). A cluster ingress has this part only;
    `Transcriber` adds the work itself. `speed`: audio seconds the server transcribes per second (Retry-After)."""

    def __init__(
        self,
        store: AdapterStore,
        settings: Settings,
        default_adapter: str | None,
        rate: int,
        speed: Callable[[], float],
    ):
        self.store, self.settings, self.default_adapter, self.rate = store, settings, default_adapter, rate
        self.speed = speed
        self.budget = QueueBudget(settings.limits.max_queue_audio_seconds)
        self.memory = AudioMemory(settings.limits.max_decoded_audio_bytes)

    def resolve(
        self, ref: str, who: Principal, task: Literal["transcribe", "classify"] = "transcribe"
    ) -> AdapterRecord:
        """The adapter version a request means; hidden adapters look exactly like missing ones. An adapter of the
        other task (a classifier asked to transcribe, a CTC adapter asked to classify) is a 400."""
        if ref == OPENAI_DEFAULT_MODEL and self.default_adapter:
            ref = self.default_adapter
        if ref == AUTO_MODEL:  # POST /v1/audio/transcriptions routes it before resolving; nothing else does
            raise ApiError(
                400,
                "model=auto picks an adapter by language for POST /v1/audio/transcriptions only; name an adapter here",
                "auto_not_supported",
                "model",
            )
        record = self._resolve_any_case(ref, who)
        if task == "transcribe" and record.kind == CLASSIFIER:
            raise ApiError(
                400,
                f"adapter {record.id!r} is a classifier; classify with POST /v1/audio/classifications",
                "wrong_adapter_task",
                "model",
            )
        if task == "classify" and record.kind != CLASSIFIER:
            raise ApiError(
                400,
                f"adapter {record.id!r} transcribes (kind {record.kind}); transcribe with POST /v1/audio/transcriptions"
                " or classify with a classifier adapter",
                "wrong_adapter_task",
                "model",
            )
        return record

    def _resolve_any_case(self, ref: str, who: Principal) -> AdapterRecord:
        """Adapter names and owners are lowercase only (chorus_store.base.NAME), so `EN` or `chorus/FR@2` can mean
        one adapter alone: it is looked up in lowercase instead of refused as an invalid reference."""
        if ref != ref.lower():
            try:
                split_ref(ref.lower())
            except AdapterRejected:
                pass  # invalid in any case: the reference as written gets the error
            else:
                ref = ref.lower()
        return resolve(self.store, ref, who)

    def default_vad(self) -> VadOptions | None:
        vad = self.settings.vad
        return VadOptions(vad.threshold, vad.silence_ms, vad.padding_ms, vad.min_speech_ms) if vad.enabled else None

    @contextlib.asynccontextmanager
    async def admitted(
        self, audio: Audio, tenant: str, disconnected: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[tuple[float, asyncio.Future[None]]]:
        """For the block, `audio` holds its place in the tenant's queued-audio budget (raises 503 or 413 when
        refused); yields the request's deadline and a future that completes when the caller disconnects. Every
        request that queues work (transcriptions, classifications, model=auto) enters through here."""
        deadline = time.monotonic() + self.settings.limits.request_timeout_seconds
        self._admit(audio.seconds, tenant)
        gone = asyncio.ensure_future(disconnected())
        try:
            yield deadline, gone
        finally:
            gone.cancel()
            self.budget.release(tenant, audio.seconds)
            self.memory.done(audio.samples)

    def check_queue(self, tenant: str, seconds: float = 0.0) -> None:
        """Raise 503 now if `seconds` more for `tenant` would not be admitted (before reading or decoding)."""
        queued = self.budget.refusal(tenant, seconds)
        if queued is not None:
            raise self._queue_full(queued)

    def hold_audio(self, tenant: str, nbytes: int) -> Hold:
        """Reserve `nbytes` of decoded audio for `tenant` before decoding, or raise 503 + Retry-After."""
        try:
            return self.memory.reserve(tenant, nbytes)
        except QueueFull as full:
            raise self._memory_full(full.queued) from None

    def check_memory(self, tenant: str, nbytes: int) -> None:
        """Raise 503 now if decoding `nbytes` more for `tenant` would be refused (before the upload is read)."""
        held = self.memory.refusal(tenant, nbytes)
        if held is not None:
            raise self._memory_full(held)

    def _memory_full(self, held: float) -> ApiError:
        # Decoded audio is held until its request finishes: the queued seconds say how soon that is.
        queued = self.budget.held
        retry = max(1, min(60, math.ceil(queued / max(self.speed(), 1.0))))
        return ApiError(
            503,
            f"the server is busy ({held / 2**20:.0f} MiB of decoded audio held, limit "
            f"{self.memory.bound / 2**20:.0f} MiB); retry after {retry} s",
            "queue_full",
            headers={"Retry-After": str(retry)},
        )

    def _admit(self, seconds: float, tenant: str) -> None:
        try:
            self.budget.reserve(tenant, seconds)
        except QueueFull as full:
            raise self._queue_full(full.queued) from None
        except TooLarge as large:
            raise ApiError(413, str(large), "audio_too_long", "file") from None

    def _queue_full(self, queued: float) -> ApiError:
        retry = max(1, min(60, math.ceil(queued / max(self.speed(), 1.0))))
        return ApiError(
            503,
            f"the server is busy ({queued:.0f} s of audio queued); retry after {retry} s",
            "queue_full",
            headers={"Retry-After": str(retry)},
        )


class Transcriber(Intake):
    """One transcription request from admission to transcript (the module docstring), on this process's engine,
    adapter cache and inference worker."""

    def __init__(
        self,
        engine: Engine,
        store: AdapterStore,
        cache: AdapterCache,
        worker: Worker,
        settings: Settings,
        default_adapter: str | None,
    ):
        super().__init__(store, settings, default_adapter, engine.preprocess.sampling_rate, lambda: worker.speed)
        self.engine, self.cache, self.worker = engine, cache, worker
        self.decoders = FairPool(max(2, os.cpu_count() or 2))  # logits -> text, tenants in turn (decoding/pool.py)

    async def transcribe(
        self,
        audio: Audio,
        record: AdapterRecord,
        tenant: Principal,
        disconnected: Callable[[], Awaitable[None]],
        vad: VadOptions | Literal["settings"] | None = "settings",
        no_speech_prob: bool = True,
        priority: Priority = Priority.FILE,
        decoding: DecodeRequest | None = None,
    ) -> Result:
        """Raises ApiError (413, 503, 504), a store error, or ClientGone when `disconnected()` completes first.
        `vad`: the detector's options (None: the whole file is speech; "settings": the server's default);
        `no_speech_prob`: whether the caller reports it (`Result.speech` then has the detector's probabilities);
        `priority`: the windows' class (FLEX for service_tier=flex); `decoding`: the request's decoder, hotwords
        (as written: spelled in the adapter's vocabulary here) and logprobs choice."""
        options = self.default_vad() if vad == "settings" else vad
        async with self.admitted(audio, tenant.tenant, disconnected) as (deadline, gone):
            return await self._run(
                audio, record, tenant.tenant, deadline, gone, options, no_speech_prob, priority, decoding
            )

    async def lease(self, record: AdapterRecord, deadline: float, gone: asyncio.Future[None]) -> Lease:
        """Hold `record`'s adapter resident (loading it if needed), waiting no longer than the request may."""
        return await self._within(asyncio.wrap_future(self.cache.lease(record.ref)), deadline, gone, [])

    async def _run(
        self,
        audio: Audio,
        record: AdapterRecord,
        tenant: str,
        deadline: float,
        gone: asyncio.Future[None],
        vad: VadOptions | None,
        no_speech_prob: bool = True,
        priority: Priority = Priority.FILE,
        decoding: DecodeRequest | None = None,
    ) -> Result:
        speech = await self._detect(audio, vad, no_speech_prob)
        lease = await self.lease(record, deadline, gone)
        try:
            plans, items = self._plan(audio, speech, lease.adapter, record, tenant, deadline, priority)
            if items:  # silence alone costs no backbone time
                self.worker.submit(items)
            gathered = asyncio.gather(*(asyncio.wrap_future(item.future) for item in items))
            pieces: list[torch.Tensor] = await self._within(gathered, deadline, gone, items)
            transcript = await self.decode_text(tenant, deadline, gone, pieces, plans, lease.adapter, decoding)
            return Result(record, lease.adapter.vocab, transcript, speech)
        finally:
            lease.release()

    async def _detect(self, audio: Audio, vad: VadOptions | None, probabilities: bool = True) -> Speech:
        hop = self.engine.config.inputs_to_logits_ratio
        return await asyncio.to_thread(detect, audio.samples, self.rate, vad, hop, MIN_SAMPLES, probabilities)

    def _plan(
        self,
        audio: Audio,
        speech: Speech,
        adapter: Adapter | Routing,
        record: AdapterRecord,
        tenant: str,
        deadline: float,
        priority: Priority = Priority.FILE,
    ) -> tuple[list[tuple[Region, list[Window]]], list[WorkItem]]:
        """Cut each speech region into windows, one work item per window for the inference thread (in order)."""
        batch = self.settings.batch
        chunk, stride = int(batch.chunk_seconds * self.rate), int(batch.stride_seconds * self.rate)
        hop = self.engine.config.inputs_to_logits_ratio
        plans = [(region, plan_windows(region.stop - region.start, chunk, stride, hop)) for region in speech.regions]
        now = time.monotonic()
        label = record.id if record.visibility == "public" else ""
        items = [
            WorkItem(
                np.ascontiguousarray(audio.samples[region.start + w.start : region.start + w.stop]),
                adapter,
                now,
                deadline,
                tenant,
                label,
                priority,
            )
            for region, windows in plans
            for w in windows
        ]
        return plans, items

    async def stream(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        disconnected: Callable[[], Awaitable[None]],
        vad: VadOptions | Literal["settings"] | None = "settings",
        priority: Priority = Priority.FILE,
    ) -> AsyncGenerator[Piece | None, None]:
        """`transcribe`, piece by piece. Yields None once the audio is admitted and queued (so a caller can refuse
        with a plain error until then), then a `Piece` per window in order as windows finish: within a speech
        region the pieces concatenated are exactly the logits `transcribe` decodes for it. Same errors as
        `transcribe`. The first window is queued alone, so its text is not held back by a batch of the others, and as
        live work (Priority.LIVE: someone waits for the first text) unless `priority` is FLEX."""
        items: list[WorkItem] = []
        async with self.admitted(audio, who.tenant, disconnected) as (deadline, gone):
            try:
                options = self.default_vad() if vad == "settings" else vad
                speech = await self._detect(audio, options, probabilities=False)  # pieces carry no no_speech_prob
                lease = await self.lease(record, deadline, gone)
                try:
                    plans, items = self._plan(audio, speech, lease.adapter, record, who.tenant, deadline, priority)
                    if items:  # silence alone costs no backbone time
                        items[0].priority = Priority.LIVE if priority < Priority.FLEX else priority
                        self.worker.submit(items[:1])
                    yield None
                    windows = [
                        (k == 0, window) for _, region_windows in plans for k, window in enumerate(region_windows)
                    ]
                    for n, ((starts_region, window), item) in enumerate(zip(windows, items, strict=True)):
                        piece = await self._within(asyncio.wrap_future(item.future), deadline, gone, items)
                        if n == 0 and len(items) > 1:
                            self.worker.submit(items[1:])
                        yield Piece(lease.adapter.vocab, piece[window.keep_from : window.keep_to], starts_region)
                finally:
                    lease.release()
            finally:
                for item in items:  # the caller stopped reading (or failed): windows not yet run must not run
                    item.future.cancel()

    def decode_request(self, decoding: DecodeRequest | None, adapter: Adapter) -> DecodeRequest:
        """A request's decoding choices for `adapter`: its hotwords spelled in the adapter's vocabulary, at most
        CHORUS_LIMITS__MAX_HOTWORDS (None: the adapter version's defaults)."""
        return for_adapter(decoding or DecodeRequest(), adapter.vocab, self.settings.limits.max_hotwords)

    async def decode_text(
        self,
        tenant: str,
        deadline: float,
        gone: asyncio.Future[None],
        pieces: list[torch.Tensor],
        plans: list[tuple[Region, list[Window]]],
        adapter: Adapter,
        decoding: DecodeRequest | None,
    ) -> Transcript:
        """`_decode` as `decoding` asks (`decode_request`) on the decode pool in `tenant`'s turn (a beam search can
        take milliseconds per audio second: never on the event loop or the inference thread), within the request's
        deadline and connection."""
        job = functools.partial(self._decode, pieces, plans, adapter, self.decode_request(decoding, adapter))
        return await self._within(self.decoders.run(tenant, job), deadline, gone, [])

    def _decode(
        self,
        pieces: list[torch.Tensor],
        plans: list[tuple[Region, list[Window]]],
        adapter: Adapter,
        request: DecodeRequest | None = None,
    ) -> Transcript:
        """pieces: (T_i, V) logits of every window of every region, in order -> the file's transcript, decoded as
        `request` asks (None: the adapter version's default decoder) with the adapter version's language model
        (`adapter.language_model`, where it has one). model=auto's one-pass transcription calls it too."""
        files = getattr(adapter, "language_model", None)
        request = request or DecodeRequest()
        parts: list[tuple[float, Transcript]] = []
        for region, windows in plans:
            mine, pieces = pieces[: len(windows)], pieces[len(windows) :]
            logits = stitch(mine, windows)  # (T, V) of this region
            try:
                transcript = decode(logits, adapter.vocab, files, request, self.engine.frame_seconds)
            except DecoderUnavailable as error:  # decoder=beam asked of a server or adapter that cannot beam-search
                raise ApiError(501, f"{error}; or ask for decoder=greedy", "decoder_unavailable", "decoder") from None
            parts.append((region.start / self.rate, transcript))
        return join(parts)

    async def _within(
        self, work: Awaitable[_T], deadline: float, gone: asyncio.Future[None], items: list[WorkItem]
    ) -> _T:
        """Await `work` until the deadline or the caller's disconnect; either way, queued items are cancelled (also
        when this request is cancelled, e.g. answered 503 by a shutdown: its windows must not run for nobody)."""
        task: asyncio.Future[Any] = asyncio.ensure_future(work)
        timeout = max(0.0, deadline - time.monotonic())
        waiting: set[asyncio.Future[Any]] = {task, gone}

        def drop_queued() -> None:
            for item in items:
                item.future.cancel()

        def abandon() -> None:
            drop_queued()
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: nobody waits for it now

        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            abandon()
            raise
        if task in done:
            try:
                return task.result()
            except DeadlineExceeded:
                drop_queued()  # the request has failed: its other windows must not run for nobody
                raise _deadline_error() from None
        abandon()
        if gone in done:
            raise ClientGone()
        raise _deadline_error()


class ClientGone(Exception):
    """The caller disconnected; its queued work was dropped and there is nobody to answer."""


def _deadline_error() -> ApiError:
    return ApiError(
        504, "the request did not finish before its deadline; retry later or send shorter audio", "deadline_exceeded"
    )
