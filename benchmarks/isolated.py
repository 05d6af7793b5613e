"""Systems timed side by side, each in a process of its own, round-robin, with a pause between calls.

Runtimes timed back to back do not leave each other alone: their thread pools keep spinning for a while after
a call returns. On a 2-core machine, with Chorus, ONNX Runtime and OpenVINO round-robin in one process (`base`,
10 s clip), Chorus took 1.93 s per forward with no pause between calls, 1.43 s with 0.2 s of quiet before each
call and 1.31 s with 1 s (ONNX Runtime 1.45, 1.19, 1.10 s). A deployment runs one runtime per process, so
comparisons between runtimes do too: each system is built by a factory in its own (spawned) process and called
there on a dedicated thread, one system at a time, after `settle` seconds of quiet.

A factory is a module-level function (it is pickled by name) that returns `(call, info)`: the call to time and
a JSON-able dict for the caller (e.g. a GEMM's FLOPs).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

Factory = Callable[..., tuple[Callable[[], object], dict[str, Any]]]


@dataclass(frozen=True)
class System:
    """How to build a system in its worker: `factory(*args)`."""

    factory: Factory
    args: tuple[Any, ...] = field(default_factory=tuple)


def _serve(conn: Connection, system: System) -> None:
    """The worker: build, report `info`, then time one call per "run" until "stop". The system is built on the
    thread that calls it: libgomp keeps a team of OpenMP threads per thread that ran parallel torch ops, and with
    two teams on 2 CPUs its threads stop spinning between parallel regions (a torch forward built on one thread
    and run on another was 1.09-1.20x slower; chorus_server/engine/threads.py)."""
    with ThreadPoolExecutor(1, thread_name_prefix="bench-inference") as runner:
        try:
            call, info = runner.submit(system.factory, *system.args).result()
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            raise

        def timed() -> float:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start

        conn.send(("ready", info))
        while conn.recv() == "run":
            conn.send(runner.submit(timed).result())


class Workers:
    """One process per system; a context manager that stops them all."""

    def __init__(self, systems: dict[str, System]):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing imported it may share
        self.conns: dict[str, Connection] = {}
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.info: dict[str, dict[str, Any]] = {}
        for name, system in systems.items():  # one at a time: builds do not compete for the cores
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(child, system), name=f"bench-{name}", daemon=True)
            proc.start()
            child.close()
            self.conns[name] = parent
            self.procs.append(proc)
            status, payload = parent.recv()
            if status != "ready":
                self.close()
                raise RuntimeError(f"system {name!r} failed to start: {payload}")
            self.info[name] = payload

    def call(self, name: str) -> float:
        self.conns[name].send("run")
        return self.conns[name].recv()

    def close(self) -> None:
        for conn in self.conns.values():
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send("stop")
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def interleaved_isolated(
    systems: dict[str, System], reps: int, settle: float = 0.5
) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]]]:
    """Wall seconds of each system's calls (`reps` rounds round-robin after one warm-up call each, `settle`
    seconds of quiet before every call) and each factory's `info`."""
    times: dict[str, list[float]] = {name: [] for name in systems}
    with Workers(systems) as workers:
        for name in systems:
            time.sleep(settle)
            workers.call(name)
        for _ in range(reps):
            for name in systems:
                time.sleep(settle)
                times[name].append(workers.call(name))
        return times, workers.info
