"""The ingress's side of the cluster: `Inference` on worker replicas through a Ray Serve handle.

A file request whose worker died before answering is retried once on another. A stream is one streaming call
(`handle.options(stream=True)`): its pieces come back as the worker yields them. A realtime session is pinned to
the worker that served its first turn: every later call names that worker (`worker=`, honoured by the router and
checked by the worker), and once it is gone the session fails with `WorkerLost`. A caller's disconnect cancels
the call, which cancels the work on the worker."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncGenerator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.auto_route import Route
from chorus_server.batching import Priority
from chorus_server.classification import Classification
from chorus_server.cluster.worker import Refused
from chorus_server.decoding.options import DecodeRequest
from chorus_server.engine.adapters import Vocabulary
from chorus_server.inference import Disconnected, Vad, WorkerLost
from chorus_server.service import ClientGone, Piece, Result
from chorus_server.vad import VadOptions
from chorus_server.validation import BackboneInfo
from chorus_store.base import AdapterRecord

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return ActorDiedError, ActorUnavailableError, RayActorError


def _unwrapped(exc: BaseException) -> BaseException:
    """A worker's refusal as the ApiError it was; anything else as Ray raised it."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    return cause.as_api_error() if isinstance(cause, Refused) else exc


async def _call(response: Any, disconnected: Disconnected | None = None) -> Any:
    """Await a handle call; when the caller disconnects first (or this task is cancelled), cancel it there too."""
    gone = asyncio.ensure_future(disconnected()) if disconnected is not None else None
    answer = asyncio.ensure_future(_answer(response))
    try:
        done, _ = await asyncio.wait({answer} | ({gone} if gone else set()), return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            return answer.result()
        raise ClientGone()
    except BaseException:
        response.cancel()
        answer.cancel()
        raise
    finally:
        if gone is not None:
            gone.cancel()


async def _answer(response: Any) -> Any:
    try:
        return await response
    except Exception as exc:
        unwrapped = _unwrapped(exc)
        if unwrapped is exc:
            raise
        raise unwrapped from None


class RemoteWorkers:
    def __init__(self, handle: Any, deployment: str = "chorus-worker"):
        self.handle, self.deployment = handle, deployment

    def backbone(self, timeout: float = 600.0) -> BackboneInfo:
        """A worker's description of its backbone, waiting up to `timeout` s for one to start. Asked from a thread
        of its own: a Serve handle's blocking `result()` refuses to run on an event loop's thread, which the
        ingress's constructor may be."""
        with ThreadPoolExecutor(1, thread_name_prefix="chorus-describe") as pool:
            info: BackboneInfo = pool.submit(lambda: self.handle.describe.remote().result(timeout_s=timeout)).result()
        logger.info("the workers run backbone %s on %s/%s", info.fingerprint, info.device, info.dtype)
        return info

    async def workers(self) -> int | None:
        return await asyncio.to_thread(self.live_workers)

    def live_workers(self) -> int:
        """Worker replicas Ray reports running (for /readyz)."""
        from ray import serve

        for application in serve.status().applications.values():
            status = application.deployments.get(self.deployment)
            if status is not None:
                states = {str(state).rsplit(".", 1)[-1]: count for state, count in status.replica_states.items()}
                return int(states.get("RUNNING", 0))
        return 0

    async def _retried(self, method: str, disconnected: Disconnected, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            try:
                return await _call(getattr(self.handle, method).remote(**kwargs), disconnected)
            except _lost_worker_errors():
                if attempt == 2:
                    raise
                logger.warning("a worker died running %s; retrying once on another", method)
        raise AssertionError("unreachable")

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
        result: Result = await self._retried(
            "transcribe",
            disconnected,
            adapter=record.ref,
            samples=audio.samples,
            who=who,
            vad=vad,
            no_speech_prob=no_speech_prob,
            priority=int(priority),
            decoding=decoding,
        )
        return result

    async def stream(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        disconnected: Disconnected,
        vad: Vad = "settings",
        priority: Priority = Priority.FILE,
    ) -> AsyncGenerator[Piece | None, None]:
        # A worker lost mid-stream is not retried: part of the text has been sent. It ends the stream with an
        # error event (live/sse.py), as any failure after the first byte does.
        kwargs = dict(adapter=record.ref, samples=audio.samples, who=who, vad=vad, priority=int(priority))
        pieces = self.handle.options(stream=True).stream.remote(**kwargs)
        try:
            while True:
                try:
                    piece: Piece | None = await _call(_Next(pieces), disconnected)
                except StopAsyncIteration:
                    return
                yield piece
        finally:
            pieces.cancel()  # the caller stopped reading: the worker's windows not yet run must not run

    async def classify(
        self, audio: Audio, record: AdapterRecord, who: Principal, disconnected: Disconnected
    ) -> Classification:
        result: Classification = await self._retried(
            "classify", disconnected, adapter=record.ref, samples=audio.samples, who=who
        )
        return result

    async def transcribe_auto(
        self,
        audio: Audio,
        who: Principal,
        disconnected: Disconnected,
        vad: VadOptions | None,
        decoding: DecodeRequest | None = None,
    ) -> tuple[Route, Result]:
        answer: tuple[Route, Result] = await self._retried(
            "transcribe_auto", disconnected, adapter=None, samples=audio.samples, who=who, vad=vad, decoding=decoding
        )
        return answer

    async def detect(self, audio: Audio, who: Principal, disconnected: Disconnected) -> Route:
        route: Route = await self._retried("detect", disconnected, adapter=None, samples=audio.samples, who=who)
        return route

    async def metrics(self, registry: CollectorRegistry) -> bytes:
        """Every worker replica's series too, labelled `replica` (`cluster/scrape.py`)."""
        from chorus_server.cluster.scrape import exposition

        return await exposition(self.handle, registry)

    def live(self) -> RemoteLive:
        return RemoteLive(self.handle)


class _Next:
    """The next item of a streaming call, as something `_call` can await and cancel."""

    def __init__(self, pieces: Any):
        self.pieces = pieces

    def __await__(self) -> Any:
        return self.pieces.__anext__().__await__()

    def cancel(self) -> None:
        pass  # the stream itself is cancelled by its reader (RemoteWorkers.stream)


class RemoteLive:
    """A realtime session on the cluster: its first turn picks a worker (by adapter), later calls name it."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.worker: str | None = None

    # A worker learns of live work from its steps (LIVE_LINGER_MS), not from sessions open at the ingress, and
    # the ingress cannot see a worker's queue: on a cluster, steps keep STEP_MS whatever the file traffic.
    def opened(self) -> None:
        pass

    def closed(self) -> None:
        pass

    def bulk_waiting(self) -> bool:
        return False

    def call(self, method: str, **kwargs: Any) -> Any:
        """Start a call outside the WebSocket's request context. A session's calls overlap, and Ray Serve's router
        keys the calls it is placing by the context's request ID: calls sharing one lost their turn and waited ~10 s
        each. An empty context gives every call an ID of its own."""
        return contextvars.Context().run(getattr(self.handle, method).remote, **kwargs)

    async def pinned(self, call: Awaitable[_T]) -> _T:
        """A call on the session's worker; WorkerLost once that worker has stopped."""
        try:
            return await call
        except _lost_worker_errors() as exc:
            logger.warning("realtime session: its worker %s stopped (%s)", self.worker, type(exc).__name__)
            raise WorkerLost() from None

    async def open_turn(self, record: AdapterRecord, who: Principal, label: str) -> RemoteTurn:
        call = self.call("open_turn", adapter=record.ref, worker=self.worker, who=who)
        worker, vocab = await self.pinned(_call(call))
        self.worker = worker
        return RemoteTurn(self, record, who, label, vocab)


class RemoteTurn:
    def __init__(self, live: RemoteLive, record: AdapterRecord, who: Principal, label: str, vocab: Vocabulary):
        self.live, self.record, self.who, self.label, self.vocab = live, record, who, label, vocab

    def step(self, samples: np.ndarray, deadline: float) -> asyncio.Future[torch.Tensor]:
        call = self.live.call(
            "step", adapter=self.record.ref, worker=self.live.worker, samples=samples, who=self.who, label=self.label
        )
        return asyncio.ensure_future(self.live.pinned(_call(call)))  # cancelling it cancels the call

    async def transcribe(self, audio: Audio, decoding: DecodeRequest | None = None) -> Result:
        call = self.live.call(
            "final_pass",
            adapter=self.record.ref,
            worker=self.live.worker,
            samples=audio.samples,
            who=self.who,
            decoding=decoding,
        )
        result: Result = await self.live.pinned(_call(call))
        return result

    def release(self) -> None:
        pass  # a worker holds the adapter for each call only; nothing stays leased between calls
