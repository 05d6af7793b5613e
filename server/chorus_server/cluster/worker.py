"""The worker replica: a whole Chorus runtime (backbone, adapter cache, batching inference thread) that runs the
ingress's requests on decoded audio (`cluster/remote.py` is the other side) and reports what it holds, for the
router. Answers are plain data (`Result`, `Piece`, `Classification`, logits); refusals travel as `Refused`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import torch

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.auto_route import Route
from chorus_server.batching import Priority
from chorus_server.classification import Classification
from chorus_server.decoding.options import DecodeRequest
from chorus_server.engine.adapters import Vocabulary
from chorus_server.errors import ApiError, from_domain
from chorus_server.inference import Disconnected, TurnWork, Vad, WorkerLost, forever
from chorus_server.runtime import Runtime
from chorus_server.service import Piece, Result
from chorus_server.settings import Settings
from chorus_server.vad import VadOptions
from chorus_server.validation import BackboneInfo
from chorus_store.base import AdapterRecord

_T = TypeVar("_T")


class Refused(Exception):
    """An ApiError (or a domain error's) as plain, picklable data, to cross from a worker to the ingress."""

    def __init__(self, status: int, message: str, code: str | None, param: str | None, headers: dict[str, str]):
        super().__init__(status, message, code, param, headers)

    def as_api_error(self) -> ApiError:
        status, message, code, param, headers = self.args
        if code == "worker_lost":
            return WorkerLost()
        return ApiError(status, message, code, param, headers or None)


def refused(exc: BaseException) -> BaseException:
    error = exc if isinstance(exc, ApiError) else from_domain(exc) if isinstance(exc, Exception) else None
    if error is None:
        return exc
    return Refused(error.status_code, error.message, error.code, error.param, dict(error.headers or {}))


async def until_cancelled(run: Callable[[Disconnected], Awaitable[_T]]) -> _T:
    """`run(disconnected)`, where `disconnected()` completes when the ingress cancels the call (its client left):
    the request then drops its queued work as it does for a local client that disconnects."""
    gone = asyncio.Event()

    async def disconnected() -> None:
        await gone.wait()

    task = asyncio.ensure_future(run(disconnected))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        gone.set()
        with contextlib.suppress(BaseException):
            await task
        raise
    except Exception as exc:
        raise refused(exc) from None


def writable(samples: np.ndarray) -> np.ndarray:
    """Audio as this process may use it. Ray hands a large array over as a read-only view of its shared-memory
    object store: torch warns on every tensor made from one, and a write into it (an in-place op on a tensor that
    shares its memory) would crash the worker, so such an array is copied (a 5 s clip: 320 kB, microseconds)."""
    return samples if samples.flags.writeable else samples.copy()


class ChorusWorker:
    """Deployed by `cluster.app` as a Ray Serve deployment (the decorator is applied there). Every method takes
    `adapter` (a full `owner/name@N`), which the router reads; realtime calls also take `worker`, the replica a
    session is pinned to (None for a session's first turn)."""

    def __init__(self, settings: dict[str, Any]):
        from ray import serve

        self.runtime = Runtime.start(Settings.model_validate(settings))
        assert self.runtime.worker is not None  # a runtime started without `remote` runs the backbone here
        self.worker = self.runtime.worker
        self.local = self.runtime.inference
        self.name = serve.get_replica_context().replica_id.unique_id

    def _audio(self, samples: np.ndarray) -> Audio:
        return Audio(writable(samples), self.runtime.backbone.sampling_rate)

    def describe(self) -> BackboneInfo:
        """The backbone this worker runs, for the ingress, which loads none (`RemoteWorkers.backbone`)."""
        return self.runtime.backbone

    async def _record(self, adapter: str) -> AdapterRecord:
        try:
            return await asyncio.to_thread(self.runtime.store.get, adapter)
        except Exception as exc:
            raise refused(exc) from None

    async def transcribe(
        self,
        adapter: str,
        samples: np.ndarray,
        who: Principal,
        vad: Vad,
        no_speech_prob: bool,
        priority: int,
        decoding: DecodeRequest | None = None,
    ) -> Result:
        record, audio = await self._record(adapter), self._audio(samples)
        result = await until_cancelled(
            lambda gone: self.local.transcribe(
                audio, record, who, gone, vad, no_speech_prob, Priority(priority), decoding
            )
        )
        return Result(result.record, result.vocab, result.transcript, result.speech, self.name)

    async def stream(
        self, adapter: str, samples: np.ndarray, who: Principal, vad: Vad, priority: int
    ) -> AsyncGenerator[Piece | None, None]:
        """The pieces of `Transcriber.stream`; the ingress cancelling the stream drops the windows not yet run."""
        record, audio = await self._record(adapter), self._audio(samples)
        pieces = self.local.stream(audio, record, who, forever, vad, Priority(priority))
        async with contextlib.aclosing(pieces):
            try:
                async for piece in pieces:
                    yield piece
            except Exception as exc:
                raise refused(exc) from None

    async def classify(self, adapter: str, samples: np.ndarray, who: Principal) -> Classification:
        record, audio = await self._record(adapter), self._audio(samples)
        return await until_cancelled(lambda gone: self.local.classify(audio, record, who, gone))

    async def transcribe_auto(
        self,
        adapter: None,
        samples: np.ndarray,
        who: Principal,
        vad: VadOptions | None,
        decoding: DecodeRequest | None = None,
    ) -> tuple[Route, Result]:
        """model=auto (`adapter` is None: the language picks it here)."""
        audio = self._audio(samples)
        route, result = await until_cancelled(lambda gone: self.local.transcribe_auto(audio, who, gone, vad, decoding))
        return route, Result(result.record, result.vocab, result.transcript, result.speech, self.name)

    async def detect(self, adapter: None, samples: np.ndarray, who: Principal) -> Route:
        audio = self._audio(samples)
        return await until_cancelled(lambda gone: self.local.detect(audio, who, gone))

    # ---- realtime: a session's calls all come here once its first turn did -----------------------------------

    def _check_pinned(self, worker: str | None) -> None:
        if worker is not None and worker != self.name:  # the session's worker is gone; the router sent it here
            raise refused(WorkerLost())

    async def _turn(self, adapter: str, worker: str | None, who: Principal, label: str) -> TurnWork:
        self._check_pinned(worker)
        record = await self._record(adapter)
        try:
            return await self.local.live().open_turn(record, who, label)
        except Exception as exc:
            raise refused(exc) from None

    async def open_turn(self, adapter: str, worker: str | None, who: Principal) -> tuple[str, Vocabulary]:
        """Load `adapter` here for a turn -> this worker's name (the session's pin) and the adapter's vocabulary.
        Each call leases the adapter again, so nothing stays held here should the ingress vanish."""
        turn = await self._turn(adapter, worker, who, "")
        turn.release()
        return self.name, turn.vocab

    async def step(
        self, adapter: str, worker: str | None, samples: np.ndarray, who: Principal, label: str
    ) -> torch.Tensor:
        """One realtime step's logits (T, V), computed as live work; cancelling the call drops the step."""
        deadline = time.monotonic() + self.runtime.settings.limits.request_timeout_seconds
        turn = await self._turn(adapter, worker, who, label)
        try:
            return await turn.step(writable(samples), deadline)
        except Exception as exc:
            raise refused(exc) from None
        finally:
            turn.release()

    async def final_pass(
        self,
        adapter: str,
        worker: str | None,
        samples: np.ndarray,
        who: Principal,
        decoding: DecodeRequest | None = None,
    ) -> Result:
        """A realtime turn's final pass over all of its audio (`decoding`: the session's prompt as hotwords)."""
        turn = await self._turn(adapter, worker, who, "")
        try:
            result = await turn.transcribe(self._audio(samples), decoding)
        except Exception as exc:
            raise refused(exc) from None
        finally:
            turn.release()
        return Result(result.record, result.vocab, result.transcript, result.speech, self.name)

    # ---- Ray Serve hooks --------------------------------------------------------------------------------------

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router reads (every second): adapters resident here and the work waiting."""
        keys = self.runtime.cache.resident_keys()
        return {
            "resident": sorted({key.partition("@")[0] for key in keys} | set(keys)),
            "load": self.worker.queued_items + self.runtime.metrics.requests_in_flight(),
        }

    def metric_families(self, to_replica: str | None = None) -> tuple[str, list[Any]]:
        """This replica's ID and its registry's metric families, for the ingress's `/metrics` (cluster/scrape.py).
        `to_replica`: the replica the router sends the call to."""
        return self.name, list(self.runtime.metrics.registry.collect())

    def ready(self) -> bool:
        return self.runtime.ready()

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising makes Ray replace the replica (after a sticky device error
        or when the inference thread is gone)."""
        if not self.ready():
            raise RuntimeError("Chorus worker not ready: the inference thread stopped or the device failed")

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
