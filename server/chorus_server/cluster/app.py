"""Building and running the Ray Serve application: `chorus serve --ray --workers N [--ray-address ADDR]`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from chorus_server.settings import Settings

logger = logging.getLogger(__name__)

ROUTER = "chorus_server.cluster.router:AdapterAffinityRouter"


def cluster_gpus() -> float:
    """GPUs in the Ray cluster this process is connected to (0 when it is not connected)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def gpus_per_worker(setting: float | None, in_cluster: float) -> float:
    """`CHORUS_CLUSTER__NUM_GPUS` when set; else one GPU per worker where the cluster has GPUs (one backbone per
    device, docs/scale-out.md), none on a CPU cluster (asking for a GPU there would leave workers pending)."""
    if setting is not None:
        return setting
    return 1.0 if in_cluster > 0 else 0.0


# Ray Serve runs a replica's code, and the router of each handle it holds, on event loops of their own threads by
# default: every request then crosses threads twice more. Chorus's replicas never block their loop (decoding and
# inference run on threads of their own), so both run on the replica's main loop (Ray's "throughput optimized" mode
# sets the same two).
ONE_LOOP = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
# The ingress's handle keeps its router on a loop of its own: at start the ingress asks a worker for its backbone
# with a blocking call from a thread (cluster/remote.py), which a router on the replica's main loop refuses.
INGRESS_LOOP = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
# Serve writes a line per request in the proxy, the ingress and the worker; Chorus's metrics count requests already.
QUIET = {"enable_access_log": False}


def cluster_nodes() -> int:
    """Alive nodes of the Ray cluster this process is connected to (1 when it is not connected)."""
    import ray

    return max(1, sum(1 for node in ray.nodes() if node.get("Alive"))) if ray.is_initialized() else 1


def worker_threads(setting: int | None, workers: int, nodes: int, cpus: int) -> int:
    """CPU threads per worker: the setting, else this machine's CPUs shared by the workers one node runs (spread
    evenly): two workers on a 2-core machine take one thread each, not two (which spin against each other)."""
    if setting is not None:
        return setting
    per_node = -(-workers // max(1, nodes))
    return max(1, cpus // max(1, per_node))


def worker_env(settings: Settings, threads: int) -> dict[str, str]:
    """Environment of a worker replica. Ray sets OMP_NUM_THREADS to the CPUs an actor asks for, at least 1: a worker
    (which asks for none, so that it never waits for CPUs a GPU node lacks) would run the backbone on one thread
    where `chorus serve` uses every core."""
    return {**ONE_LOOP, "OMP_NUM_THREADS": str(threads)}


def build(settings: Settings, workers: int, router: str | None = ROUTER, gpus_in_cluster: float | None = None) -> Any:
    """The Serve application: the ingress (the usual app, transcribing on workers) bound to N worker replicas.
    `router=None` uses Ray's default router (for comparison); `gpus_in_cluster` (default: ask Ray) decides the
    workers' GPUs when CHORUS_CLUSTER__NUM_GPUS is unset."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from chorus_server.app import create_app
    from chorus_server.cluster.counting import counting
    from chorus_server.cluster.remote import RemoteWorkers
    from chorus_server.cluster.worker import ChorusWorker
    from chorus_server.runtime import Runtime

    stats = {"request_routing_stats_period_s": 1.0, "request_routing_stats_timeout_s": 5.0}
    chosen: dict[str, Any] = {}
    if router is not None:
        chosen = {"request_router_class": router}
        if router == ROUTER:
            chosen["request_router_kwargs"] = {"slack": settings.cluster.affinity_slack}
    routing = RequestRouterConfig.model_validate({**stats, **chosen})
    num_gpus = gpus_per_worker(
        settings.cluster.num_gpus, cluster_gpus() if gpus_in_cluster is None else gpus_in_cluster
    )
    threads = worker_threads(settings.cluster.worker_threads, workers, cluster_nodes(), os.cpu_count() or 1)
    worker: Any = serve.deployment(
        counting(ChorusWorker),
        name="chorus-worker",
        num_replicas=workers,
        max_ongoing_requests=64,
        request_router_config=routing,
        ray_actor_options={
            "num_cpus": 0,
            "num_gpus": num_gpus,
            "runtime_env": {"env_vars": worker_env(settings, threads)},
        },
        logging_config=QUIET,
    )
    config = settings.model_dump(mode="json")
    if settings.device == "auto":
        # Ray makes a worker's assigned GPU its only visible one, so `auto` (the current CUDA device) is that GPU;
        # a worker given none must not take one Ray may have handed to another.
        config["device"] = "auto" if num_gpus > 0 else "cpu"
    # The ingress only validates uploads against its backbone (its inference thread stays idle): never on a GPU.
    ingress_settings = settings.model_copy(update={"device": "cpu"}) if settings.device == "auto" else settings

    class ChorusIngress:
        settings = ingress_settings

        def __init__(self, workers_handle: Any):
            self.workers = workers_handle

        def __serve_build_asgi_app__(self) -> Any:
            # The usual app on a runtime that does everything but transcribe, which runs on the workers.
            app = create_app(self.settings)
            app.state.chorus = Runtime.start(self.settings, remote=RemoteWorkers(self.workers))
            return app

    ingress: Any = serve.deployment(
        name="chorus-ingress",
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": INGRESS_LOOP}},
        logging_config=QUIET,
        max_ongoing_requests=1000,
    )(serve.ingress()(ChorusIngress))
    return ingress.bind(worker.bind(config))


def run(settings: Settings, host: str, port: int, workers: int, address: str | None, ray_logs: str = "file") -> None:
    """Start (or join) a Ray cluster, deploy Chorus and serve until interrupted. `ray_logs="file"`: the console gets
    Chorus's lines only (driver and replicas), Ray's own go to DATA_DIR/ray.log; "console": Ray prints everything."""
    import ray
    from ray import serve  # imported first: importing Ray sets up its loggers, which are then pointed at the file

    from chorus_server.cluster.logs import SETUP_HOOK, console_logging, route_streamed_logs, send_ray_logs_to_file

    console_logging()
    ray_file = send_ray_logs_to_file(settings.data_dir / "ray.log") if ray_logs == "file" else None
    # The job's setup hook runs in every process Ray starts for it, the Serve replicas included: they mark
    # Chorus's lines, which the driver then tells from Ray's.
    env = {"worker_process_setup_hook": SETUP_HOOK} if ray_file is not None else None
    ray.init(address=address, ignore_reinit_error=True, configure_logging=ray_file is None, runtime_env=env)
    if ray_file is not None:
        if route_streamed_logs(ray_file):
            logger.info(
                "Ray's own logs: %s and %s (--ray-logs console prints them here)", ray_file.name, _session_logs()
            )
        else:
            logger.warning("this Ray cannot separate its lines from Chorus's: printing both")
    # SIGTERM stops as Ctrl-C does (Ray's own handler, installed by ray.init, would dump a stack), from here on:
    # set before the "serving on" line, so a supervisor that stops Chorus once it reads that line meets this handler.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        start_serve(host, port)
        serve.run(build(settings, workers), name="chorus", route_prefix="/")
        logger.info("Chorus cluster serving on http://%s:%d with %d workers", host, port, workers)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping the cluster")
    # A second Ctrl-C, or Ray's processes already gone with the first: stop anyway.
    with contextlib.suppress(KeyboardInterrupt, Exception):
        serve.shutdown()
    logger.info("Chorus cluster stopped")


def start_serve(host: str, port: int) -> None:
    """Serve's proxy on `host:port`, without a log line per request (as `chorus serve --ray` runs it)."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _session_logs() -> str:
    """Ray's own log directory for this session (every Ray process writes its files there)."""
    try:
        from ray._private.worker import global_worker

        node: Any = global_worker.node
        return str(Path(node.get_session_dir_path()) / "logs")
    except Exception:  # a Ray without that attribute: say where it usually is
        return "Ray's session_latest/logs"


def app_builder(args: dict[str, Any]) -> Any:
    """For `serve run` / KubeRay's `serveConfigV2` (`import_path: chorus_server.cluster.app:app_builder`): the
    application from CHORUS_* settings, with `workers` (default 2) and `router` ("default" for Ray's own)."""
    from chorus_server.settings import get_settings

    router = args.get("router", ROUTER)
    return build(get_settings(), int(args.get("workers", 2)), None if router == "default" else router)
