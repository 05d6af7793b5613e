"""The FastAPI application. `create_app()` is cheap; the backbone, store, cache and worker start in the lifespan.

uvicorn --factory chorus_server.app:create_app        # or: chorus serve
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chorus_server import __version__
from chorus_server.admission import Admission
from chorus_server.body_limit import BodyLimit, BodyPace, BodyReaders
from chorus_server.connections import shutdown_window
from chorus_server.errors import install_error_handlers
from chorus_server.host_guard import HostGuard
from chorus_server.http_shutdown import AnswerBeforeShutdown
from chorus_server.metrics import Metrics, RequestMetrics
from chorus_server.one_authorization import OneAuthorization
from chorus_server.path_guard import PathGuard
from chorus_server.request_id import RequestId
from chorus_server.route_hints import UnknownRoutes
from chorus_server.routes import adapters, audit, classifications, health, keys, realtime, tenants, transcriptions
from chorus_server.routes.console import install_console
from chorus_server.runtime import Runtime
from chorus_server.settings import Settings, get_settings

logger = logging.getLogger(__name__)

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
CLASSIFICATIONS_PATH = "/v1/audio/classifications"
AUDIO_PATHS = (TRANSCRIPTIONS_PATH, CLASSIFICATIONS_PATH)  # upload-size limit, admission and request metrics
SMALL_BODY = 64 * 1024  # every other endpoint takes at most a few form fields


def create_app(settings: Settings | None = None, start: Callable[[Settings], Runtime] = Runtime.start) -> FastAPI:
    """The app; `start` builds the runtime it serves on, unless `app.state.chorus` is set before it starts."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime: Runtime | None = getattr(app.state, "chorus", None)  # a cluster ingress builds its own first
        if runtime is None:
            runtime = await asyncio.to_thread(start, settings)
            app.state.chorus = runtime
        logger.info("Chorus ready (backbone %s on %s)", runtime.backbone.fingerprint, runtime.backbone.device)
        try:
            yield
        finally:
            # The server has stopped accepting and finished its requests; drain the worker, then release it.
            await asyncio.to_thread(runtime.close)
            logger.info("Chorus stopped")

    app = FastAPI(
        title="Chorus",
        version=__version__,
        summary="Multi-tenant speech recognition: one wav2vec 2.0 backbone, many adapters, batched together.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(transcriptions.router)
    app.include_router(classifications.router)
    app.include_router(adapters.router)
    app.include_router(keys.router)
    app.include_router(tenants.router)
    app.include_router(audit.router)
    app.include_router(health.router)
    app.include_router(realtime.router)
    install_console(app)

    def limit_for(method: str, path: str) -> int:
        if path in AUDIO_PATHS:
            return settings.limits.max_audio_bytes + SMALL_BODY
        if method == "PUT" and path.startswith("/v1/adapters/"):
            limits = settings.limits  # an adapter may come with its language model and lexicon
            return limits.max_adapter_bytes + limits.max_lm_bytes + limits.max_lexicon_bytes + SMALL_BODY
        return SMALL_BODY

    def runtime() -> Runtime | None:
        return getattr(app.state, "chorus", None)

    def metrics() -> Metrics | None:
        running = runtime()
        return running.metrics if running is not None else None

    app.add_middleware(Admission, runtime=runtime, audio_paths=AUDIO_PATHS)
    app.add_middleware(RequestMetrics, metrics=metrics, paths=AUDIO_PATHS)

    def refused_upload(tenant: str, code: str) -> None:
        running = metrics()
        if running is not None:
            running.observe_refusal(tenant, code)

    limits = settings.limits
    pace = BodyPace(
        limits.body_timeout_seconds,
        limits.body_deadline_seconds,
        limits.body_min_bytes_per_second,
        limits.body_rate_grace_seconds,
    )
    readers = BodyReaders(limits.body_readers_per_tenant)
    app.add_middleware(BodyLimit, limit_for=limit_for, pace=pace, readers=readers, refused=refused_upload)
    # A wrong path gets a 404 naming the right one before the body limit can answer 413.
    app.add_middleware(UnknownRoutes, routes=lambda: app.router.routes, paths=lambda: list(app.openapi()["paths"]))
    # Before routing and body limits: a keyless server answers only to loopback names and its own origin.
    app.add_middleware(HostGuard, keyless=lambda: (running := runtime()) is not None and running.auth.open)
    app.add_middleware(OneAuthorization)  # before anything reads the header: no layer may pick a different one
    app.add_middleware(PathGuard)
    # Inside uvicorn's graceful-shutdown window (90% of it, as for WebSockets): an unfinished request gets a 503.
    app.add_middleware(AnswerBeforeShutdown, grace_seconds=0.9 * shutdown_window(settings.server))
    app.add_middleware(RequestId)  # outermost: every answer, errors from the body limit included, carries it
    return app
