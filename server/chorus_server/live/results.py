"""The output side of a realtime session: its queued steps awaited in order, their text sent as deltas, and each
turn closed with a transcript from one pass over the turn's audio (or a failure)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.batching import WorkItem
from chorus_server.engine.cache import Lease
from chorus_server.errors import ERROR_TYPES, ApiError, from_domain
from chorus_server.live.ctc_stream import IncrementalCTC
from chorus_server.live.protocol import event_id
from chorus_server.live.steps import Step, TurnSteps
from chorus_store.base import AdapterRecord

if TYPE_CHECKING:
    from chorus_server.runtime import Runtime

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(eq=False)
class Turn:
    """One committed-or-not user item: its audio steps, their work items, its decoder."""

    item_id: str
    record: AdapterRecord
    lease: Lease
    label: str
    steps: TurnSteps
    decoder: IncrementalCTC
    start: int  # sample of the session's audio where the turn begins
    items: list[WorkItem] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)  # all of it, for the final pass
    dropped: bool = False  # cleared or failed: its remaining steps are skipped

    def drop(self) -> None:
        self.dropped = True
        for item in self.items:
            item.future.cancel()


@dataclass(frozen=True)
class StepJob:
    turn: Turn
    item: WorkItem
    step: Step
    ready: float  # when the step became computable (for the latency metric)


@dataclass(frozen=True)
class EndJob:
    turn: Turn
    seconds: float  # the turn's audio


class Results:
    def __init__(self, runtime: Runtime, who: Principal, send: Send, rate: int):
        self.runtime, self.who, self.send, self.rate = runtime, who, send, rate
        self.in_flight = 0  # samples queued for the inference thread and not yet decoded
        self.jobs: asyncio.Queue[StepJob | EndJob | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self.task = asyncio.create_task(self._consume(), name=name)

    def step(self, turn: Turn, item: WorkItem, step: Step, ready: float) -> None:
        self.in_flight += step.fresh
        self.jobs.put_nowait(StepJob(turn, item, step, ready))

    def end(self, turn: Turn, seconds: float) -> None:
        self.jobs.put_nowait(EndJob(turn, seconds))

    async def drain(self, timeout: float) -> bool:
        """Stop taking jobs and wait up to `timeout` s for the queued ones; False if they are not all done."""
        self.jobs.put_nowait(None)
        if self.task is None:
            return True
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)

    async def close(self) -> None:
        """Finish what is queued (dropped turns are skipped), then stop."""
        self.jobs.put_nowait(None)
        if self.task is not None:
            await self.task

    async def _consume(self) -> None:
        while (job := await self.jobs.get()) is not None:
            try:
                if isinstance(job, StepJob):
                    await self._deliver(job)
                else:
                    await self._finish(job)
            except Exception:  # a send to a closed socket, say: the session ends, its leases are still released
                logger.debug("realtime session: could not deliver a result", exc_info=True)
                if isinstance(job, EndJob):
                    job.turn.lease.release()

    async def _deliver(self, job: StepJob) -> None:
        turn = job.turn
        try:
            logits = await asyncio.wrap_future(job.item.future)
        except asyncio.CancelledError:
            if not job.item.future.cancelled():
                raise
            return
        except Exception as exc:
            if not turn.dropped:
                turn.drop()
                await self.send(self._failed(turn, exc))
            return
        finally:
            self.in_flight -= job.step.fresh
        if turn.dropped:
            return
        delta = turn.decoder.push(logits[job.step.keep_from : job.step.keep_to])
        if delta:
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "event_id": event_id(),
                    "item_id": turn.item_id,
                    "content_index": 0,
                    "delta": delta,
                    "audio_end_ms": self._ms(turn.start + job.step.end),
                }
            )
            self.runtime.metrics.observe_realtime_delta(time.monotonic() - job.ready)

    async def _finish(self, job: EndJob) -> None:
        turn = job.turn
        try:
            if turn.dropped:
                return
            audio = Audio(np.concatenate(turn.audio), self.rate)
            try:
                result = await self.runtime.transcriber.transcribe(audio, turn.record, self.who, _forever)
            except Exception as exc:
                await self.send(self._failed(turn, exc))
                return
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": event_id(),
                    "item_id": turn.item_id,
                    "content_index": 0,
                    "transcript": result.transcript.text,
                    "usage": {"type": "duration", "seconds": round(job.seconds, 3)},
                }
            )
        finally:
            turn.lease.release()

    def _failed(self, turn: Turn, exc: Exception) -> dict[str, Any]:
        mapped = exc if isinstance(exc, ApiError) else from_domain(exc)
        if mapped is None:
            if type(exc).__name__ == "DeadlineExceeded":
                mapped = ApiError(504, "the server was too busy to transcribe this audio in time", "deadline_exceeded")
            else:
                logger.exception("realtime transcription failed", exc_info=exc)
                mapped = ApiError(500, "internal error; the server log has the details", "internal_error")
        return {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": event_id(),
            "item_id": turn.item_id,
            "content_index": 0,
            "error": {
                "type": error_type(mapped.status_code),
                "code": mapped.code,
                "message": mapped.message,
                "param": mapped.param,
            },
        }

    def _ms(self, sample: int) -> int:
        return sample * 1000 // self.rate


async def _forever() -> None:
    """A final pass is not abandoned when the client leaves: its lease and budget are released as it ends."""
    await asyncio.Event().wait()


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
