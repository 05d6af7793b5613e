"""What the sync and async clients share: configuration, request building, retry policy, response parsing.

Everything here is I/O-free so that both clients stay thin loops around it and the rules are tested once.
"""

from __future__ import annotations

import email.utils
import mimetypes
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from chorus_client.errors import APIError, ChorusError, parse_error
from chorus_client.models import TEXT_FORMATS, Transcription, parse_transcription

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac", ".mp4"})
UPLOAD_CHUNK = 1 << 20
DECODERS = ("greedy", "beam")
BEAM_SETTINGS = (
    "beam_width",
    "lm_weight",
    "word_score",
    "unk_score",
    "unk_char_score",
    "hotword_score",
    "beam_threshold",
    "beam_tokens",
)

AudioInput = str | os.PathLike[str] | bytes | IO[bytes]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for answers that mean "try again later" (429 and 503 by default); never for other 4xx or 5xx."""

    max_retries: int = 3
    backoff: float = 0.5
    """First delay in seconds when the server gives no Retry-After; doubles per attempt, with jitter."""
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    """A Retry-After longer than this is cut to it, so a misconfigured server cannot park a client for hours."""
    statuses: frozenset[int] = frozenset({429, 503})

    def should_retry(self, status: int, attempt: int) -> bool:
        return status in self.statuses and attempt < self.max_retries

    def delay(self, attempt: int, retry_after: float | None, jitter: float) -> float:
        """Seconds to wait before retry number `attempt + 1`; `jitter` is a random number in [0, 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + jitter / 2)


NO_RETRIES = RetryPolicy(max_retries=0)


@dataclass
class FileResult:
    """One file of a multi-file run: its result, or the error that stopped it (other files carry on)."""

    path: Path
    result: Transcription | str | None = None
    error: ChorusError | None = None
    adapter: str | None = None
    """The adapter version that served it (`ID@N`), whatever the response format."""

    @staticmethod
    def failed(path: Path, exc: ChorusError | OSError) -> FileResult:
        return FileResult(
            path, error=exc if isinstance(exc, ChorusError) else ChorusError(f"cannot read {path}: {exc}")
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(response: httpx.Response) -> APIError:
    try:
        payload: Any = response.json()
    except ValueError:
        payload = response.text
    return parse_error(response.status_code, payload, parse_retry_after(response.headers.get("retry-after")))


def resolve_url(url: str | None) -> str:
    """The server's root URL. A trailing `/v1` (what OpenAI SDKs take as `base_url`) is dropped: every Chorus path
    is under the root, so both spellings can only mean one server."""
    root = (url or os.environ.get("CHORUS_URL") or DEFAULT_URL).rstrip("/")
    return root.removesuffix("/v1")


def auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("CHORUS_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


# The server's grammar (chorus_store.base.REF), checked here so that a reference never escapes its URL path.
ADAPTER_REF = re.compile(r"(?:[a-z0-9][a-z0-9._-]{0,63}/)?[a-z0-9][a-z0-9._-]{0,63}(?:@[0-9]{1,9})?", re.ASCII)


def adapter_path(ref: str, suffix: str = "") -> str:
    """`/v1/adapters/[owner/]name[@N]`, plus e.g. `/pin`."""
    if not ADAPTER_REF.fullmatch(ref):
        raise ValueError(f"expected an adapter reference [owner/]name[@N], got {ref!r}")
    return f"/v1/adapters/{quote(ref, safe='@/')}{suffix}"


def read_audio(audio: AudioInput, filename: str | None = None) -> tuple[str, bytes, str]:
    """(filename, bytes, content type) for the multipart `file` field. Bytes in memory make retries resendable."""
    if isinstance(audio, bytes):
        name, data = filename or "audio", audio
    elif isinstance(audio, str | os.PathLike):
        path = Path(audio)
        name, data = filename or path.name, path.read_bytes()
    else:
        name = filename or Path(str(getattr(audio, "name", "audio"))).name
        data = audio.read()
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return name, data, content_type


def transcription_form(
    adapter: str,
    response_format: str,
    word_timestamps: bool,
    timestamp_granularities: Sequence[str] | None,
    language: str | None,
    prompt: str | None,
    temperature: float | None,
    decoder: str | None = None,
) -> dict[str, Any]:
    if decoder not in (None, *DECODERS):
        raise ValueError(f"decoder must be 'greedy', 'beam' or None (the adapter's default), got {decoder!r}")
    if response_format not in TEXT_FORMATS | {"json", "verbose_json"}:
        raise ValueError(f"unknown response_format {response_format!r}; use json, text, srt, vtt or verbose_json")
    granularities = list(timestamp_granularities or [])
    if word_timestamps and "word" not in granularities:
        granularities.append("word")
        if response_format == "verbose_json" and "segment" not in granularities:
            # Asking for words alone would drop the default segments from the verbose answer.
            granularities.append("segment")
    form: dict[str, Any] = {"model": adapter, "response_format": response_format}
    if granularities:
        form["timestamp_granularities[]"] = granularities
    for name, value in (("language", language), ("prompt", prompt), ("temperature", temperature), ("decoder", decoder)):
        if value is not None:
            form[name] = str(value)
    return form


def transcription_result(response: httpx.Response, response_format: str) -> Transcription | str:
    if response_format in TEXT_FORMATS:
        return response.text
    return parse_transcription(response.json(), response_format, response.headers.get("x-chorus-adapter"))


def classification_form(adapter: str, top_k: int | None) -> dict[str, Any]:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return {"model": adapter, **({"top_k": str(top_k)} if top_k is not None else {})}


def upload_params(
    visibility: str | None, expected_version: int | None, allow_fingerprint_mismatch: bool
) -> dict[str, str | int]:
    """Query of an upload; `visibility` None keeps the adapter's (new adapters are private)."""
    if visibility not in (None, "private", "public"):
        raise ValueError(f"visibility must be 'private', 'public' or None, got {visibility!r}")
    params: dict[str, str | int] = {"visibility": visibility} if visibility else {}
    if expected_version is not None:
        params["expected_version"] = expected_version
    if allow_fingerprint_mismatch:
        params["allow_fingerprint_mismatch"] = "true"
    return params


def decoding_parts(
    lm: str | os.PathLike[str] | None, lexicon: str | os.PathLike[str] | None, beam: Mapping[str, float] | None
) -> tuple[dict[str, tuple[str, bytes]], dict[str, str]]:
    """Multipart files (`lm`, `lexicon`, read into memory so a retry can resend them) and beam-setting fields of
    an upload that carries decoding files. Files are sent under a neutral name: the server never uses it."""
    unknown = sorted(set(beam or {}) - set(BEAM_SETTINGS))
    if unknown:
        raise ValueError(f"unknown beam setting {unknown[0]!r}; use {', '.join(BEAM_SETTINGS)}")
    if beam and lm is None and lexicon is None:
        raise ValueError("beam settings need a language model or lexicon (lm=..., lexicon=...)")
    files = {name: (name, Path(path).read_bytes()) for name, path in (("lm", lm), ("lexicon", lexicon)) if path}
    return files, {name: str(value) for name, value in (beam or {}).items()}


def audio_files(paths: Sequence[str | os.PathLike[str]], recursive: bool = True) -> list[Path]:
    """Files as given, and the audio files (by suffix, sorted) inside any directory among them."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(p for p in sorted(item.glob(pattern)) if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            found.append(item)
    return found
