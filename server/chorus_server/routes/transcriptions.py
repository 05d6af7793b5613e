"""`POST /v1/audio/transcriptions`, shaped like OpenAI's so existing clients work unchanged."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from chorus_server import formats
from chorus_server.audio import Audio, decode_audio, probe
from chorus_server.auth import Principal, current_principal
from chorus_server.auto_route import AUTO_MODEL, Route, hinted
from chorus_server.batching import Priority
from chorus_server.decoding.request import check_beam_possible, check_decoder, check_include, from_prompt
from chorus_server.errors import ApiError
from chorus_server.live.sse import check_streamable, stream_response
from chorus_server.metrics import CLIENT_CLOSED
from chorus_server.runtime import Runtime
from chorus_server.service import ClientGone, Result
from chorus_server.speech import options_from_form

router = APIRouter(tags=["transcription"])


async def receive_audio(runtime: Runtime, who: Principal, request: Request, file: UploadFile) -> Audio:
    """An upload's audio, admitted for `who`: quota, queue and decoded-audio memory checked from the header before
    decoding (refusals cost no decoding), the quota again on the decoded length, then charged to the tenant. The
    upload is decoded from its spooled file, never copied whole into memory. Shared by every route that takes an
    audio file; a request with more than one `file` part is refused (only one would have been heard)."""
    try:
        parts = len((await request.form()).getlist("file"))  # parsed already: Starlette caches the form
        if parts > 1:
            message = f"send one audio file per request; this request has {parts} `file` parts"
            raise ApiError(400, message, "too_many_files", "file")
        return await _receive_audio(runtime, who, file)
    finally:
        runtime.transcriber.memory.upload_done(file.size or 0)


async def _receive_audio(runtime: Runtime, who: Principal, file: UploadFile) -> Audio:
    transcriber, rate = runtime.transcriber, runtime.backbone.sampling_rate
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
    prompt: Annotated[
        str | None,
        Form(description="words to boost in beam decoding (hotwords), spelled in the adapter's vocabulary"),
    ] = None,
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
    decoder: Annotated[
        str | None,
        Form(
            description="greedy, or beam (the adapter version's language model and lexicon); unset: the version's "
            "default, beam where it has a language model (OpenAI SDK: extra_body)"
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        Form(alias="include[]", description="logprobs: each token's log-probability (response_format json only)"),
    ] = None,
) -> Response:
    runtime: Runtime = request.app.state.chorus
    who.require("transcribe")
    priority = Priority.FLEX if service_tier == "flex" else Priority.FILE
    chosen = check_decoder(decoder)
    decoding = from_prompt(chosen, prompt, check_include(include, response_format))
    if stream:
        check_streamable(response_format)
        for asked, param in ((chosen == "beam", "decoder"), (decoding.token_logprobs, "include[]")):
            if asked:  # streamed deltas come from the incremental greedy decoder (docs/server.md)
                message = f"stream=true sends greedy text as it is decoded: send {param} without stream"
                raise ApiError(400, message, "invalid_decoder" if param == "decoder" else "invalid_include", param)
    # `chunking_strategy` above is for the schema; the OpenAI SDK may send it as chunking_strategy[...] fields, so
    # the whole form (already parsed, cached by Starlette) is read.
    vad = options_from_form(await request.form(), runtime.settings.vad)
    route: Route | None = None
    if model == AUTO_MODEL and language:
        route = hinted(runtime.transcriber, runtime.settings.routing, runtime.metrics, language, who)
    record = route.record if route else None if model == AUTO_MODEL else runtime.transcriber.resolve(model, who)
    if record is not None:
        check_beam_possible(chosen, record)  # before the audio is read or charged
    audio = await receive_audio(runtime, who, request, file)
    result: Result | None = None
    if record is None:  # model=auto: detect (and transcribe too, where it fits one pass)
        try:
            if stream:
                route = await runtime.inference.detect(audio, who, lambda: _disconnected(request))
            else:
                route, result = await runtime.inference.transcribe_auto(
                    audio, who, lambda: _disconnected(request), vad, decoding
                )
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
        pieces = runtime.inference.stream(audio, record, who, lambda: _disconnected(request), vad, priority)
        try:
            return await stream_response(pieces, audio.seconds, headers)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
    try:
        if result is None:
            result = await runtime.inference.transcribe(
                audio,
                record,
                who,
                lambda: _disconnected(request),
                vad,
                no_speech_prob=response_format == "verbose_json",
                priority=priority,
                decoding=decoding,
            )
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    response = render(
        result,
        response_format,
        granularities,
        language,
        audio.seconds,
        detected=route is not None,
        logprobs=decoding.token_logprobs,
    )
    response.headers.update(headers)
    if result.worker:
        response.headers["x-chorus-worker"] = result.worker
    return response


def render(
    result: Result,
    response_format: str,
    granularities: set[str],
    language: str | None,
    duration: float,
    detected: bool = False,
    logprobs: bool = False,
) -> Response:
    """The response in `response_format`. `language`: the request's (reported when the adapter names none), or
    with `detected`, the language model=auto chose (reported as is). `logprobs` (`include[]=logprobs`): json and
    verbose_json carry the tokens' log-probabilities."""
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
            formats.verbose_json(transcript, result.vocab, lang, duration, granularities, result.speech, logprobs)
        )
    body: dict[str, Any] = {"text": transcript.text, "usage": formats.usage(duration)}
    if "word" in granularities:
        body["words"] = formats.words_json(transcript)
    if logprobs:
        body["logprobs"] = formats.token_logprobs(transcript)
    return JSONResponse(body)
