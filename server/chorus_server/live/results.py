"""The output side of a realtime session: its queued steps awaited in order, their text sent as deltas, and each
turn closed with a transcript from one pass over the turn's audio (or a failure).

A turn's final pass runs beside the deltas of the turns after it: it is file work for the scheduler (it may wait
behind file windows), and the next turn's deltas must not wait for it. A turn's `completed` still follows its own
deltas; it may follow some of the next turn's deltas too (each event names its item)."""

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
from chorus_server.decoding.options import DecodeRequest
from chorus_server.errors import ERROR_TYPES, ApiError, from_domain
from chorus_server.inference import TurnWork, WorkerLost
from chorus_server.live.ctc_stream import IncrementalCTC
from chorus_server.live.protocol import error_event, event_id
from chorus_server.live.steps import Step, TurnSteps
from chorus_store.base import AdapterRecord

if TYPE_CHECKING:
    from chorus_server.runtime import Runtime

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(eq=False)
class Turn:
    """One committed-or-not user item: its audio steps, their computations, its decoder."""

    item_id: str
    record: AdapterRecord
    work: TurnWork
    label: str
    steps: TurnSteps
    decoder: IncrementalCTC
    start: int  # sample of the session's audio where the turn begins
    items: list[asyncio.Future[Any]] = field(default_factory=list)  # its steps' logits, as they are computed
    audio: list[np.ndarray] = field(default_factory=list)  # all of it, for the final pass
    dropped: bool = False  # cleared or failed: its remaining steps are skipped
    decoding: DecodeRequest = field(default_factory=DecodeRequest)  # the final pass's (the session's prompt)

    def drop(self) -> None:
        self.dropped = True
        for item in self.items:
            item.cancel()


@dataclass(frozen=True)
class StepJob:
    turn: Turn
    item: asyncio.Future[Any]
    step: Step
    ready: float  # when the step became computable (for the latency metric)


@dataclass(frozen=True)
class EndJob:
    turn: Turn
    seconds: float  # the turn's audio


class Results:
    def __init__(self, runtime: Runtime, who: Principal, send: Send, rate: int):
        self.runtime, self.who, self.send, self.rate = runtime, who, send, rate
        self.lost = asyncio.Event()  # the session's worker stopped: the session must end
        self._lost_reported = False
        self.in_flight = 0  # samples queued for the inference thread and not yet decoded
        self.jobs: asyncio.Queue[StepJob | EndJob | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.finishing: set[asyncio.Task[None]] = set()  # final passes under way

    def start(self, name: str) -> None:
        self.task = asyncio.create_task(self._consume(), name=name)

    def step(self, turn: Turn, item: asyncio.Future[Any], step: Step, ready: float) -> None:
        self.in_flight += step.fresh
        self.jobs.put_nowait(StepJob(turn, item, step, ready))

    def end(self, turn: Turn, seconds: float) -> None:
        self.jobs.put_nowait(EndJob(turn, seconds))

    async def drain(self, timeout: float) -> bool:
        """Stop taking jobs and wait up to `timeout` s for the queued ones; False if they are not all done."""
        self.jobs.put_nowait(None)
        if self.task is None:
            return True
        deadline = time.monotonic() + timeout
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        if not done:
            return False
        if self.finishing:  # the consumer is done: every final pass has started
            _, pending = await asyncio.wait(set(self.finishing), timeout=max(0.0, deadline - time.monotonic()))
            return not pending
        return True

    async def close(self) -> None:
        """Finish what is queued (dropped turns are skipped), then stop."""
        self.jobs.put_nowait(None)
        if self.task is not None:
            await self.task
        if self.finishing:
            await asyncio.wait(set(self.finishing))

    async def _consume(self) -> None:
        while (job := await self.jobs.get()) is not None:
            if isinstance(job, EndJob):  # the turn's deltas are all sent: its final pass runs beside the next turn's
                task = asyncio.create_task(self._finish_quietly(job))
                self.finishing.add(task)
                task.add_done_callback(self.finishing.discard)
                continue
            try:
                await self._deliver(job)
            except Exception:  # a send to a closed socket, say: the session ends, its leases are still released
                logger.debug("realtime session: could not deliver a result", exc_info=True)

    async def _deliver(self, job: StepJob) -> None:
        turn = job.turn
        try:
            logits = await job.item
        except asyncio.CancelledError:
            if not job.item.cancelled():
                raise
            return
        except Exception as exc:
            if not turn.dropped:
                turn.drop()
                await self._fail(turn, exc)
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

    async def _finish_quietly(self, job: EndJob) -> None:
        try:
            await self._finish(job)
        except Exception:  # a send to a closed socket, say (the lease is released by _finish)
            logger.debug("realtime session: could not deliver a transcript", exc_info=True)

    async def _finish(self, job: EndJob) -> None:
        turn = job.turn
        try:
            if turn.dropped:
                return
            audio = Audio(np.concatenate(turn.audio), self.rate)
            try:
                result = await turn.work.transcribe(audio, turn.decoding)
            except Exception as exc:
                await self._fail(turn, exc)
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
            turn.work.release()

    async def _fail(self, turn: Turn, exc: Exception) -> None:
        """A turn's failure event; when the session's worker is gone, an `error` event and the session ends."""
        if isinstance(exc, WorkerLost):
            await self.worker_lost(exc)
            return
        await self.send(self._failed(turn, exc))

    async def worker_lost(self, exc: WorkerLost, client_event: str | None = None) -> None:
        """One `error` event, then `lost` is set and the session closes (set after the send: a close first would
        leave the client without the reason)."""
        if self._lost_reported:
            return
        self._lost_reported = True
        try:
            await self.send(error_event(exc.message, exc.code, None, "server_error", client_event))
        finally:
            self.lost.set()

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


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
