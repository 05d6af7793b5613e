"""Building and running the Ray Serve application: `chorus serve --ray --workers N [--ray-address ADDR]`."""

from __future__ import annotations

import logging
import time
from typing import Any

from chorus_server.settings import Settings

logger = logging.getLogger(__name__)

ROUTER = "chorus_server.cluster.router:AdapterAffinityRouter"


def build(settings: Settings, workers: int, router: str | None = ROUTER) -> Any:
    """The Serve application: the ingress (the usual app, transcribing on workers) bound to N worker replicas.
    `router=None` uses Ray's default router (for comparison)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from chorus_server.app import create_app
    from chorus_server.cluster.remote import RemoteWorkers
    from chorus_server.cluster.worker import ChorusWorker
    from chorus_server.runtime import Runtime

    stats = {"request_routing_stats_period_s": 1.0, "request_routing_stats_timeout_s": 5.0}
    chosen = {"request_router_class": router} if router is not None else {}
    routing = RequestRouterConfig.model_validate({**stats, **chosen})
    worker: Any = serve.deployment(
        ChorusWorker,
        name="chorus-worker",
        num_replicas=workers,
        max_ongoing_requests=64,
        request_router_config=routing,
        ray_actor_options={"num_cpus": 0},
    )
    config = settings.model_dump(mode="json")

    class ChorusIngress:
        def __init__(self, workers_handle: Any):
            self.workers = workers_handle

        def __serve_build_asgi_app__(self) -> Any:
            # The usual app on a runtime that does everything but transcribe, which runs on the workers.
            app = create_app(settings)
            app.state.chorus = Runtime.start(settings, remote=RemoteWorkers(self.workers))
            return app

    ingress: Any = serve.deployment(
        name="chorus-ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
    )(serve.ingress()(ChorusIngress))
    return ingress.bind(worker.bind(config))


def run(settings: Settings, host: str, port: int, workers: int, address: str | None) -> None:
    """Start (or join) a Ray cluster, deploy Chorus and serve until interrupted."""
    import ray
    from ray import serve

    ray.init(address=address, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(settings, workers), name="chorus", route_prefix="/")
    logger.info("Chorus cluster serving on http://%s:%d with %d workers", host, port, workers)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run` / KubeRay's `serveConfigV2` (`import_path: chorus_server.cluster.app:app_builder`): the
    application from CHORUS_* settings, with `workers` (default 2) and `router` ("default" for Ray's own)."""
    from chorus_server.settings import get_settings

    router = args.get("router", ROUTER)
    return build(get_settings(), int(args.get("workers", 2)), None if router == "default" else router)
