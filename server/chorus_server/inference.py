"""Running a request on the backbone, behind one interface: `LocalInference` (this process's transcriber and
inference thread) or `RemoteWorkers` (a cluster's worker replicas, `cluster/remote.py`). Routes call an
`Inference` and never ask which one it is.

Everything before the backbone (authentication, limits, decoding the upload, resolving the adapter, the realtime
protocol) stays with the caller; an `Inference` takes decoded audio and a resolved adapter version."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Literal, Protocol

import numpy as np
import torch
from prometheus_client import CollectorRegistry, generate_latest

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.auto_route import LanguageRouter, Route
from chorus_server.batching import Priority, WorkItem
from chorus_server.classification import Classification, Classifier
from chorus_server.decoding.options import DecodeRequest
from chorus_server.engine.adapters import Vocabulary
from chorus_server.engine.cache import Lease
from chorus_server.errors import ApiError, from_domain
from chorus_server.metrics import Metrics
from chorus_server.service import Piece, Result, Transcriber
from chorus_server.vad import VadOptions
from chorus_server.validation import BackboneInfo
from chorus_store.base import AdapterRecord

Disconnected = Callable[[], Awaitable[None]]
Vad = VadOptions | Literal["settings"] | None


class WorkerLost(ApiError):
    """The worker a realtime session runs on stopped: the session cannot go on (its audio there is lost)."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "the worker serving this session stopped; open a new session to continue",
            "worker_lost",
        )


class TurnWork(Protocol):
    """One realtime turn's backbone work; its adapter version stays resident (on one worker) until `release`."""

    vocab: Vocabulary

    def step(self, samples: np.ndarray, deadline: float) -> asyncio.Future[torch.Tensor]:
        """samples: (L,) float32 -> the step's logits (T, V), computed as live work. Cancelling the future drops
        the step if it has not run. Fails with `WorkerLost` when the session's worker is gone."""
        ...

    async def transcribe(self, audio: Audio, decoding: DecodeRequest | None = None) -> Result:
        """The turn's final pass over all of its audio (`decoding`: the session's prompt as hotwords)."""
        ...

    def release(self) -> None: ...


class Live(Protocol):
    """A realtime session's backbone work: every turn of one session runs on the same worker."""

    def opened(self) -> None:
        """The session began: while any session is open, file batches stay one slice long (docs/engine.md)."""
        ...

    def closed(self) -> None: ...

    def bulk_waiting(self) -> bool:
        """Whether file windows wait where this session's steps run (steps then cover BUSY_STEP_MS)."""
        ...

    async def open_turn(self, record: AdapterRecord, who: Principal, label: str) -> TurnWork:
        """Hold `record` resident for a turn (loading it if needed). `label`: the metrics label of its work."""
        ...


class Inference(Protocol):
    async def transcribe(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        disconnected: Disconnected,
        vad: Vad = "settings",
        no_speech_prob: bool = True,
        priority: Priority = Priority.FILE,
        decoding: DecodeRequest | None = None,
    ) -> Result:
        """A file's transcript (`Transcriber.transcribe`); raises ApiError, a store error or ClientGone."""
        ...

    def stream(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        disconnected: Disconnected,
        vad: Vad = "settings",
        priority: Priority = Priority.FILE,
    ) -> AsyncGenerator[Piece | None, None]:
        """`transcribe` piece by piece (`Transcriber.stream`): None once admitted, then a `Piece` per window."""
        ...

    async def classify(
        self, audio: Audio, record: AdapterRecord, who: Principal, disconnected: Disconnected
    ) -> Classification: ...

    async def transcribe_auto(
        self,
        audio: Audio,
        who: Principal,
        disconnected: Disconnected,
        vad: VadOptions | None,
        decoding: DecodeRequest | None = None,
    ) -> tuple[Route, Result]:
        """model=auto: detect the language, transcribe with its adapter (`LanguageRouter.transcribe`)."""
        ...

    async def detect(self, audio: Audio, who: Principal, disconnected: Disconnected) -> Route:
        """model=auto with stream=true: the language and its adapter only (`LanguageRouter.detect`)."""
        ...

    def live(self) -> Live:
        """The backbone side of a new realtime session."""
        ...

    async def workers(self) -> int | None:
        """Workers running (a cluster ingress is ready while one is); None on one process."""
        ...

    async def metrics(self, registry: CollectorRegistry) -> bytes:
        """The `/metrics` text: this process's `registry`, and on a cluster every worker replica's series."""
        ...


class Remote(Inference, Protocol):
    """A cluster's workers, as an ingress uses them (`cluster/remote.py`)."""

    def backbone(self) -> BackboneInfo:
        """The workers' description of their backbone; blocks until a worker answers."""
        ...


class LocalInference:
    """This process's transcriber and inference thread."""

    def __init__(self, transcriber: Transcriber, metrics: Metrics):
        self.transcriber = transcriber
        self.languages = LanguageRouter(transcriber, transcriber.settings.routing, metrics)

    async def transcribe(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        disconnected: Disconnected,
        vad: Vad = "settings",
        no_speech_prob: bool = True,
        priority: Priority = Priority.FILE,
        decoding: DecodeRequest | None = None,
    ) -> Result:
        return await self.transcriber.transcribe(
            audio, record, who, disconnected, vad, no_speech_prob, priority, decoding
        )

    def stream(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        disconnected: Disconnected,
        vad: Vad = "settings",
        priority: Priority = Priority.FILE,
    ) -> AsyncGenerator[Piece | None, None]:
        return self.transcriber.stream(audio, record, who, disconnected, vad, priority)

    async def classify(
        self, audio: Audio, record: AdapterRecord, who: Principal, disconnected: Disconnected
    ) -> Classification:
        return await Classifier(self.transcriber).classify(audio, record, who, disconnected)

    async def transcribe_auto(
        self,
        audio: Audio,
        who: Principal,
        disconnected: Disconnected,
        vad: VadOptions | None,
        decoding: DecodeRequest | None = None,
    ) -> tuple[Route, Result]:
        return await self.languages.transcribe(audio, who, disconnected, vad, decoding)

    async def detect(self, audio: Audio, who: Principal, disconnected: Disconnected) -> Route:
        return await self.languages.detect(audio, who, disconnected)

    def live(self) -> LocalLive:
        return LocalLive(self.transcriber)

    async def workers(self) -> int | None:
        return None

    async def metrics(self, registry: CollectorRegistry) -> bytes:
        return generate_latest(registry)


class LocalLive:
    def __init__(self, transcriber: Transcriber):
        self.transcriber = transcriber

    def opened(self) -> None:
        self.transcriber.worker.live_session_opened()

    def closed(self) -> None:
        self.transcriber.worker.live_session_closed()

    def bulk_waiting(self) -> bool:
        return self.transcriber.worker.bulk_waiting

    async def open_turn(self, record: AdapterRecord, who: Principal, label: str) -> LocalTurn:
        try:
            lease = await asyncio.wrap_future(self.transcriber.cache.lease(record.ref))
        except Exception as exc:
            mapped = from_domain(exc)
            if mapped is None:
                raise
            raise mapped from None
        return LocalTurn(self.transcriber, record, who, label, lease)


class LocalTurn:
    def __init__(self, transcriber: Transcriber, record: AdapterRecord, who: Principal, label: str, lease: Lease):
        self.transcriber, self.record, self.who, self.label, self.lease = transcriber, record, who, label, lease
        self.vocab = lease.adapter.vocab

    def step(self, samples: np.ndarray, deadline: float) -> asyncio.Future[torch.Tensor]:
        item = WorkItem(
            samples, self.lease.adapter, time.monotonic(), deadline, self.who.tenant, self.label, Priority.LIVE
        )
        self.transcriber.worker.submit([item])
        return asyncio.wrap_future(item.future)  # cancelling it cancels the work item

    async def transcribe(self, audio: Audio, decoding: DecodeRequest | None = None) -> Result:
        return await self.transcriber.transcribe(audio, self.record, self.who, forever, decoding=decoding)

    def release(self) -> None:
        self.lease.release()


async def forever() -> None:
    """A final pass is not abandoned when the client leaves: its lease and budget are released as it ends."""
    await asyncio.Event().wait()
