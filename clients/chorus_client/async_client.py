"""The Chorus client, written once: `AsyncChorus` (asyncio) here. `Chorus`, the blocking client in client.py, is
generated from this file by tools/unasync_client.py (`make client`): edit this file, never client.py.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import httpx

from chorus_client import _async_io, _core
from chorus_client._core import AudioInput, FileResult, RetryPolicy
from chorus_client.errors import APIConnectionError, ChorusError
from chorus_client.models import (
    Adapter,
    AdapterPage,
    Classification,
    Deleted,
    Health,
    ModelList,
    ResponseFormat,
    Transcription,
    VerboseTranscription,
)
from chorus_client.progress import byte_bar, progress_bar


class AsyncChorus:
    """Client for a Chorus server. `url` defaults to `$CHORUS_URL`, `api_key` to `$CHORUS_API_KEY`.

    Retries 429 and 503 answers per `retry` (honouring Retry-After); every other error raises at once as the
    `chorus_client.errors` class named by the server's error type. Use it as a context manager or close it.
    `Chorus` (blocking, thread-safe) and `AsyncChorus` (asyncio, every method awaited) have the same methods.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = _core.DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: _async_io.Sleep = _async_io.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.base_url = _core.resolve_url(url)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._jitter = jitter
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_core.auth_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncChorus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        policy = retry or self.retry
        attempt = 0
        while True:
            try:
                if content is not None:
                    kwargs["content"] = content()  # a fresh body stream for every attempt
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise APIConnectionError(
                    f"cannot reach Chorus at {self.base_url}: {exc or type(exc).__name__}"
                ) from exc
            if response.is_success:
                return response
            error = _core.error_from_response(response)
            if not policy.should_retry(response.status_code, attempt):
                raise error
            await self._sleep(policy.delay(attempt, error.retry_after, self._jitter()))
            attempt += 1

    # Application API

    @overload
    async def transcribe(
        self,
        audio: AudioInput,
        adapter: str,
        *,
        response_format: Literal["json"] = "json",
        word_timestamps: bool = False,
        timestamp_granularities: Sequence[str] | None = None,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        filename: str | None = None,
        decoder: str | None = None,
    ) -> Transcription: ...
    @overload
    async def transcribe(
        self,
        audio: AudioInput,
        adapter: str,
        *,
        response_format: Literal["verbose_json"],
        word_timestamps: bool = False,
        timestamp_granularities: Sequence[str] | None = None,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        filename: str | None = None,
        decoder: str | None = None,
    ) -> VerboseTranscription: ...
    @overload
    async def transcribe(
        self,
        audio: AudioInput,
        adapter: str,
        *,
        response_format: Literal["text", "srt", "vtt"] | str,
        word_timestamps: bool = False,
        timestamp_granularities: Sequence[str] | None = None,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        filename: str | None = None,
        decoder: str | None = None,
    ) -> Transcription | str: ...
    async def transcribe(
        self,
        audio: AudioInput,
        adapter: str,
        *,
        response_format: ResponseFormat | str = "json",
        word_timestamps: bool = False,
        timestamp_granularities: Sequence[str] | None = None,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        filename: str | None = None,
        decoder: str | None = None,
    ) -> Transcription | str:
        """Transcribe a file path, bytes or binary file with adapter `ID` or `ID@N`. `decoder`: `greedy`, or
        `beam` (the version's language model and lexicon; `prompt`'s words are boosted); None: the version's
        default.

        Returns `Transcription` for json, `VerboseTranscription` for verbose_json, and the body text for text,
        srt and vtt.
        """
        response = await self._transcription(
            audio,
            adapter,
            response_format=response_format,
            word_timestamps=word_timestamps,
            timestamp_granularities=timestamp_granularities,
            language=language,
            prompt=prompt,
            temperature=temperature,
            filename=filename,
            decoder=decoder,
        )
        return _core.transcription_result(response, response_format)

    async def _transcription(
        self,
        audio: AudioInput,
        adapter: str,
        *,
        response_format: str = "json",
        word_timestamps: bool = False,
        timestamp_granularities: Sequence[str] | None = None,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        filename: str | None = None,
        decoder: str | None = None,
    ) -> httpx.Response:
        form = _core.transcription_form(
            adapter, response_format, word_timestamps, timestamp_granularities, language, prompt, temperature, decoder
        )
        files = {"file": await _async_io.run_blocking(_core.read_audio, audio, filename)}
        return await self._send("POST", "/v1/audio/transcriptions", data=form, files=files)

    async def classify(
        self, audio: AudioInput, adapter: str, *, top_k: int | None = None, filename: str | None = None
    ) -> Classification:
        """Classify a file path, bytes or binary file with classifier adapter `ID` or `ID@N` (language ID, speaker,
        ...): its labels with their probabilities, highest first (`top_k`: only the K most probable)."""
        form = _core.classification_form(adapter, top_k)
        files = {"file": await _async_io.run_blocking(_core.read_audio, audio, filename)}
        response = await self._send("POST", "/v1/audio/classifications", data=form, files=files)
        return Classification.model_validate(response.json())

    async def _transcribe_file(self, path: Path, adapter: str, options: dict[str, Any]) -> FileResult:
        try:
            response = await self._transcription(path, adapter, **options)
        except (ChorusError, OSError) as exc:
            return FileResult.failed(path, exc)
        result = _core.transcription_result(response, options.get("response_format", "json"))
        return FileResult(path, result=result, adapter=response.headers.get("x-chorus-adapter"))

    async def transcribe_many(
        self,
        files: Sequence[str | os.PathLike[str]],
        adapter: str,
        *,
        concurrency: int = 4,
        progress: bool | None = None,
        **options: Any,
    ) -> list[FileResult]:
        """Transcribe files (directories expand to the audio files inside) with at most `concurrency` in flight.

        Results come back in input order; a file that fails carries its error instead of stopping the run.
        `progress=None` draws a bar only on a terminal.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        paths = _core.audio_files(files)
        with progress_bar(len(paths), "transcribing", unit="file", enabled=progress) as bar:

            async def one(path: Path) -> FileResult:
                try:
                    return await self._transcribe_file(path, adapter, options)
                finally:
                    bar.update(1)

            return await _async_io.map_bounded(one, paths, concurrency)

    async def transcribe_folder(self, folder: str | os.PathLike[str], adapter: str, **options: Any) -> list[FileResult]:
        """`transcribe_many` over the audio files under `folder` (recursively)."""
        if not Path(folder).is_dir():
            raise NotADirectoryError(f"not a directory: {folder}")
        return await self.transcribe_many([folder], adapter, **options)

    async def list_models(self) -> ModelList:
        return ModelList.model_validate((await self._send("GET", "/v1/models")).json())

    # Operator API

    async def list_adapters(self, limit: int | None = None, after: str | None = None) -> AdapterPage:
        params = {k: v for k, v in (("limit", limit), ("after", after)) if v is not None}
        return AdapterPage.model_validate((await self._send("GET", "/v1/adapters", params=params)).json())

    async def iter_adapters(self, page_size: int | None = None) -> AsyncIterator[Adapter]:
        """Every adapter visible to this key, following the cursor page by page."""
        after: str | None = None
        while True:
            page = await self.list_adapters(limit=page_size, after=after)
            for adapter in page.data:
                yield adapter
            if not page.next_cursor:
                return
            after = page.next_cursor

    async def get_adapter(self, ref: str) -> Adapter:
        """The current version of `ID`, or version N of `ID@N`."""
        return Adapter.model_validate((await self._send("GET", _core.adapter_path(ref))).json())

    async def upload_adapter(
        self,
        path: str | os.PathLike[str],
        adapter_id: str,
        *,
        visibility: str | None = None,
        expected_version: int | None = None,
        allow_fingerprint_mismatch: bool = False,
        progress: bool | None = None,
        lm: str | os.PathLike[str] | None = None,
        lexicon: str | os.PathLike[str] | None = None,
        beam: Mapping[str, float] | None = None,
    ) -> Adapter:
        """Publish a native adapter file as the next version of `adapter_id` — a name in the caller's namespace
        (streamed, not read into memory). `visibility` None keeps the adapter's; new adapters are private.

        `lm` (ARPA or KenLM binary) and `lexicon` (one word per line): the version's decoding files, and `beam` its
        beam settings (`chorus_client._core.BEAM_SETTINGS`: `beam_width`, `lm_weight`, `word_score`, ...); with them the
        upload is one multipart request, its files held in memory so that a retry can resend them."""
        params = _core.upload_params(visibility, expected_version, allow_fingerprint_mismatch)
        if lm is not None or lexicon is not None or beam:
            parts, fields = await _async_io.run_blocking(_core.decoding_parts, lm, lexicon, beam)
            adapter = await _async_io.run_blocking(Path(path).read_bytes)
            files = {"file": ("adapter.safetensors", adapter), **parts}
            response = await self._send("PUT", _core.adapter_path(adapter_id), files=files, data=fields, params=params)
            return Adapter.model_validate(response.json())
        source = Path(path)
        size = source.stat().st_size
        with byte_bar(size, f"uploading {source.name}", enabled=progress) as bar:

            async def body() -> AsyncIterator[bytes]:
                bar.reset()
                with source.open("rb") as f:
                    while chunk := await _async_io.run_blocking(f.read, _core.UPLOAD_CHUNK):
                        bar.update(len(chunk))
                        yield chunk

            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            response = await self._send(
                "PUT", _core.adapter_path(adapter_id), content=body, params=params, headers=headers
            )
        return Adapter.model_validate(response.json())

    async def delete_adapter(self, ref: str) -> Deleted:
        """Delete every version of `ID`, or only version N of `ID@N`."""
        return Deleted.model_validate((await self._send("DELETE", _core.adapter_path(ref))).json())

    async def pin(self, ref: str) -> Adapter:
        """Keep the adapter resident (never evicted); returns once it is resident."""
        return Adapter.model_validate((await self._send("POST", _core.adapter_path(ref, "/pin"))).json())

    async def unpin(self, ref: str) -> Adapter:
        return Adapter.model_validate((await self._send("POST", _core.adapter_path(ref, "/unpin"))).json())

    # Health

    async def health(self) -> Health:
        return Health.model_validate((await self._send("GET", "/healthz", retry=_core.NO_RETRIES)).json())

    async def ready(self) -> dict[str, Any]:
        """`/readyz`'s body; raises `OverloadedError` (no retries) while the server is not ready."""
        payload: dict[str, Any] = (await self._send("GET", "/readyz", retry=_core.NO_RETRIES)).json()
        return payload
