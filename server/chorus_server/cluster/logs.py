"""What `chorus serve --ray` prints: Chorus's own lines, from the driver and from every replica, and nothing of Ray's
(its start-up notes, controller, proxy, raylet and per-request lines), which go to a file unless `--ray-logs
console` asks for them.

Replicas mark Chorus's records (`replica_logging`, run in each replica process by Ray's worker setup hook); the
driver prints the marked lines Ray streams to it and appends every other line to the Ray log file.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

MARK = "[chorus] "  # begins every Chorus line a replica writes; the driver prints only those
PACKAGES = ("chorus_server", "chorus_store")
FORMAT = "%(levelname)s %(name)s: %(message)s"
SETUP_HOOK = "chorus_server.cluster.logs.replica_logging"


def replica_logging() -> None:
    """In a replica process: Chorus's records (INFO and up) to stderr, marked, whatever Ray did to the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(MARK + FORMAT))
    for name in PACKAGES:
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.setLevel(logging.INFO)
        log.propagate = False


def console_logging() -> None:
    """In the driver: Chorus's records (INFO and up) to stderr, unmarked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    for name in PACKAGES:
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.setLevel(logging.INFO)
        log.propagate = False


def chorus_lines(lines: list[str]) -> list[str]:
    """The Chorus lines among lines streamed from replicas, unmarked."""
    return [line[line.index(MARK) + len(MARK) :] for line in lines if MARK in line]


class RayLogRouter:
    """The driver's handler of the lines Ray streams from replicas: Chorus's to the console, the rest to a file."""

    def __init__(self, ray_file: TextIO, console: TextIO):
        self.ray_file, self.console = ray_file, console

    def __call__(self, data: dict[str, Any]) -> None:
        lines = [str(line) for line in data.get("lines", [])]
        for line in chorus_lines(lines):
            print(line, file=self.console, flush=True)
        source = data.get("actor_name") or data.get("task_name") or data.get("pid", "")
        for line in lines:
            if MARK not in line:
                print(f"({source}) {line}", file=self.ray_file)
        self.ray_file.flush()


def send_ray_logs_to_file(path: Path) -> TextIO:
    """After importing Ray and Ray Serve (each sets up its loggers), before `ray.init`: Ray's driver-side records (and
    any other library's; Chorus's have their own handler) go to `path` instead of the console. Returns the open file.
    Pair with `ray.init(configure_logging=False)`, which empties the "ray" logger's handlers: its records then reach
    the root logger's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("a")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in ("ray", "ray.serve"):
        log = logging.getLogger(name)
        log.handlers = []
        log.propagate = True
    return out


def route_streamed_logs(ray_file: TextIO, console: TextIO = sys.stderr) -> bool:
    """After `ray.init(log_to_driver=True)`: replace Ray's printer of replica output with `RayLogRouter`. False where
    this Ray has no such dispatcher (then Ray prints everything, as with `--ray-logs console`)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    if not hasattr(dispatcher, "remove_handler") or not hasattr(dispatcher, "add_handler"):
        return False
    router = RayLogRouter(ray_file, console)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("chorus_print_logs", router)
    # The raylet's error messages ("(raylet) Task ... failed") skip the dispatcher: Ray's listener thread calls this
    # module-level printer directly.
    import ray._private.worker as ray_worker

    def to_router(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        router(data)

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = to_router
    return True
