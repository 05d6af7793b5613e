"""`POST /v1/audio/transcriptions`, shaped like OpenAI's so existing clients work unchanged."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from chorus_server import formats
from chorus_server.audio import Audio, decode_audio, probe
from chorus_server.auth import Principal, current_principal
from chorus_server.auto_route import AUTO_MODEL, LanguageRouter, Route
from chorus_server.batching import Priority
from chorus_server.errors import ApiError
from chorus_server.live.sse import check_streamable, stream_response
from chorus_server.metrics import CLIENT_CLOSED
from chorus_server.runtime import Runtime
from chorus_server.service import ClientGone, Result
from chorus_server.speech import options_from_form

router = APIRouter(tags=["transcription"])


async def receive_audio(runtime: Runtime, who: Principal, file: UploadFile) -> Audio:
    """An upload's audio, admitted for `who`: quota, queue and decoded-audio memory checked from the header before
    decoding (refusals cost no decoding), the quota again on the decoded length, then charged to the tenant. The
    upload is decoded from its spooled file, never copied whole into memory. Shared by every route that takes an
    audio file."""
    try:
        return await _receive_audio(runtime, who, file)
    finally:
        runtime.transcriber.memory.upload_done(file.size or 0)


async def _receive_audio(runtime: Runtime, who: Principal, file: UploadFile) -> Audio:
    transcriber, rate = runtime.transcriber, runtime.engine.preprocess.sampling_rate
    max_seconds = runtime.settings.limits.max_audio_seconds
    header = await asyncio.to_thread(probe, file.file)
    probed = header.seconds if header else 0.0
    # The audio bucket may be the shared database's: its reads and writes run off the event loop.
    await asyncio.to_thread(runtime.quotas.check_audio, who.tenant, probed)
    transcriber.check_queue(who.tenant, probed)
    # Unknown length (containers only PyAV reads): the most the length limit allows, source and resampled.
    hold = transcriber.hold_audio(who.tenant, header.decode_bytes(rate) if header else int(8 * max_seconds * rate))
    try:
        audio = await asyncio.to_thread(decode_audio, file.file, rate, max_seconds)
    except BaseException:
        hold.release()
        raise
    hold.keep(audio.samples)
    await asyncio.to_thread(runtime.quotas.admit_audio, who.tenant, audio.seconds)
    runtime.metrics.observe_tenant_audio(who.tenant, audio.seconds)
    return audio


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that message can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/v1/audio/transcriptions",
    summary="Transcribe audio with an adapter (OpenAI-compatible)",
    responses={200: {"content": {"text/plain": {}, "text/vtt": {}}}},
)
async def create_transcription(
    request: Request,
    who: Annotated[Principal, Depends(current_principal)],
    file: Annotated[UploadFile, File(description="audio: wav, flac, ogg, opus, mp3 (m4a/mp4/webm with PyAV)")],
    model: Annotated[
        str,
        Form(description="adapter ID, or ID@N for a fixed version; `whisper-1`: the default; `auto`: by language"),
    ],
    language: Annotated[
        str | None, Form(description="with model=auto: the language, skipping detection; else reported back")
    ] = None,
    prompt: Annotated[str | None, Form(description="accepted for compatibility, ignored")] = None,
    temperature: Annotated[float | None, Form(ge=0, le=1, description="accepted, ignored (greedy CTC)")] = None,
    response_format: Annotated[Literal["json", "text", "srt", "vtt", "verbose_json"], Form()] = "json",
    timestamp_granularities: Annotated[
        list[Literal["word", "segment"]] | None,
        Form(alias="timestamp_granularities[]", description="word and/or segment (verbose_json; word also json)"),
    ] = None,
    stream: Annotated[
        bool, Form(description="server-sent events: transcript.text.delta…, transcript.text.done")
    ] = False,
    chunking_strategy: Annotated[
        str | None,
        Form(description='"auto" or a server_vad JSON object (or chunking_strategy[field] fields); unset: server'),
    ] = None,
    service_tier: Annotated[
        Literal["auto", "default", "flex", "priority"],
        Form(description="flex: bulk work, run when no live or ordinary work waits; others: ordinary file traffic"),
    ] = "auto",
) -> Response:
    runtime: Runtime = request.app.state.chorus
    who.require("transcribe")
    priority = Priority.FLEX if service_tier == "flex" else Priority.FILE
    if stream:
        check_streamable(response_format, runtime.remote is not None)
    # `chunking_strategy` above is for the schema; the OpenAI SDK may send it as chunking_strategy[...] fields, so
    # the whole form (already parsed, cached by Starlette) is read.
    vad = options_from_form(await request.form(), runtime.settings.vad)
    router = LanguageRouter(runtime.transcriber, runtime.settings.routing, runtime.metrics)
    route: Route | None = None
    if model == AUTO_MODEL and language:
        route = router.hinted(language, who)
    elif model == AUTO_MODEL and runtime.remote is not None:
        raise ApiError(501, "model=auto detects the language on this server, not a cluster ingress; pass "
                       "`language` or name an adapter", "not_implemented", "model")  # fmt: skip
    record = route.record if route else None if model == AUTO_MODEL else runtime.transcriber.resolve(model, who)
    audio = await receive_audio(runtime, who, file)
    result: Result | None = None
    if record is None:  # model=auto: detect (and transcribe too, where it fits one pass)
        try:
            if stream:
                route = await router.detect(audio, who, lambda: _disconnected(request))
            else:
                route, result = await router.transcribe(audio, who, lambda: _disconnected(request), vad)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        record = route.record
    if route is not None:
        language = route.language
    headers = {"x-chorus-adapter": record.ref, **({"x-chorus-language": route.language} if route else {})}
    # Request metrics: private adapters are never named (whoever scrapes may not see them).
    request.state.adapter_id = record.id if record.visibility == "public" else "private"
    granularities: set[str] = set(timestamp_granularities or [])
    if stream:
        pieces = runtime.transcriber.stream(audio, record, who, lambda: _disconnected(request), vad, priority)
        try:
            return await stream_response(pieces, audio.seconds, headers)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
    if runtime.remote is not None:  # a cluster ingress: a worker replica transcribes and renders
        answer = await runtime.remote.transcribe(
            audio, record, who, response_format, granularities, language, vad, int(priority)
        )
        if answer.status_code < 400:
            answer.headers.update(headers)
        return answer
    try:
        if result is None:
            result = await runtime.transcriber.transcribe(
                audio,
                record,
                who,
                lambda: _disconnected(request),
                vad,
                no_speech_prob=response_format == "verbose_json",
                priority=priority,
            )
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    response = render(result, response_format, granularities, language, audio.seconds, detected=route is not None)
    response.headers.update(headers)
    return response


def render(
    result: Result,
    response_format: str,
    granularities: set[str],
    language: str | None,
    duration: float,
    detected: bool = False,
) -> Response:
    """The response in `response_format`. `language`: the request's (reported when the adapter names none), or
    with `detected`, the language model=auto chose (reported as is)."""
    transcript, pauses = result.transcript, result.speech.pauses()
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(formats.srt(transcript, pauses))
    if response_format == "vtt":
        return PlainTextResponse(formats.vtt(transcript, pauses), media_type="text/vtt")
    lang = (language if detected else result.record.language or language) or ""
    if response_format == "verbose_json":
        return JSONResponse(
            formats.verbose_json(transcript, result.adapter.vocab, lang, duration, granularities, result.speech)
        )
    body: dict[str, Any] = {"text": transcript.text, "usage": formats.usage(duration)}
    if "word" in granularities:
        body["words"] = formats.words_json(transcript)
    return JSONResponse(body)
