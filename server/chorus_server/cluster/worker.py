"""The worker replica: a whole Chorus runtime (backbone, adapter cache, batching inference thread) that
transcribes decoded audio for the ingress and reports what it holds, for the router."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

from chorus_server.audio import Audio
from chorus_server.auth import principal
from chorus_server.batching import Priority
from chorus_server.errors import ApiError, envelope, from_domain
from chorus_server.routes.transcriptions import render
from chorus_server.runtime import Runtime
from chorus_server.settings import Settings
from chorus_server.tenants.keys import Role
from chorus_server.vad import VadOptions
from chorus_store.errors import StoreError

# (status, media type, body, headers): what a worker answers; plain data, cheap to send between processes.
Answer = tuple[int, str, bytes, dict[str, str]]


class ChorusWorker:
    """Deployed by `cluster.app` as a Ray Serve deployment (the decorator is applied there)."""

    def __init__(self, settings: dict[str, Any]):
        from ray import serve

        self.runtime = Runtime.start(Settings.model_validate(settings))
        self.name = serve.get_replica_context().replica_id.unique_id

    async def transcribe(
        self,
        adapter: str,
        samples: np.ndarray,
        tenant: str,
        role: str,
        response_format: str,
        granularities: list[str],
        language: str | None,
        vad: dict[str, Any] | None = None,
        priority: int = 1,
    ) -> Answer:
        """Transcribe `samples` (16 kHz mono float32) with the stored version `adapter` (a full `owner/name@N`)."""
        runtime = self.runtime
        headers = {"x-chorus-worker": self.name}
        try:
            record = await asyncio.to_thread(runtime.store.get, adapter)
            audio = Audio(samples, runtime.engine.preprocess.sampling_rate)
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            who = principal(tenant, Role(role))
            options = VadOptions(**vad) if vad else None
            verbose = response_format == "verbose_json"
            result = await runtime.transcriber.transcribe(
                audio, record, who, lambda: never, options, verbose, Priority(priority)
            )
            response = render(result, response_format, set(granularities), language, audio.seconds)
        except (ApiError, StoreError) as exc:
            error = exc if isinstance(exc, ApiError) else from_domain(exc)
            assert error is not None
            body = envelope(error.status_code, error.message, error.code, error.param)
            return (
                error.status_code,
                "application/json",
                json.dumps(body).encode(),
                {**headers, **(error.headers or {})},
            )
        headers["x-chorus-adapter"] = record.ref
        return response.status_code, response.media_type or "application/json", bytes(response.body), headers

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router reads (every second): adapters resident here and the work waiting."""
        keys = self.runtime.cache.resident_keys()
        return {
            "resident": sorted({key.partition("@")[0] for key in keys} | set(keys)),
            "load": self.runtime.worker.queued_items + self.runtime.metrics.requests_in_flight(),
        }

    def ready(self) -> bool:
        return self.runtime.worker.is_ready()

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising makes Ray replace the replica (after a sticky device error
        or when the inference thread is gone)."""
        if not self.ready():
            raise RuntimeError("Chorus worker not ready: the inference thread stopped or the device failed")

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
