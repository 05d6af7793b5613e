"""`model=auto`: the language of the audio picks the transcription adapter.

A request naming `auto` is first classified by the language-ID adapter (`CHORUS_ROUTING__LANGUAGE_ADAPTER`, a
classifier over language labels) on its first `detect_seconds`; the most probable label maps to a transcription
adapter (`CHORUS_ROUTING__LANGUAGES`, else the adapter named like the label), which then transcribes the whole
file. OpenAI's `language` parameter is a hint that skips detection. Detection and transcription are two backbone
passes over the detected part: one pass would need the detector to read only layers below the first one the
chosen adapter changes, and every candidate adapter resident before the pass (docs/server.md).

Both adapters resolve for the caller like any named adapter (its own namespace, then public ones), so `auto`
reaches nothing a tenant could not name itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.classification import Classifier
from chorus_server.errors import ApiError
from chorus_server.metrics import Metrics
from chorus_server.service import AUTO_MODEL, Transcriber
from chorus_server.settings import RoutingSettings
from chorus_store.base import AdapterRecord
from chorus_store.errors import AdapterNotFound

__all__ = ["AUTO_MODEL", "LanguageRouter", "Route"]


@dataclass(frozen=True)
class Route:
    record: AdapterRecord  # the transcription adapter chosen
    language: str
    source: str  # "detected" or "hint"
    passes: int  # backbone passes over the detected audio: 2 when detected, 1 with a hint


def adapter_for(language: str, settings: RoutingSettings) -> str:
    return settings.languages.get(language, language)


class LanguageRouter:
    def __init__(self, transcriber: Transcriber, settings: RoutingSettings, metrics: Metrics):
        self.transcriber, self.settings, self.metrics = transcriber, settings, metrics

    def hinted(self, language: str, who: Principal) -> Route:
        """The adapter for a language the request names (no detection)."""
        route = Route(self._transcriber_for(language, who, "language"), language, "hint", 1)
        self.metrics.observe_auto_route(route.language, route.source, route.passes)
        return route

    async def detect(self, audio: Audio, who: Principal, disconnected: Callable[[], Awaitable[None]]) -> Route:
        """Classify the start of `audio` with the language-ID adapter; its top label picks the adapter."""
        try:
            lid = self.transcriber.resolve(self.settings.language_adapter, who, task="classify")
        except AdapterNotFound:
            raise ApiError(
                400,
                f"model=auto needs the language-ID adapter {self.settings.language_adapter!r}, which is not "
                "available; name an adapter, or pass `language`",
                "auto_unavailable",
                "model",
            ) from None
        head = int(self.settings.detect_seconds * self.transcriber.rate)
        start = Audio(audio.samples[:head], audio.rate)  # a view: no copy
        result = await Classifier(self.transcriber).classify(start, lid, who, disconnected)
        language = result.scores[0][0]
        route = Route(self._transcriber_for(language, who, "model"), language, "detected", 2)
        self.metrics.observe_auto_route(route.language, route.source, route.passes)
        return route

    def _transcriber_for(self, language: str, who: Principal, param: str) -> AdapterRecord:
        ref = adapter_for(language, self.settings)
        try:
            return self.transcriber.resolve(ref, who)
        except AdapterNotFound:
            raise ApiError(
                400,
                f"no transcription adapter for language {language!r} (looked for {ref!r}); "
                "map it with CHORUS_ROUTING__LANGUAGES or name an adapter",
                "no_adapter_for_language",
                param,
            ) from None
