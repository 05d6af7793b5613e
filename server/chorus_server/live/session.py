"""One realtime transcription session: OpenAI's Realtime client events in, server events out.

Audio is resampled to the backbone's rate, cut into turns (by server VAD, or by the client's commits) and each
turn into steps (`steps.py`). A step is queued for the inference thread as soon as its audio is in, as an
ordinary work item of the caller's tenant, so it rides in the same mixed-adapter batches as file requests and
shares the tenant's fair share. `results.py` awaits the steps in order and sends their text as
`conversation.item.input_audio_transcription.delta` events (they carry `audio_end_ms`, a Chorus extension: the
end of the audio the text accounts for). Partial text is never revised. A turn ends with `…completed`, whose
transcript comes from one pass over the whole turn, exactly as `POST /v1/audio/transcriptions` would transcribe
that audio; it usually equals the sum of the deltas, and is the better text where they differ (the deltas were
computed with little right context).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from chorus_server.auth import Principal
from chorus_server.errors import ApiError, as_api_error, from_domain
from chorus_server.inference import WorkerLost
from chorus_server.live.ctc_stream import IncrementalCTC
from chorus_server.live.pcm import PcmError, Resampler, decode_pcm16
from chorus_server.live.protocol import EventError, SessionConfig, apply_update, error_event, event_id, new_id
from chorus_server.live.results import Results, Send, Turn, error_type
from chorus_server.live.steps import Step, TurnSteps
from chorus_server.live.turns import TurnDetector
from chorus_server.tenants.base import DatabaseUnavailable
from chorus_store.base import AdapterRecord

if TYPE_CHECKING:
    from chorus_server.runtime import Runtime

logger = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # as OpenAI: a commit needs at least this much audio


class RealtimeSession:
    def __init__(self, runtime: Runtime, who: Principal, send: Send):
        self.runtime, self.who, self.send = runtime, who, send
        self.settings = runtime.settings.realtime
        self.rate = runtime.backbone.sampling_rate
        self.id = new_id("sess")
        self.config = SessionConfig()
        self.resampler = Resampler(self.config.rate, self.rate)
        self.detector = self._detector()
        self.turn: Turn | None = None
        self.previous_item: str | None = None
        self.position = 0  # samples of session audio so far (at the backbone's rate)
        self.backlog = np.zeros(0, np.float32)  # audio not yet in a turn (VAD mode: recent audio for the prefix)
        self.backlog_start = 0
        self.results = Results(runtime, who, send, self.rate)
        self.live = runtime.inference.live()  # every turn's backbone work: on one worker for the session
        self.lost = self.results.lost  # set when that worker stops: the session then ends

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.results.start(f"realtime-{self.id}")
        await self.send({"type": "session.created", "event_id": event_id(), "session": self.config.describe(self.id)})

    async def close(self) -> None:
        """The socket is gone: drop the open turn, let queued steps finish, release every adapter."""
        if self.turn is not None:
            self.turn.drop()
            self.results.end(self.turn, 0.0)
            self.turn = None
        await self.results.close()

    async def finish(self, timeout: float) -> bool:
        """The server is stopping: commit the open turn with the audio it has (if at least `MIN_COMMIT_MS`), then
        wait up to `timeout` s for every committed turn's transcript to be sent. False if they were not all sent."""
        if self.turn is not None:
            self._take_resampler_tail()
            if self.turn.steps.received * 1000 >= MIN_COMMIT_MS * self.rate:
                await self._end_turn()
            else:
                self.turn.drop()
                self.results.end(self.turn, 0.0)
                self.turn = None
        return await self.results.drain(timeout)

    # ---- client events -------------------------------------------------------------------------------------

    async def handle(self, message: str) -> None:
        client_event: str | None = None
        try:
            event = json.loads(message)
            if not isinstance(event, dict):
                raise EventError("a client event is a JSON object", "invalid_json")
            client_event = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            await self._dispatch(event)
        except json.JSONDecodeError as exc:
            await self.send(error_event(f"not JSON: {exc}", "invalid_json"))
        except EventError as exc:
            await self.send(error_event(exc.message, exc.code, exc.param, exc.type, client_event))
        except WorkerLost as exc:
            await self.results.worker_lost(exc, client_event)
        except ApiError as exc:
            await self.send(error_event(exc.message, exc.code, exc.param, error_type(exc.status_code), client_event))

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            await self._append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            await self._clear()
        elif kind == "session.update":
            await self._update(event.get("session"))
        else:
            raise EventError(f"unsupported client event type {kind!r}", "invalid_event_type", "type")

    async def _update(self, session: Any) -> None:
        config = apply_update(self.config, session)
        self._resolve(config.model)  # a name the caller cannot use is refused now, not at the first turn
        if config.rate != self.config.rate:
            self.resampler = Resampler(config.rate, self.rate)
        turn_detection_changed = config.turn_detection != self.config.turn_detection
        self.config = config
        if turn_detection_changed:
            self.detector = self._detector()
        await self.send({"type": "session.updated", "event_id": event_id(), "session": config.describe(self.id)})

    async def _append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise EventError("input_audio_buffer.append needs `audio`: base64 PCM16", "invalid_value", "audio")
        # What the base64 carries, known from its length: audio the buffer cannot take is refused before it is
        # decoded and resampled (a 15 MB append cost 0.3 s of this thread before it was refused).
        carried = max(0, len(audio) // 4 * 3 - 2) // 2  # PCM16 samples, at least (padding aside)
        held_back = self.rate // 10  # the resampler may keep a few ms of them until the next append
        self._check_buffer(carried * self.rate // self.config.rate - held_back)
        try:
            samples = self.resampler.push(decode_pcm16(audio))
        except PcmError as exc:
            raise EventError(str(exc), "invalid_audio", "audio") from None
        await self._take(samples)

    def _check_buffer(self, incoming: int) -> None:
        """Refuses `incoming` samples (at the backbone's rate) that would overfill the session's buffer."""
        buffered = self.results.in_flight + (self.turn.steps.pending if self.turn else 0) + incoming
        if buffered / self.rate > self.settings.max_buffer_seconds:
            self.runtime.metrics.observe_realtime_refusal("input_audio_buffer_full")
            raise EventError(
                f"the session has more than {self.settings.max_buffer_seconds:g} s of audio waiting to be "
                "transcribed; this append was dropped (send audio no faster than real time)",
                "input_audio_buffer_full",
                "audio",
                "server_error",
            )

    async def _take(self, samples: np.ndarray) -> None:
        """Route (L,) samples at the backbone's rate into turns: by VAD events, or all to the open turn."""
        seconds = len(samples) / self.rate
        self._check_buffer(len(samples))
        try:  # off the event loop: the audio bucket may be the shared database's
            await asyncio.to_thread(self.runtime.quotas.admit_audio, self.who.tenant, seconds)
        except DatabaseUnavailable as fault:
            raise as_api_error(fault) from fault
        except ApiError as refused:
            self.runtime.metrics.observe_refusal(self.who.tenant, refused.code or str(refused.status_code))
            raise
        self.runtime.metrics.observe_tenant_audio(self.who.tenant, seconds)
        self.backlog = np.concatenate([self.backlog, samples])
        self.position += len(samples)
        if self.detector is None:
            if self.turn is None:
                await self._open(self.backlog_start)
            self._feed_backlog(self.position)
            await self._limit_turn()
            return
        for turn_event in self.detector.push(samples):
            if turn_event.kind == "started":
                await self._open(turn_event.sample)
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "event_id": event_id(),
                        "audio_start_ms": self._ms(turn_event.sample),
                        "item_id": self.turn.item_id if self.turn else "",
                    }
                )
            elif self.turn is not None:
                self._feed_backlog(turn_event.sample)
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_stopped",
                        "event_id": event_id(),
                        "audio_end_ms": self._ms(turn_event.sample),
                        "item_id": self.turn.item_id,
                    }
                )
                await self._end_turn()
        if self.turn is not None:
            self._feed_backlog(self.position)
            await self._limit_turn()
        else:  # keep enough recent audio for the next turn's prefix padding
            keep = self.rate * (
                1 + (self.config.turn_detection.prefix_padding_ms if self.config.turn_detection else 0) // 1000
            )
            self._drop_backlog_before(self.position - keep)

    async def _limit_turn(self) -> None:
        """A turn as long as `max_turn_seconds` is committed as if the speaker had paused."""
        if self.turn is not None and self.turn.steps.received >= self.settings.max_turn_seconds * self.rate:
            await self._end_turn()
            if self.detector is not None:
                self.detector.reset(self.position)

    async def _commit(self) -> None:
        if self.turn is not None:
            self._take_resampler_tail()
        turn = self.turn
        if turn is None or turn.steps.received * 1000 < MIN_COMMIT_MS * self.rate:
            got = turn.steps.received * 1000 // self.rate if turn else 0
            raise EventError(
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, got {got} ms",
                "input_audio_buffer_commit_empty",
            )
        await self._end_turn()
        if self.detector is not None:
            self.detector.reset(self.position)

    async def _clear(self) -> None:
        self.resampler.flush()
        if self.turn is not None:
            self.turn.drop()
            self.results.end(self.turn, 0.0)
            self.turn = None
        self._drop_backlog_before(self.position)
        if self.detector is not None:
            self.detector.reset(self.position)
        await self.send({"type": "input_audio_buffer.cleared", "event_id": event_id()})

    # ---- turns ---------------------------------------------------------------------------------------------

    async def _open(self, at: int) -> None:
        """Start a turn whose audio begins at session sample `at` (earlier backlog is silence: dropped)."""
        record = self._resolve(self.config.model)  # per turn: a new version serves the next turn
        label = record.id if record.visibility == "public" else ""
        work = await self.live.open_turn(record, self.who, label)
        s = self.settings
        steps = TurnSteps(
            s.step_ms * self.rate // 1000, int(s.left_context_seconds * self.rate), s.lookahead_ms * self.rate // 1000
        )
        start = max(at, self.backlog_start)
        decoding = self.config.decode_request()  # the prompt as the turn opens: its hotwords for the final pass
        self.turn = Turn(
            new_id("item"), record, work, label, steps, IncrementalCTC(work.vocab), start, decoding=decoding
        )
        self._drop_backlog_before(self.turn.start)

    def _feed_backlog(self, until: int) -> None:
        """Move the backlog's audio up to session sample `until` into the open turn and queue its ready steps."""
        turn = self.turn
        assert turn is not None
        cut = max(0, until - self.backlog_start)
        samples, self.backlog = self.backlog[:cut], self.backlog[cut:]
        self.backlog_start += len(samples)
        turn.audio.append(samples)
        # While file windows wait, each step's left context is backbone time they lose: longer steps recompute it
        # less often (the text is as final; only the first words of a step come later).
        least = self.settings.busy_step_ms * self.rate // 1000 if self.live.bulk_waiting() else 0
        self._submit(turn, turn.steps.extend(samples, least))

    def _take_resampler_tail(self) -> None:
        tail = self.resampler.flush()
        if len(tail) and self.turn is not None:
            if self.detector is not None:
                self.detector.push(tail)  # keeps its clock in step with the session's; the turn ends here anyway
            self.backlog = np.concatenate([self.backlog, tail])
            self.position += len(tail)
            self._feed_backlog(self.position)

    async def _end_turn(self) -> None:
        turn = self.turn
        assert turn is not None
        self.turn = None
        final = turn.steps.finish()
        if final is not None:
            self._submit(turn, [final])
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "event_id": event_id(),
                "previous_item_id": self.previous_item,
                "item_id": turn.item_id,
            }
        )
        self.previous_item = turn.item_id
        self.results.end(turn, turn.steps.received / self.rate)

    def _submit(self, turn: Turn, steps: list[Step]) -> None:
        if not steps:
            return
        now = time.monotonic()
        deadline = now + self.runtime.settings.limits.request_timeout_seconds
        items = [turn.work.step(step.samples, deadline) for step in steps]
        turn.items += items
        for step, item in zip(steps, items, strict=True):
            self.results.step(turn, item, step, now)

    def _drop_backlog_before(self, sample: int) -> None:
        cut = min(len(self.backlog), max(0, sample - self.backlog_start))
        self.backlog = self.backlog[cut:]
        self.backlog_start += cut

    # ---- helpers -------------------------------------------------------------------------------------------

    def _resolve(self, model: str) -> AdapterRecord:
        try:
            return self.runtime.transcriber.resolve(model, self.who)
        except Exception as exc:
            mapped = exc if isinstance(exc, ApiError) else from_domain(exc)  # ApiError: a classifier, say
            if mapped is None:
                raise
            raise EventError(
                mapped.message, mapped.code or "invalid_value", "session.audio.input.transcription.model"
            ) from None

    def _detector(self) -> TurnDetector | None:
        vad = self.config.turn_detection
        if vad is None:
            return None
        return TurnDetector(vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms, rate=self.rate)

    def _ms(self, sample: int) -> int:
        return sample * 1000 // self.rate
