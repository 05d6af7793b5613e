"""`stream=true` on `POST /v1/audio/transcriptions`: the transcript as OpenAI's server-sent events.

`data: {"type": "transcript.text.delta", "delta": …}` as each window of the audio finishes (in order; a window's
text in deltas of about a second of audio each, so a 14 s clip that is one window is not one delta), then one
`data: {"type": "transcript.text.done", "text": …, "usage": {"type": "duration", "seconds": …}}`; no `[DONE]`
line. The deltas add up to the done text, which is exactly the non-streamed greedy transcript. Errors found
before the first byte are ordinary JSON error responses; an error after it ends the stream with
`data: {"type": "error", "error": {"message", "type", "param", "code"}}` (the OpenAI SDKs raise it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi.responses import StreamingResponse

from chorus_server import formats
from chorus_server.errors import ApiError, envelope, from_domain
from chorus_server.live.ctc_stream import IncrementalCTC
from chorus_server.service import ClientGone, Piece

logger = logging.getLogger(__name__)

Pieces = AsyncGenerator[Piece | None, None]


STREAMABLE_FORMATS = ("json", "text")
# Frames of a finished window decoded into one delta: 50 of wav2vec 2.0's 20 ms frames, one second of audio.
FRAMES_PER_DELTA = 50


def check_streamable(response_format: str) -> None:
    """400 for a `stream=true` request this server cannot stream (checked before the body is decoded)."""
    if response_format not in STREAMABLE_FORMATS:
        raise ApiError(
            400,
            f"stream=true sends text events; use response_format json or text, not {response_format}",
            "unsupported_value",
            "response_format",
        )


def sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def stream_response(pieces: Pieces, duration: float, headers: dict[str, str]) -> StreamingResponse:
    """Start `pieces` (Transcriber.stream): refusals before its first yield raise here, as plain JSON errors."""
    await anext(pieces)
    return StreamingResponse(
        transcript_events(pieces, duration),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
    )


async def transcript_events(pieces: Pieces, duration: float) -> AsyncIterator[bytes]:
    """Each speech region is decoded incrementally on its own; regions' texts are joined with one space, so the
    done text is exactly the non-streamed greedy transcript (`speech.join`)."""
    decoder: IncrementalCTC | None = None
    done: list[str] = []  # texts of the finished regions that have any
    async with aclosing(pieces):
        try:
            async for piece in pieces:
                if piece is None:
                    continue
                if decoder is None or piece.starts_region:
                    if decoder is not None and decoder.text:
                        done.append(decoder.text)
                    decoder = IncrementalCTC(piece.vocab)
                for start in range(0, piece.logits.shape[0], FRAMES_PER_DELTA):
                    fresh = not decoder.text
                    delta = decoder.push(piece.logits[start : start + FRAMES_PER_DELTA])
                    if delta:
                        separator = " " if fresh and done else ""
                        yield sse({"type": "transcript.text.delta", "delta": separator + delta})
        except ClientGone:  # nobody is left to read an error event
            return
        except Exception as exc:
            yield sse({"type": "error", **error_body(exc)})
            return
    if decoder is not None and decoder.text:
        done.append(decoder.text)
    yield sse({"type": "transcript.text.done", "text": " ".join(done), "usage": formats.usage(duration)})


def error_body(exc: Exception) -> dict[str, Any]:
    """`{"error": {...}}` for an exception met after a stream started (unknown ones are logged, never shown)."""
    error = exc if isinstance(exc, ApiError) else from_domain(exc)
    if error is None:
        logger.exception("error in a live transcription", exc_info=exc)
        error = ApiError(500, "internal error; the server log has the details", "internal_error")
    return envelope(error.status_code, error.message, error.code, error.param)
