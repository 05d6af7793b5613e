"""`model=auto`: the language of the audio picks the transcription adapter.

A request naming `auto` is classified by the language-ID adapter (`CHORUS_ROUTING__LANGUAGE_ADAPTER`, a classifier
over language labels); the most probable label maps to a transcription adapter (`CHORUS_ROUTING__LANGUAGES`, else
the adapter named like the label), which transcribes the whole file. OpenAI's `language` parameter is a hint that
skips detection.

**One pass** where the placement allows (engine/routing.py): when the language-ID adapter mixes only the lower
hidden states and has no adapters of its own, and no adapter its labels map to changes a layer below the last state
it reads, the first window of speech is one routed work item: detection and that window's transcription share one
backbone pass, and the other windows follow with the chosen adapter. Detection then hears the first window of speech
(at most `batch.chunk_seconds`, so one pass needs chunk_seconds <= detect_seconds), and every candidate adapter is
held resident for the request (at most `one_pass_max_candidates` of them). **Two passes** otherwise, and for streamed
responses: the first `detect_seconds` of the file are classified first, then the file is transcribed.
`chorus_auto_routes_total{passes}` counts which.

Both adapters resolve for the caller like any named adapter (its own namespace, then public ones), so `auto`
reaches nothing a tenant could not name itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.classification import Classifier
from chorus_server.decoding.options import DecodeRequest
from chorus_server.decoding.request import check_beam_possible
from chorus_server.engine.cache import Lease
from chorus_server.engine.routing import Routing, last_state, one_pass_problem
from chorus_server.errors import ApiError
from chorus_server.metrics import Metrics
from chorus_server.service import AUTO_MODEL, Intake, Result, Transcriber
from chorus_server.settings import RoutingSettings
from chorus_server.vad import VadOptions
from chorus_store.base import AdapterRecord
from chorus_store.errors import AdapterNotFound

__all__ = ["AUTO_MODEL", "LanguageRouter", "Route"]


@dataclass(frozen=True)
class Route:
    record: AdapterRecord  # the transcription adapter chosen
    language: str
    source: str  # "detected" or "hint"
    passes: int  # backbone passes over the detected audio: 1 with a hint or when detected in one pass, else 2


def adapter_for(language: str, settings: RoutingSettings) -> str:
    return settings.languages.get(language, language)


class LanguageRouter:
    def __init__(self, transcriber: Transcriber, settings: RoutingSettings, metrics: Metrics):
        self.transcriber, self.settings, self.metrics = transcriber, settings, metrics

    def hinted(self, language: str, who: Principal) -> Route:
        return hinted(self.transcriber, self.settings, self.metrics, language, who)

    async def transcribe(
        self,
        audio: Audio,
        who: Principal,
        disconnected: Callable[[], Awaitable[None]],
        vad: VadOptions | None,
        decoding: DecodeRequest | None = None,
    ) -> tuple[Route, Result]:
        """Detect the language and transcribe with its adapter: in one backbone pass where the placement allows,
        else detection first (`detect`). Raises as `Transcriber.transcribe`, and 400s for `model=auto` (also
        decoder=beam when the chosen adapter has no language model)."""
        lid = self._detector(who)
        done = await self._one_pass(audio, lid, who, disconnected, vad, decoding)
        if done is not None:
            return done
        route = await self.detect(audio, who, disconnected)
        check_beam_possible(decoding.decoder if decoding else None, route.record)
        return route, await self.transcriber.transcribe(audio, route.record, who, disconnected, vad, decoding=decoding)

    async def detect(self, audio: Audio, who: Principal, disconnected: Callable[[], Awaitable[None]]) -> Route:
        """Classify the start of `audio` with the language-ID adapter; its top label picks the adapter."""
        lid = self._detector(who)
        head = int(self.settings.detect_seconds * self.transcriber.rate)
        start = Audio(audio.samples[:head], audio.rate)  # a view: no copy
        result = await Classifier(self.transcriber).classify(start, lid, who, disconnected)
        language = result.scores[0][0]
        route = Route(self._transcriber_for(language, who, "model"), language, "detected", 2)
        self.metrics.observe_auto_route(route.language, route.source, route.passes)
        return route

    async def _one_pass(
        self,
        audio: Audio,
        lid: AdapterRecord,
        who: Principal,
        disconnected: Callable[[], Awaitable[None]],
        vad: VadOptions | None,
        decoding: DecodeRequest | None = None,
    ) -> tuple[Route, Result] | None:
        """Detection riding the first window's transcription pass; None when the placement, the settings or the
        audio (no speech) do not allow it, having queued nothing."""
        t = self.transcriber
        limit = self.settings.one_pass_max_candidates
        if limit == 0 or t.settings.batch.chunk_seconds > self.settings.detect_seconds:
            return None
        async with t.admitted(audio, who.tenant, disconnected) as (deadline, gone):
            leases: list[Lease] = []

            async def lease(record: AdapterRecord) -> Lease:
                leases.append(await t.lease(record, deadline, gone))
                return leases[-1]

            try:
                detector = (await lease(lid)).adapter
                layers = t.engine.config.num_hidden_layers
                records = self._candidates(detector.labels, who)
                below = last_state(detector)  # records carry their layers: a check before loading any
                if (
                    one_pass_problem(detector, {}, layers) is not None
                    or len(records) > limit
                    or any(min(r.layers, default=layers) < below for r in records.values())
                ):
                    return None
                candidates = {label: (await lease(record)).adapter for label, record in records.items()}
                if one_pass_problem(detector, candidates, layers) is not None:
                    return None
                speech = await t._detect(audio, vad)
                routing = Routing(detector, candidates)
                plans, items = t._plan(audio, speech, routing, lid, who.tenant, deadline)
                if not items:  # silence: nothing for the detector to hear in this pass
                    return None
                t.worker.submit(items[:1])
                first = await t._within(asyncio.wrap_future(items[0].future), deadline, gone, items)
                if routing.label is None:  # the window was too short to classify
                    return None
                language = routing.label
                if language not in records:
                    self._transcriber_for(language, who, "model")  # raises the reason (missing, or not a transcriber)
                    return None  # it appeared meanwhile: transcribe in passes of its own
                record, adapter = records[language], candidates[language]
                check_beam_possible(decoding.decoder if decoding else None, record)
                public = record.id if record.visibility == "public" else ""
                for item in items[1:]:
                    item.adapter, item.label = adapter, public
                if len(items) > 1:
                    t.worker.submit(items[1:])
                rest = await t._within(
                    asyncio.gather(*(asyncio.wrap_future(item.future) for item in items[1:])), deadline, gone, items
                )
                transcript = await t.decode_text(who.tenant, deadline, gone, [first, *rest], plans, adapter, decoding)
            finally:
                for held in leases:
                    held.release()
        route = Route(record, language, "detected", 1)
        self.metrics.observe_auto_route(route.language, route.source, route.passes)
        return route, Result(record, adapter.vocab, transcript, speech)

    def _detector(self, who: Principal) -> AdapterRecord:
        try:
            return self.transcriber.resolve(self.settings.language_adapter, who, task="classify")
        except AdapterNotFound:
            raise ApiError(
                400,
                f"model=auto needs the language-ID adapter {self.settings.language_adapter!r}, which is not "
                "available; name an adapter, or pass `language`",
                "auto_unavailable",
                "model",
            ) from None

    def _candidates(self, labels: tuple[str, ...], who: Principal) -> dict[str, AdapterRecord]:
        """label -> the transcription adapter it maps to, for the labels whose adapter the caller may use."""
        found: dict[str, AdapterRecord] = {}
        for label in labels:
            try:
                found[label] = self.transcriber.resolve(adapter_for(label, self.settings), who)
            except (AdapterNotFound, ApiError):  # missing, or a classifier: reported if the detector picks it
                continue
        return found

    def _transcriber_for(self, language: str, who: Principal, param: str) -> AdapterRecord:
        return transcriber_for(self.transcriber, self.settings, language, who, param)


def hinted(intake: Intake, settings: RoutingSettings, metrics: Metrics, language: str, who: Principal) -> Route:
    """model=auto with `language`: the adapter for the language the request names (no detection, no backbone)."""
    route = Route(transcriber_for(intake, settings, language, who, "language"), language, "hint", 1)
    metrics.observe_auto_route(route.language, route.source, route.passes)
    return route


def transcriber_for(
    intake: Intake, settings: RoutingSettings, language: str, who: Principal, param: str
) -> AdapterRecord:
    ref = adapter_for(language, settings)
    try:
        return intake.resolve(ref, who)
    except AdapterNotFound:
        raise ApiError(
            400,
            f"no transcription adapter for language {language!r} (looked for {ref!r}); "
            "map it with CHORUS_ROUTING__LANGUAGES or name an adapter",
            "no_adapter_for_language",
            param,
        ) from None
