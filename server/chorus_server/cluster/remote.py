"""The ingress's side of the cluster: transcription runs on a worker replica through a Ray Serve handle; a request
whose worker died before answering is retried once on another."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from fastapi import Response

from chorus_server.audio import Audio
from chorus_server.auth import Principal
from chorus_server.vad import VadOptions
from chorus_store.base import AdapterRecord

logger = logging.getLogger(__name__)


class RemoteWorkers:
    def __init__(self, handle: Any, deployment: str = "chorus-worker"):
        self.handle, self.deployment = handle, deployment

    def live_workers(self) -> int:
        """Worker replicas Ray reports running (for /readyz)."""
        from ray import serve

        for application in serve.status().applications.values():
            status = application.deployments.get(self.deployment)
            if status is not None:
                states = {str(state).rsplit(".", 1)[-1]: count for state, count in status.replica_states.items()}
                return int(states.get("RUNNING", 0))
        return 0

    async def transcribe(
        self,
        audio: Audio,
        record: AdapterRecord,
        who: Principal,
        response_format: str,
        granularities: set[str],
        language: str | None,
        vad: VadOptions | None,
        priority: int = 1,
    ) -> Response:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        kwargs = dict(
            adapter=record.ref,
            samples=audio.samples,
            tenant=who.tenant,
            role=str(who.role),
            response_format=response_format,
            granularities=sorted(granularities),
            language=language,
            vad=asdict(vad) if vad else None,
            priority=priority,
        )
        for attempt in (1, 2):
            try:
                status, media_type, body, headers = await self.handle.transcribe.remote(**kwargs)
                return Response(body, status_code=status, media_type=media_type, headers=headers)
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == 2:
                    raise
                logger.warning("a worker died while transcribing with %s; retrying once on another", record.ref)
        raise AssertionError("unreachable")
