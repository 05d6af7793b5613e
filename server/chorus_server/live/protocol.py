"""OpenAI's Realtime transcription session, as data: the session configuration a client sets with
`session.update`, its validation, and the server events Chorus sends.

Accepted: `session.type = "transcription"`; `audio.input.format` `{"type": "audio/pcm", "rate": 24000}` (OpenAI's;
16000, 44100 and 48000 too);
`audio.input.transcription` `{"model": <adapter>, "language", "prompt"}` (language is echoed, the adapter
decides; the prompt's words are hotwords of each turn's final transcript, spelled in the adapter's vocabulary);
`audio.input.turn_detection` `{"type": "server_vad", "threshold", "prefix_padding_ms",
"silence_duration_ms"}` or null (the client commits). `noise_reduction` and `include` are accepted and not applied.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from chorus_server.decoding.options import DecodeRequest
from chorus_server.decoding.request import from_prompt
from chorus_server.live.pcm import RATES

_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def event_id() -> str:
    return f"event_{next(_counter):x}{secrets.token_hex(4)}"


class EventError(Exception):
    """A client event Chorus refuses: answered with an `error` event, the session stays open."""

    def __init__(self, message: str, code: str, param: str | None = None, error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.param, self.type = message, code, param, error_type


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def describe(self) -> dict[str, Any]:
        return {"type": "server_vad", **self.__dict__}


@dataclass(frozen=True)
class SessionConfig:
    rate: int = 24000
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)

    def decode_request(self) -> DecodeRequest:
        """The decoding choices of a turn's final transcript: the prompt's words as hotwords (the transcriber spells
        them in the turn's adapter's vocabulary and bounds their number); the version's default decoder."""
        return from_prompt(None, self.prompt, token_logprobs=False)

    def describe(self, session_id: str) -> dict[str, Any]:
        """The session object of `session.created` / `session.updated`."""
        return {
            "type": "transcription",
            "id": session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.rate},
                    "transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
                    "turn_detection": self.turn_detection.describe() if self.turn_detection else None,
                    "noise_reduction": None,
                }
            },
            "include": None,
        }


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError(f"{param} must be an object", "invalid_type", param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise EventError(f"{param} must be a number from {low:g} to {high:g}, got {value!r}", "invalid_value", param)
    return float(value)


def _text(value: Any, param: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise EventError(f"{param} must be a string", "invalid_type", param)
    return value


def apply_update(config: SessionConfig, session: Any) -> SessionConfig:
    """The configuration after `session.update` (fields left out keep their value); raises EventError."""
    session = _object(session, "session")
    if session.get("type", "transcription") != "transcription":
        raise EventError(
            f"Chorus serves transcription sessions only (session.type 'transcription'), got {session.get('type')!r}",
            "invalid_value",
            "session.type",
        )
    audio_input = _object(_object(session.get("audio", {}), "session.audio").get("input", {}), "session.audio.input")
    base = "session.audio.input"
    if "format" in audio_input:
        config = replace(config, rate=_format_rate(audio_input["format"], f"{base}.format"))
    if audio_input.get("transcription") is not None:
        transcription = _object(audio_input["transcription"], f"{base}.transcription")
        model = transcription.get("model", config.model)
        if not isinstance(model, str) or not model:
            raise EventError(
                "the transcription model must name an adapter", "invalid_value", f"{base}.transcription.model"
            )
        config = replace(
            config,
            model=model,
            language=_text(transcription.get("language"), f"{base}.transcription.language"),
            prompt=_text(transcription.get("prompt"), f"{base}.transcription.prompt"),
        )
    if "turn_detection" in audio_input:
        config = replace(
            config, turn_detection=_turn_detection(audio_input["turn_detection"], f"{base}.turn_detection")
        )
    return config


def _format_rate(value: Any, param: str) -> int:
    fmt = _object(value, param)
    if fmt.get("type", "audio/pcm") != "audio/pcm":
        raise EventError(f"only audio/pcm (PCM16) input is supported, got {fmt.get('type')!r}", "invalid_value", param)
    rate = fmt.get("rate", 24000)
    if rate not in RATES:
        rates = ", ".join(map(str, RATES))
        raise EventError(f"{param}.rate must be one of {rates}, got {rate!r}", "invalid_value", f"{param}.rate")
    return int(rate)


def _turn_detection(value: Any, param: str) -> TurnDetection | None:
    if value is None:
        return None
    spec = _object(value, param)
    if spec.get("type", "server_vad") != "server_vad":
        raise EventError(
            f"turn detection 'server_vad' or null, got {spec.get('type')!r}", "invalid_value", f"{param}.type"
        )
    default = TurnDetection()
    return TurnDetection(
        _number(spec.get("threshold", default.threshold), f"{param}.threshold", 0.0, 1.0),
        int(_number(spec.get("prefix_padding_ms", default.prefix_padding_ms), f"{param}.prefix_padding_ms", 0, 5000)),
        int(
            _number(
                spec.get("silence_duration_ms", default.silence_duration_ms), f"{param}.silence_duration_ms", 100, 10000
            )
        ),
    )


def error_event(
    message: str,
    code: str | None,
    param: str | None = None,
    error_type: str = "invalid_request_error",
    client_event_id: str | None = None,
) -> dict[str, Any]:
    error = {"type": error_type, "code": code, "message": message, "param": param, "event_id": client_event_id}
    return {"type": "error", "event_id": event_id(), "error": error}
