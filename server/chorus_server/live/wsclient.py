"""A small synchronous Realtime client (JSON events over `websockets`) for the tests and the latency benchmark."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from websockets.sync.client import ClientConnection, connect


def pcm16(samples: np.ndarray) -> str:
    """(L,) float32 in [-1, 1] -> base64 little-endian PCM16."""
    return base64.b64encode((np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()).decode()


def open_session(url: str, key: str | None = None, subprotocol_key: bool = False) -> ClientConnection:
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {key}"} if key and not subprotocol_key else None
    protocols = ["realtime", f"openai-insecure-api-key.{key}"] if key and subprotocol_key else None
    return connect(ws_url, additional_headers=headers, subprotocols=protocols, open_timeout=30)  # type: ignore[arg-type]


def send(ws: ClientConnection, event: dict[str, Any]) -> None:
    ws.send(json.dumps(event))


def receive(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def until(ws: ClientConnection, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Events up to and including the first of type `kind`."""
    events = []
    while True:
        event = receive(ws, timeout)
        events.append(event)
        if event["type"] == kind:
            return events


def configure(ws: ClientConnection, model: str, rate: int = 16000, vad: dict[str, Any] | None = None) -> None:
    send(
        ws,
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": rate},
                        "transcription": {"model": model},
                        "turn_detection": vad,
                    }
                },
            },
        },
    )
