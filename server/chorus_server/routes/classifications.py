"""`POST /v1/audio/classifications`: utterance classification (language, speaker, ...) with a classifier adapter.

Shaped like the transcription endpoint (multipart `file` + `model`), with the same authentication, tenancy,
limits and metrics; the answer is the adapter's labels with their probabilities, highest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse

from chorus_server.auth import Principal, current_principal
from chorus_server.routes.transcriptions import CLIENT_CLOSED, _disconnected, receive_audio
from chorus_server.runtime import Runtime
from chorus_server.service import ClientGone

router = APIRouter(tags=["classification"])


@router.post("/v1/audio/classifications", summary="Classify audio with a classifier adapter")
async def create_classification(
    request: Request,
    who: Annotated[Principal, Depends(current_principal)],
    file: Annotated[UploadFile, File(description="audio: wav, flac, ogg, opus, mp3 (m4a/mp4/webm with PyAV)")],
    model: Annotated[str, Form(description="classifier adapter ID, or ID@N for a fixed version")],
    top_k: Annotated[int | None, Form(ge=1, description="return only the K most probable labels; unset: all")] = None,
) -> Response:
    runtime: Runtime = request.app.state.chorus
    who.require("transcribe")  # inference permission: the same roles transcribe and classify
    record = runtime.transcriber.resolve(model, who, task="classify")
    request.state.adapter_id = record.id if record.visibility == "public" else "private"
    audio = await receive_audio(runtime, who, request, file)
    try:
        result = await runtime.inference.classify(audio, record, who, lambda: _disconnected(request))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    scores = result.scores[:top_k] if top_k else result.scores
    body: dict[str, Any] = {
        "model": record.ref,
        "labels": [{"label": label, "score": score} for label, score in scores],
    }
    return JSONResponse(body, headers={"x-chorus-adapter": record.ref})
